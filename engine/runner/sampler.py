"""Turns the sampling rows' logits and their requests' params into token ids (and logprobs)."""

from __future__ import annotations

import types

import torch

from engine.grammar import token_bitmask
from engine.scheduling.request import Request
from shared.sampling import TokenLogprob


class Sampler:
    def __init__(self, ops: types.ModuleType, device: torch.device) -> None:
        self.ops = ops
        self.device = device

    def sample(self, logits: torch.Tensor, requests: list[Request], positions: list[int] | None = None
               ) -> tuple[list[int], list[TokenLogprob | None] | None]:
        """logits [num_rows, vocab] float32, one row per request -> (token ids, each row's logprobs
        or None where not asked for; None for all when no row asked). `positions`: the output
        position each row draws for (its seeded noise); default, each request's next one. A request
        may own several rows (draft positions, with positions given)."""
        if all(r.plain_greedy for r in requests):  # the common case, in one pass over the rows
            return logits.argmax(dim=-1).tolist(), None
        raw = logits
        constrained = [row for row, r in enumerate(requests) if r.matcher is not None]
        if constrained:
            logits = self._apply_grammars(logits, requests, constrained)
        if any(r.params.repetition_penalty != 1.0 or r.params.presence_penalty or r.params.frequency_penalty
               for r in requests):
            logits = self._apply_penalties(logits, requests)
        logits = self._mask_early_stops(logits, requests)
        params = [r.params for r in requests]
        if all(p.is_greedy for p in params):
            token_ids = logits.argmax(dim=-1)
        else:
            token_ids = self.ops.sample(
                logits,
                self._column([p.temperature for p in params], torch.float32),
                self._column([p.top_k for p in params], torch.int64),
                self._column([p.top_p for p in params], torch.float32),
                self._column([p.min_p for p in params], torch.float32),
                self._column([_as_signed64(r.seed) for r in requests], torch.int64),
                self._column(positions if positions is not None else [r.num_output_tokens for r in requests],
                             torch.int64),
            )
        token_list = token_ids.tolist()
        return token_list, self._logprobs(raw, token_list, requests)

    def warm_up(self, logits: torch.Tensor) -> None:
        """Run the penalty and sampling ops once on [1, vocab] logits (see ModelRunner.warm_up)."""
        f32, i64 = torch.float32, torch.int64
        penalized = self.ops.apply_penalties(
            logits, torch.zeros_like(logits, dtype=torch.bool), torch.zeros_like(logits, dtype=torch.int32),
            self._column([1.1], f32), self._column([0.1], f32), self._column([0.1], f32))
        self.ops.sample(penalized, self._column([1.0], f32), self._column([40], i64), self._column([0.9], f32),
                        self._column([0.05], f32), self._column([0], i64), self._column([0], i64)).tolist()

    def _column(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=self.device)

    def _apply_grammars(self, logits: torch.Tensor, requests: list[Request], rows: list[int]) -> torch.Tensor:
        """-inf for every token the grammar of a constrained row does not allow next (first, so
        that nothing after it can bring one back)."""
        bitmask = token_bitmask.allowed_tokens([requests[row].matcher for row in rows], logits.shape[1],
                                               parallel=self.device.type == "cuda")
        bitmask = bitmask.to(self.device)  # [len(rows), ceil(vocab / 32)]
        if len(rows) == len(requests):
            return self.ops.apply_token_bitmask(logits, bitmask)
        index = torch.tensor(rows, device=self.device)
        return logits.index_copy(0, index, self.ops.apply_token_bitmask(logits[index], bitmask))

    def _apply_penalties(self, logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
        num_rows, vocab = logits.shape
        prompt_mask = torch.zeros(num_rows, vocab, dtype=torch.bool, device=self.device)
        output_counts = torch.zeros(num_rows, vocab, dtype=torch.int32, device=self.device)
        for row, request in enumerate(requests):
            prompt = torch.tensor(request.token_ids[:request.prompt_len], dtype=torch.int64, device=self.device)
            prompt_mask[row, prompt] = True
            outputs = torch.tensor(request.output_ids, dtype=torch.int64, device=self.device)
            output_counts[row].index_add_(0, outputs, torch.ones_like(outputs, dtype=torch.int32))
        params = [r.params for r in requests]
        return self.ops.apply_penalties(
            logits, prompt_mask, output_counts,
            self._column([p.repetition_penalty for p in params], logits.dtype),
            self._column([p.presence_penalty for p in params], logits.dtype),
            self._column([p.frequency_penalty for p in params], logits.dtype))

    def _mask_early_stops(self, logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
        """Forbid EOS and stop tokens for requests that have not reached min_tokens yet."""
        rows, cols = [], []
        for row, request in enumerate(requests):
            if request.num_output_tokens < request.params.min_tokens:
                stops = set(request.params.stop_token_ids)
                if not request.params.ignore_eos:
                    stops |= request.eos_token_ids
                stops = [t for t in stops if t < logits.shape[1]]
                rows += [row] * len(stops)
                cols += stops
        if not rows:
            return logits
        logits = logits.clone()
        logits[torch.tensor(rows), torch.tensor(cols)] = float("-inf")
        return logits

    def _logprobs(self, raw: torch.Tensor, token_ids: list[int],
                  requests: list[Request]) -> list[TokenLogprob | None] | None:
        wanted = [row for row, r in enumerate(requests) if r.params.logprobs is not None]
        if not wanted:
            return None
        result: list[TokenLogprob | None] = [None] * len(requests)
        num_top = max(requests[row].params.logprobs for row in wanted)
        entries = self.token_logprobs(raw[torch.tensor(wanted, device=self.device)], [token_ids[r] for r in wanted],
                                      num_top)
        for row, entry in zip(wanted, entries):
            n = requests[row].params.logprobs
            result[row] = TokenLogprob(entry.token_id, entry.logprob, entry.top_ids[:n], entry.top_logprobs[:n])
        return result

    def token_logprobs(self, logits: torch.Tensor, token_ids: list[int], num_top: int) -> list[TokenLogprob]:
        """For each row of raw `logits` [n, vocab] float32: the logprob of `token_ids[row]` and the
        `num_top` best (the distribution before temperature and penalties)."""
        logprobs = logits.log_softmax(dim=-1)  # [n, vocab]
        top_values, top_ids = logprobs.topk(max(num_top, 1), dim=-1)  # [n, num_top]
        chosen = logprobs.gather(1, torch.tensor(token_ids, device=self.device)[:, None])[:, 0].tolist()  # [n]
        top_ids, top_values = top_ids[:, :num_top].tolist(), top_values[:, :num_top].tolist()
        return [TokenLogprob(t, lp, ids, values) for t, lp, ids, values in zip(token_ids, chosen, top_ids, top_values)]


def _as_signed64(seed: int) -> int:
    seed &= (1 << 64) - 1
    return seed - (1 << 64) if seed >= 1 << 63 else seed
