"""A tokenizer worker's in-flight request: what it needs to turn the request's tokens into text,
and to replay it, to a new engine if the one running it dies (the prompt, the sampling params with
the seed fixed, every token generated so far) or from another worker if this one dies (resume),
so its client sees a pause and the same text."""

from __future__ import annotations

import dataclasses

from shared.messages import MAX_ATTEMPTS, EngineRequest
from shared.sampling import FinishReason, SamplingParams
from shared.text.text_stream import TextStream


def split_engine_rid(engine_rid: int) -> tuple[int, int]:
    """(rid, attempt) of the id the engine knows a submission by."""
    return divmod(engine_rid, MAX_ATTEMPTS)


@dataclasses.dataclass
class InFlight:
    rid: int
    prompt_ids: list[int]
    params: SamplingParams  # seed always set (SamplingParams.seeded)
    text: TextStream
    echo: str  # prompt text still to prepend (echo=True), else ""
    wants_logprobs: bool = False
    attempt: int = 0  # GenerateRequest.attempt
    output_ids: list[int] = dataclasses.field(default_factory=list)  # generated and streamed so far
    engine_instance: int = 0  # the engine running it (EngineReady.instance); 0: none yet
    chars_to_skip: int = 0  # text an earlier attempt already sent the client: not sent again
    score_only: bool = False  # GenerateRequest.score_only: the echo and the prompt's logprobs, no token
    prompt_scored: bool = False  # the prompt's logprobs went out (params.prompt_logprobs)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def engine_rid(self) -> int:
        return self.rid * MAX_ATTEMPTS + self.attempt

    def engine_request(self, worker_id: int, engine_instance: int) -> EngineRequest:
        """The request for `engine_instance`: the first submission, or a replay continuing from the
        tokens already streamed."""
        self.engine_instance = engine_instance
        return EngineRequest(self.engine_rid, self.prompt_ids, self.params, worker_id, self.output_ids,
                             engine_instance)

    def resume(self, resume_ids: list[int], resume_chars: int) -> str:
        """Take up a request another worker was serving: its tokens so far go through the text
        stream (stop strings and partial characters continue where they were) and what the client
        has already is not sent again. Returns the text the client does not have yet."""
        if resume_chars:  # the client has the echoed prompt (it goes whole with the first text) and more
            self.chars_to_skip, self.echo = resume_chars - len(self.echo), ""
        self.output_ids = list(resume_ids)
        return self._unsent(self.text.push(resume_ids)) if resume_ids else ""

    def take(self, new_ids: list[int], finish: FinishReason) -> tuple[str, FinishReason, bool]:
        """The text `new_ids` add for the client, the finish, and whether a stop string ended the
        request here (its engine request must then be aborted: the text is complete)."""
        if self.score_only:  # its one token is dropped: the answer is the echoed prompt (and its logprobs)
            text, self.echo = self.echo, ""
            return text, FinishReason.LENGTH, not finish
        pushed, num_taken = self.text.push_until_stop(new_ids)
        text = self.echo + self._unsent(pushed)
        self.echo = ""
        self.output_ids += new_ids[:num_taken]
        if self.text.stopped and not finish:
            return text, FinishReason.STOP, True
        if finish:
            text += self._unsent(self.text.finish())
        return text, finish, False

    def _unsent(self, text: str) -> str:
        cut = min(len(text), self.chars_to_skip)
        self.chars_to_skip -= cut
        return text[cut:]
