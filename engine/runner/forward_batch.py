"""The flat tensors one forward pass needs. Built by the model runner, read by the model."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class ForwardBatch:
    input_ids: torch.Tensor  # [num_tokens] int64, sequences one after another
    positions: torch.Tensor  # [num_tokens] int64, absolute position of each token
    slot_mapping: torch.Tensor  # [num_tokens] int64, KV cache slot each token writes (contract.py)
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor  # [num_seqs] int32, context length including this step's tokens
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32, first flat row of each sequence
    logits_indices: torch.Tensor  # [num_sampled] int64, flat rows whose logits are sampled
