"""What one engine step produced, column by column (one entry per request that gained a token or
finished), and its TokenDeltas for one worker: lists built by comprehension, no per-request
objects, since at hundreds of running requests a step's host time is per-request Python."""

from __future__ import annotations

import dataclasses

from engine.scheduling.request import Request
from shared.messages import TokenDeltas
from shared.sampling import TokenLogprob

NO_LOGPROBS: list[TokenLogprob] = []  # shared by every entry without logprobs: never appended to


@dataclasses.dataclass
class StepOutput:
    requests: list[Request]  # finish reason, error and counts are read from each
    new_ids: list[list[int]]  # [] for a request that finished without a new token (abort, error)
    logprobs: list[list[TokenLogprob]]  # NO_LOGPROBS unless the request asked for them
    prompt_logprobs: list[list[TokenLogprob]] | None = None  # None: no row has them this step

    @classmethod
    def empty(cls) -> StepOutput:
        return cls([], [], [])

    @property
    def num_new_tokens(self) -> int:
        return sum(map(len, self.new_ids))

    def add_finished(self, finished: list[Request]) -> None:
        """Append requests that finished without a token this step (those with one are in already)."""
        if not finished:
            return
        present = set(map(id, self.requests))
        for request in finished:
            if id(request) not in present:
                self.requests.append(request)
                self.new_ids.append([])
                self.logprobs.append(NO_LOGPROBS)
                if self.prompt_logprobs is not None:
                    self.prompt_logprobs.append(NO_LOGPROBS)

    def deltas_by_worker(self, worker_of: dict[int, int]) -> dict[int, TokenDeltas]:
        """One TokenDeltas for each worker (`worker_of`: rid -> worker) that has requests here;
        requests of no worker are left out."""
        workers = [worker_of.get(r.rid) for r in self.requests]
        distinct = set(workers)
        if len(distinct) == 1:  # the usual case: one worker, every row
            return {} if None in distinct else {workers[0]: self._token_deltas(None)}
        rows: dict[int, list[int]] = {}
        for row, worker in enumerate(workers):
            if worker is not None:
                rows.setdefault(worker, []).append(row)
        return {worker: self._token_deltas(worker_rows) for worker, worker_rows in rows.items()}

    def _token_deltas(self, rows: list[int] | None) -> TokenDeltas:
        """The TokenDeltas message carrying `rows` of this output (None: all of them)."""
        requests, new_ids, logprobs = self.requests, self.new_ids, self.logprobs
        prompt_logprobs = self.prompt_logprobs or [NO_LOGPROBS] * len(requests)
        if rows is not None:
            requests, new_ids, logprobs, prompt_logprobs = (
                [column[i] for i in rows] for column in (requests, new_ids, logprobs, prompt_logprobs))
        return TokenDeltas(rids=[r.rid for r in requests], new_ids=new_ids,
                           finish=[r.finish_reason.value for r in requests],
                           num_prompt_tokens=[r.prompt_len for r in requests],
                           num_cached_tokens=[r.num_cached_tokens for r in requests],
                           errors=[r.error or "" for r in requests], logprobs=logprobs,
                           error_codes=[r.error_code for r in requests], prompt_logprobs=prompt_logprobs)
