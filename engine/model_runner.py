"""Owns the model and its KV cache; turns a scheduled batch into tensors, runs it, samples."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from engine.cuda_graphs import DecodeGraphs, Step
from engine.forward_batch import ForwardBatch
from engine.llama import Llama
from engine.sampler import Sampler
from engine.scheduler import ScheduledBatch
from shared.messages import TokenLogprob


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
    def execute(self, batch: ScheduledBatch) -> tuple[list[int | None], list[TokenLogprob | None]]:
        """Run one step. Returns, per scheduled request, the sampled token (None for a prompt
        chunk that does not reach its end) and its logprobs (None unless asked for)."""
        sampling_rows = [i for i in range(len(batch.requests)) if batch.samples(i)]
        sampled: list[int | None] = [None] * len(batch.requests)
        logprobs: list[TokenLogprob | None] = [None] * len(batch.requests)
        logits = self._decode_from_graph(batch)  # [num_seqs, vocab] or None
        if logits is None:
            logits = self._forward(batch, sampling_rows)
        elif len(sampling_rows) < len(batch.requests):  # a one-token prompt chunk short of its end
            logits = logits[torch.tensor(sampling_rows, device=logits.device)]
        if sampling_rows:
            token_ids, token_logprobs = self.sampler.sample(logits, [batch.requests[i] for i in sampling_rows])
            for row, token_id, logprob in zip(sampling_rows, token_ids, token_logprobs):
                sampled[row], logprobs[row] = token_id, logprob
        return sampled, logprobs

    def _forward(self, batch: ScheduledBatch, sampling_rows: list[int]) -> torch.Tensor | None:
        """Eager forward pass -> [num_sampled, vocab] float32 logits (None if nothing samples)."""
        hidden = self._run_model(self._prepare(batch, sampling_rows))  # [num_sampled, hidden]
        return self.model.compute_logits(hidden) if sampling_rows else None

    def _run_model(self, batch: ForwardBatch) -> torch.Tensor:
        """Plan this step's attention, then the forward pass -> [num_sampled, hidden]."""
        plan = self.model.ops.plan_attention(batch.block_tables, batch.seq_lens, batch.query_start_loc,
                                             self.model.config.sliding_window)
        return self.model(batch, self.kv_caches, plan)

    def _decode_from_graph(self, batch: ScheduledBatch) -> torch.Tensor | None:
        """[num_seqs, vocab] logits replayed from a CUDA graph when the step is pure decode and a
        captured bucket fits it; else None."""
        requests = batch.requests
        if self.graphs is None or any(n != 1 for n in batch.num_new_tokens):
            return None
        positions = [r.num_computed_tokens for r in requests]
        if not self.graphs.fits(len(requests), max(positions) + 1):
            return None
        block_tables = _pad_block_tables([r.block_ids for r in requests])  # [S, w]
        position = torch.tensor(positions, dtype=torch.int64)  # [S]
        slots = self._slots(block_tables, torch.arange(len(requests)), position)  # [S]
        input_ids = torch.tensor([r.token_ids[p] for r, p in zip(requests, positions)], dtype=torch.int64)
        return self.graphs.run(input_ids, position, slots, block_tables, (position + 1).int())

    def _slots(self, block_tables: torch.Tensor, seq_index: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """KV slot of each token: its sequence's block for that position, times block_size, plus the offset."""
        blocks = block_tables[seq_index, positions // self.block_size].long()
        return blocks * self.block_size + positions % self.block_size

    def _prepare(self, batch: ScheduledBatch, sampling_rows: list[int]) -> ForwardBatch:
        requests, num_new = batch.requests, batch.num_new_tokens
        num_computed = [r.num_computed_tokens for r in requests]
        input_ids: list[int] = []
        for request, start, count in zip(requests, num_computed, num_new):
            input_ids += request.token_ids[start:start + count]
        q_lens = torch.tensor(num_new, dtype=torch.int64)  # [S]
        query_start_loc = torch.zeros(len(requests) + 1, dtype=torch.int64)  # [S + 1]
        torch.cumsum(q_lens, 0, out=query_start_loc[1:])
        seq_index = torch.repeat_interleave(torch.arange(len(requests)), q_lens)  # [T]
        offsets = torch.arange(int(query_start_loc[-1])) - query_start_loc[:-1][seq_index]  # [T]
        positions = torch.tensor(num_computed, dtype=torch.int64)[seq_index] + offsets  # [T]
        block_tables = _pad_block_tables([r.block_ids for r in requests])  # [S, max_blocks]
        slot_mapping = self._slots(block_tables, seq_index, positions)  # [T]
        logits_indices = query_start_loc[1:][torch.tensor(sampling_rows, dtype=torch.int64)] - 1  # [num_sampled]
        to = self.device
        return ForwardBatch(
            input_ids=torch.tensor(input_ids, dtype=torch.int64).to(to),
            positions=positions.to(to),
            slot_mapping=slot_mapping.to(to),
            block_tables=block_tables.to(to),
            seq_lens=(torch.tensor(num_computed, dtype=torch.int32) + q_lens.int()).to(to),
            query_start_loc=query_start_loc.int().to(to),
            logits_indices=logits_indices.to(to),
        )


def _pad_block_tables(block_ids: list[list[int]]) -> torch.Tensor:
    """Ragged block lists -> [num_seqs, max_blocks] int32, padded with block 0 (never read:
    attention masks every position past a sequence's length). Filled row by row through numpy:
    3x faster than torch.tensor on nested lists at 256 sequences x 256 blocks."""
    table = np.zeros((len(block_ids), max(len(ids) for ids in block_ids)), dtype=np.int32)
    for row, ids in enumerate(block_ids):
        table[row, :len(ids)] = ids
    return torch.from_numpy(table)
