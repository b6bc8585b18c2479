"""Owns the model and its KV cache; turns a scheduled batch into tensors, runs it, samples."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch

from engine.model.llama import Llama
from engine.runner.cuda_graphs import DecodeGraphs, Step
from engine.runner.forward_batch import ForwardBatch
from engine.runner.sampler import Sampler
from engine.scheduling.request import Request
from engine.scheduling.scheduled_batch import ScheduledBatch
from engine.speculative import verification
from shared.sampling import TokenLogprob


class ModelRunner:
    def __init__(self, model: Llama, sampler: Sampler, num_kv_blocks: int, block_size: int) -> None:
        config = model.config
        param = next(model.parameters())
        self.model = model
        self.sampler = sampler
        self.device, self.dtype = param.device, param.dtype
        self.block_size = block_size
        shape = (config.num_layers, 2, num_kv_blocks, block_size, config.num_kv_heads, config.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)  # see kernels/contract.py
        self.kv_caches = [(self.kv_cache[i, 0], self.kv_cache[i, 1]) for i in range(config.num_layers)]
        self.graphs: DecodeGraphs | None = None
        # Tests: called with each batch before it runs; raising there simulates a failing step.
        self.inject_fault: Callable[[ScheduledBatch], None] | None = None

    @staticmethod
    def kv_bytes_per_block(model: Llama, block_size: int) -> int:
        config = model.config
        element_size = next(model.parameters()).element_size()
        return config.num_layers * 2 * block_size * config.num_kv_heads * config.head_dim * element_size

    @torch.inference_mode()
    def warm_up(self) -> None:
        """One throw-away step before serving: a one-token forward pass (its slot is -1: no KV is
        written) and one sampling call, so every kernel a step uses is compiled and loaded (the
        CUDA modules are JIT-compiled on first launch) before the first request arrives."""
        to = self.device
        batch = ForwardBatch(
            input_ids=torch.zeros(1, dtype=torch.int64, device=to),
            positions=torch.zeros(1, dtype=torch.int64, device=to),
            slot_mapping=torch.full((1,), -1, dtype=torch.int64, device=to),
            block_tables=torch.zeros(1, 1, dtype=torch.int32, device=to),
            seq_lens=torch.ones(1, dtype=torch.int32, device=to),
            query_start_loc=torch.tensor([0, 1], dtype=torch.int32, device=to),
            logits_indices=torch.zeros(1, dtype=torch.int64, device=to))
        self.sampler.warm_up(self.model.compute_logits(self._run_model(batch)))

    @torch.inference_mode()
    def capture_graphs(self, max_batch: int, max_seq_len: int, capture: Callable[[Step], Step] | None = None) -> None:
        """Capture decode CUDA graphs for batches up to max_batch with contexts up to max_seq_len
        (`capture`: see DecodeGraphs)."""
        self.graphs = DecodeGraphs(self.model, self.kv_caches, self.model.ops, max_batch, max_seq_len,
                                   self.block_size, capture)

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> tuple[list[list[int]], list[TokenLogprob | None] | None]:
        """Run one step. Returns, per scheduled request, the tokens it gained ([] for a prompt chunk
        that does not reach its end; with a draft, the accepted draft tokens and the model's next)
        and its logprobs (None: no request asked for them)."""
        if self.inject_fault is not None:
            self.inject_fault(batch)
        sampling_rows = batch.sampling_rows
        num_sampled = len(sampling_rows) + batch.num_draft_tokens  # logits rows sampled
        scored = _scored_prompt_spans(batch) if batch.scores_prompts else []
        logits = None if scored else self._decode_from_graph(batch)  # [num_seqs, vocab] or None
        if logits is None:
            logits = self._forward(batch, sampling_rows, scored)
            if scored:  # [num_sampled + scored positions, vocab]: the sampled rows first
                self._score_prompts(batch, scored, logits[num_sampled:])
                logits = logits[:num_sampled]
        elif len(sampling_rows) < len(batch.requests):  # a one-token prompt chunk short of its end
            logits = logits[torch.tensor(sampling_rows, device=logits.device)]
        num_seqs = len(batch.requests)
        if not sampling_rows:
            return [[] for _ in range(num_seqs)], None
        sampling = [batch.requests[i] for i in sampling_rows]
        if batch.num_draft_tokens:
            new_ids, token_logprobs = self._verify(logits, sampling)
        else:
            token_ids, token_logprobs = self.sampler.sample(logits, sampling)
            new_ids = [[token_id] for token_id in token_ids]
        if len(sampling_rows) == num_seqs:
            return new_ids, token_logprobs
        sampled: list[list[int]] = [[] for _ in range(num_seqs)]
        logprobs: list[TokenLogprob | None] | None = None if token_logprobs is None else [None] * num_seqs
        for i, row in enumerate(sampling_rows):
            sampled[row] = new_ids[i]
            if logprobs is not None:
                logprobs[row] = token_logprobs[i]
        return sampled, logprobs

    def _verify(self, logits: torch.Tensor, requests: list[Request]
                ) -> tuple[list[list[int]], list[TokenLogprob | None] | None]:
        """Sample every row of `logits` [sum of (1 + draft length), vocab], each request's rows in
        turn, each for its own output position, then keep of each draft the prefix the model agrees
        with (engine/speculative/verification.py)."""
        rows = [request for request in requests for _ in range(1 + len(request.draft_ids))]
        positions = [request.num_output_tokens + i for request in requests for i in range(1 + len(request.draft_ids))]
        token_ids, row_logprobs = self.sampler.sample(logits, rows, positions)
        new_ids: list[list[int]] = []
        logprobs: list[TokenLogprob | None] | None = None if row_logprobs is None else []
        start = 0
        for request in requests:
            count = 1 + len(request.draft_ids)
            new_ids.append(verification.accepted_tokens(request.draft_ids, token_ids[start:start + count]))
            if logprobs is not None:  # a drafted request never asks for logprobs
                logprobs.append(row_logprobs[start])
            start += count
        return new_ids, logprobs

    def _forward(self, batch: ScheduledBatch, sampling_rows: list[int],
                 scored: list[tuple[int, int, int]]) -> torch.Tensor | None:
        """Eager forward pass -> [num_sampled + scored positions, vocab] float32 logits (None if
        nothing samples or is scored)."""
        hidden = self._run_model(self._prepare(batch, sampling_rows, scored))  # [num_sampled + scored, hidden]
        return self.model.compute_logits(hidden) if hidden.shape[0] else None

    def _score_prompts(self, batch: ScheduledBatch, scored: list[tuple[int, int, int]], logits: torch.Tensor) -> None:
        """Each scored span's logprobs onto its request, in prompt order. `logits` [sum of counts, vocab]."""
        start = 0
        for row, first, count in scored:
            request = batch.requests[row]
            entries = self.sampler.token_logprobs(logits[start:start + count],
                                                  request.token_ids[first + 1:first + 1 + count],
                                                  request.params.prompt_logprobs)
            if len(request.prompt_logprobs) == first:  # a retried step may have scored it already
                request.prompt_logprobs += entries
            start += count

    def _run_model(self, batch: ForwardBatch) -> torch.Tensor:
        """Plan this step's attention, then the forward pass -> [num_sampled, hidden]."""
        plan = self.model.ops.plan_attention(batch.block_tables, batch.seq_lens, batch.query_start_loc,
                                             self.model.config.sliding_window)
        return self.model(batch, self.kv_caches, plan)

    def _decode_from_graph(self, batch: ScheduledBatch) -> torch.Tensor | None:
        """[num_seqs, vocab] logits replayed from a CUDA graph when the step is pure decode and a
        captured bucket fits it; else None."""
        requests = batch.requests
        if self.graphs is None or batch.num_tokens != len(requests):
            return None
        positions = np.array([r.num_computed_tokens for r in requests], dtype=np.int64)  # [S]
        if not self.graphs.fits(len(requests), int(positions.max()) + 1):
            return None
        block_tables = _pad_block_tables([r.block_ids for r in requests])  # [S, w]
        slots = self._slots(block_tables, np.arange(len(requests)), positions)  # [S]
        input_ids = np.array([r.token_ids[p] for r, p in zip(requests, positions.tolist())], dtype=np.int64)
        return self.graphs.run(torch.from_numpy(input_ids), torch.from_numpy(positions), torch.from_numpy(slots),
                               torch.from_numpy(block_tables), torch.from_numpy(positions + 1).int())

    def _slots(self, block_tables: np.ndarray, seq_index: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """KV slot of each token: its sequence's block for that position, times block_size, plus the offset."""
        blocks = block_tables[seq_index, positions // self.block_size].astype(np.int64)
        return blocks * self.block_size + positions % self.block_size

    def _prepare(self, batch: ScheduledBatch, sampling_rows: list[int],
                 scored: list[tuple[int, int, int]] = ()) -> ForwardBatch:
        """The step's flat inputs, built in numpy (a few microseconds an op where torch costs tens
        on tensors this small) and handed to torch without a copy."""
        requests, num_new = batch.requests, batch.num_new_tokens
        num_seqs, num_tokens = len(requests), batch.num_tokens
        num_computed = [r.num_computed_tokens for r in requests]
        if num_tokens == num_seqs:  # one token a row: the token at its position
            input_ids = np.fromiter(map(_token_at, requests, num_computed), dtype=np.int64, count=num_seqs)
        else:  # a request's draft tokens follow its known ones
            input_ids = np.fromiter(itertools.chain.from_iterable(
                (r.token_ids + r.draft_ids if r.draft_ids else r.token_ids)[c:c + n]
                for r, c, n in zip(requests, num_computed, num_new)), dtype=np.int64, count=num_tokens)
        q_lens = np.array(num_new, dtype=np.int64)  # [S]
        query_start_loc = np.zeros(num_seqs + 1, dtype=np.int64)  # [S + 1]
        np.cumsum(q_lens, out=query_start_loc[1:])
        seq_index = np.repeat(np.arange(num_seqs), q_lens)  # [T]
        computed = np.array(num_computed, dtype=np.int64)  # [S]
        positions = computed[seq_index] + np.arange(num_tokens) - query_start_loc[seq_index]  # [T]
        block_tables = _pad_block_tables([r.block_ids for r in requests])  # [S, max_blocks]
        logits_indices = _sampled_positions(query_start_loc, sampling_rows, requests, batch.num_draft_tokens)
        if scored:  # then every scored position's row: [num_sampled + scored]
            logits_indices = np.concatenate([logits_indices, *(
                np.arange(count) + query_start_loc[row] + first - num_computed[row] for row, first, count in scored)])
        to = self.device
        return ForwardBatch(
            input_ids=torch.from_numpy(input_ids).to(to),
            positions=torch.from_numpy(positions).to(to),
            slot_mapping=torch.from_numpy(self._slots(block_tables, seq_index, positions)).to(to),
            block_tables=torch.from_numpy(block_tables).to(to),
            seq_lens=torch.from_numpy((computed + q_lens).astype(np.int32)).to(to),
            query_start_loc=torch.from_numpy(query_start_loc.astype(np.int32)).to(to),
            logits_indices=torch.from_numpy(logits_indices).to(to),
        )


def _scored_prompt_spans(batch: ScheduledBatch) -> list[tuple[int, int, int]]:
    """(row, first position, count) of the prompt positions this step computes whose logprobs a
    request asked for and has not got: position p scores prompt token p + 1."""
    spans = []
    for row, (request, num_new) in enumerate(zip(batch.requests, batch.num_new_tokens)):
        if request.params.prompt_logprobs is None:
            continue
        first = max(request.num_computed_tokens, len(request.prompt_logprobs))
        end = min(request.num_computed_tokens + num_new, request.prompt_len - 1)
        if end > first:
            spans.append((row, first, end - first))
    return spans


def _sampled_positions(query_start_loc: np.ndarray, sampling_rows: list[int], requests: list[Request],
                       num_draft_tokens: int) -> np.ndarray:
    """[num_sampled] flat rows whose logits are sampled: each sampling request's last token, or with
    a draft its last 1 + draft length tokens (the token before the draft and each draft token)."""
    ends = query_start_loc[1:][np.array(sampling_rows, dtype=np.int64)]  # [num_sampling]
    if not num_draft_tokens:
        return ends - 1
    counts = np.array([1 + len(requests[row].draft_ids) for row in sampling_rows], dtype=np.int64)
    firsts = np.repeat(ends - counts, counts)  # [num_sampled]
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return firsts + offsets


def _token_at(request, position: int) -> int:
    return request.token_ids[position]


def _pad_block_tables(block_ids: list[list[int]]) -> np.ndarray:
    """Ragged block lists -> [num_seqs, max_blocks] int32, padded with block 0 (never read:
    attention masks every position past a sequence's length). One flat copy scattered under a
    mask: a row-by-row fill cost 2-3 us a row at 256 sequences."""
    lengths = np.fromiter(map(len, block_ids), dtype=np.int64, count=len(block_ids))  # [S]
    table = np.zeros((len(block_ids), int(lengths.max())), dtype=np.int32)
    filled = np.arange(table.shape[1]) < lengths[:, None]  # [S, max_blocks], row-major as the flat list
    table[filled] = np.fromiter(itertools.chain.from_iterable(block_ids), dtype=np.int32, count=int(lengths.sum()))
    return table
