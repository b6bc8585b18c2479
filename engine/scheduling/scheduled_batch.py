"""What the scheduler hands the model runner for one step."""

from __future__ import annotations

import dataclasses

from engine.scheduling.request import Request


@dataclasses.dataclass
class ScheduledBatch:
    """One step's work: requests in batch order, how many new tokens each computes, and which of
    them reach their last token (and so sample one, or verify their draft tokens)."""

    requests: list[Request] = dataclasses.field(default_factory=list)
    num_new_tokens: list[int] = dataclasses.field(default_factory=list)
    sampling_rows: list[int] = dataclasses.field(default_factory=list)  # indices into requests
    num_preempted: int = 0
    scores_prompts: bool = False  # some running request wants its prompt's logprobs (and has no token yet)
    num_draft_tokens: int = 0  # of the sampling requests' draft_ids, all computed this step

    @property
    def is_empty(self) -> bool:
        return not self.requests

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def add(self, request: Request, num_new: int) -> None:
        if request.num_computed_tokens + num_new == len(request.token_ids) + len(request.draft_ids):
            self.sampling_rows.append(len(self.requests))
            self.num_draft_tokens += len(request.draft_ids)
        self.requests.append(request)
        self.num_new_tokens.append(num_new)

    def subset(self, rows: list[int]) -> ScheduledBatch:
        """The batch of only `rows` (indices into requests), in their order."""
        batch = ScheduledBatch(scores_prompts=self.scores_prompts)
        for row in rows:
            batch.add(self.requests[row], self.num_new_tokens[row])
        return batch

    def samples(self, index: int) -> bool:
        """Whether request `index` reaches its last token this step (and so samples one)."""
        return index in self.sampling_rows
