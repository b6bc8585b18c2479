"""Decode steps replayed from CUDA graphs: one graph per batch-size bucket, captured at start-up.

A decode step launches a few hundred small kernels; replaying them as one graph removes the
per-launch CPU cost that otherwise dominates small batches. Each bucket's graph reads leading
slices of one set of static input buffers and copies its logits into leading rows of one static
output. A batch of S sequences runs in the smallest bucket B >= S; rows S..B-1 are padding:
slot -1 (their KV is never written), length 1 (they read one key of some block, and their
output is dropped).

Every kernel the graphs contain is compiled and loaded by a warm-up run before capture, since
neither compiling nor loading a module may happen while a stream is being captured.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable

import torch

from engine.model.llama import Llama
from engine.runner.forward_batch import ForwardBatch

logger = logging.getLogger("forge.engine")


def bucket_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 8 up to max_batch (vLLM's spacing), and max_batch itself."""
    sizes = [s for s in (1, 2, 4) if s < max_batch] + list(range(8, max_batch, 8)) + [max_batch]
    return sorted(set(sizes))


Step = Callable[[], None]


class CudaGraphCapture:
    """Records a step into a torch CUDA graph and returns the graph's replay. Warm-up and capture
    share one side stream (so CuPy's view of it exists before capture) and all graphs share one
    memory pool (they never run at the same time)."""

    def __init__(self) -> None:
        self.stream = torch.cuda.Stream()
        self.pool = torch.cuda.graph_pool_handle()

    def __call__(self, step: Step) -> Step:
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):  # off the default stream, as torch's graph notes advise
            step()  # compiles and loads every kernel, creates cuBLAS workspaces
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            step()
        return graph.replay


class DecodeGraphs:
    def __init__(self, model: Llama, kv_caches: list[tuple[torch.Tensor, torch.Tensor]], ops: types.ModuleType,
                 max_batch: int, max_seq_len: int, block_size: int,
                 capture: Callable[[Step], Step] | None = None) -> None:
        """`capture` turns a step into its replay: CudaGraphCapture() unless a test runs steps eagerly."""
        self.buckets = bucket_sizes(max_batch)
        self.max_seq_len = max_seq_len  # longer contexts run eagerly
        device = next(model.parameters()).device
        rows, width = self.buckets[-1], -(-max_seq_len // block_size)
        self.input_ids = torch.zeros(rows, dtype=torch.int64, device=device)  # [rows]
        self.positions = torch.zeros(rows, dtype=torch.int64, device=device)  # [rows]
        self.slot_mapping = torch.full((rows,), -1, dtype=torch.int64, device=device)  # [rows]
        self.block_tables = torch.zeros(rows, width, dtype=torch.int32, device=device)  # [rows, width]
        self.seq_lens = torch.ones(rows, dtype=torch.int32, device=device)  # [rows]
        self.query_start_loc = torch.arange(rows + 1, dtype=torch.int32, device=device)  # [rows + 1]
        self.logits_indices = torch.arange(rows, dtype=torch.int64, device=device)  # [rows]
        self.logits = torch.empty(rows, model.config.vocab_size, dtype=torch.float32, device=device)  # [rows, V]
        capture = capture or CudaGraphCapture()
        self._replays = {size: capture(self._step(size, model, kv_caches, ops))
                         for size in reversed(self.buckets)}  # largest first: smaller graphs reuse its memory
        logger.info("captured decode CUDA graphs for batch sizes %s (contexts up to %d)", self.buckets, max_seq_len)

    def _step(self, size: int, model: Llama, kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
              ops: types.ModuleType) -> Step:
        """A decode step of `size` rows over leading slices of the static buffers. Its attention
        plan is built once, over those buffers, bounded by max_seq_len (contract.py)."""
        batch = ForwardBatch(
            input_ids=self.input_ids[:size], positions=self.positions[:size], slot_mapping=self.slot_mapping[:size],
            block_tables=self.block_tables[:size], seq_lens=self.seq_lens[:size],
            query_start_loc=self.query_start_loc[:size + 1], logits_indices=self.logits_indices[:size])
        plan = ops.plan_attention(batch.block_tables, batch.seq_lens, batch.query_start_loc,
                                  model.config.sliding_window, self.max_seq_len)

        def step() -> None:
            self.logits[:size].copy_(model.compute_logits(model(batch, kv_caches, plan)))  # [size, vocab]

        return step

    def fits(self, num_seqs: int, max_seq_len: int) -> bool:
        return num_seqs <= self.buckets[-1] and max_seq_len <= self.max_seq_len

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
            block_tables: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
        """One decode step of S sequences (CPU tensors: [S] each, block_tables [S, w]) -> logits
        [S, vocab] float32, a view of the graph's output that the next replay overwrites."""
        num_seqs = block_tables.shape[0]
        width = min(block_tables.shape[1], self.block_tables.shape[1])  # blocks past max_seq_len are never read
        size = next(b for b in self.buckets if b >= num_seqs)
        self.input_ids[:num_seqs].copy_(input_ids, non_blocking=True)
        self.positions[:num_seqs].copy_(positions, non_blocking=True)
        self.slot_mapping[:num_seqs].copy_(slot_mapping, non_blocking=True)
        self.block_tables[:num_seqs, :width].copy_(block_tables[:, :width], non_blocking=True)
        self.seq_lens[:num_seqs].copy_(seq_lens, non_blocking=True)
        self.slot_mapping[num_seqs:size].fill_(-1)  # padding rows: write nothing, see one key
        self.seq_lens[num_seqs:size].fill_(1)
        self._replays[size]()
        return self.logits[:num_seqs]
