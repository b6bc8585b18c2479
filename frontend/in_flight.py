"""A tokenizer worker's in-flight request: what it needs to turn the request's tokens into text,
and to replay it to a new engine if the one running it dies (the prompt, the sampling params with
the seed fixed, every token generated so far), so its client sees a pause and the same text."""

from __future__ import annotations

import dataclasses
import secrets

import msgspec

from frontend.text_stream import TextStream
from shared.messages import EngineRequest, SamplingParams


@dataclasses.dataclass
class InFlight:
    rid: int
    prompt_ids: list[int]
    params: SamplingParams  # seed always set (see with_fixed_seed)
    text: TextStream
    echo: str  # prompt text still to prepend (echo=True), else ""
    wants_logprobs: bool = False
    output_ids: list[int] = dataclasses.field(default_factory=list)  # generated and streamed so far
    engine_instance: int = 0  # the engine running it (EngineReady.instance); 0: none yet

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_ids)

    def engine_request(self, worker_id: int, engine_instance: int) -> EngineRequest:
        """The request for `engine_instance`: the first submission, or a replay continuing from the
        tokens already streamed."""
        self.engine_instance = engine_instance
        return EngineRequest(self.rid, self.prompt_ids, self.params, worker_id, self.output_ids, engine_instance)


def with_fixed_seed(params: SamplingParams) -> SamplingParams:
    """`params` with a seed: its own, or one drawn here, so that a replay samples as the first run."""
    if params.seed is not None:
        return params
    return msgspec.structs.replace(params, seed=secrets.randbits(63))
