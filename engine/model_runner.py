"""Owns the model and its KV cache; turns a scheduled batch into tensors, runs it, samples."""

from __future__ import annotations

import torch

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

    @staticmethod
    def kv_bytes_per_block(model: Llama, block_size: int) -> int:
        config = model.config
        element_size = next(model.parameters()).element_size()
        return config.num_layers * 2 * block_size * config.num_kv_heads * config.head_dim * element_size

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> tuple[list[int | None], list[TokenLogprob | None]]:
        """Run one step. Returns, per scheduled request, the sampled token (None for a prompt
        chunk that does not reach its end) and its logprobs (None unless asked for)."""
        sampling_rows = [i for i in range(len(batch.requests)) if batch.samples(i)]
        forward_batch = self._prepare(batch, sampling_rows)
        hidden = self.model(forward_batch, self.kv_caches)  # [num_sampled, hidden]
        sampled: list[int | None] = [None] * len(batch.requests)
        logprobs: list[TokenLogprob | None] = [None] * len(batch.requests)
        if sampling_rows:
            logits = self.model.compute_logits(hidden)  # [num_sampled, vocab]
            token_ids, token_logprobs = self.sampler.sample(logits, [batch.requests[i] for i in sampling_rows])
            for row, token_id, logprob in zip(sampling_rows, token_ids, token_logprobs):
                sampled[row], logprobs[row] = token_id, logprob
        return sampled, logprobs

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
        slot_mapping = (block_tables[seq_index, positions // self.block_size].long() * self.block_size
                        + positions % self.block_size)  # [T]
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
    attention masks every position past a sequence's length)."""
    width = max(len(ids) for ids in block_ids)
    return torch.tensor([ids + [0] * (width - len(ids)) for ids in block_ids], dtype=torch.int32)
