"""The Llama-family forward pass over a flat, paged batch.

Checkpoint layout never leaks in here: `load_weights` fuses q/k/v and gate/up as it copies them.
Attention and KV writes go through `ops` (kernels.load), chosen once by the model runner.
"""

from __future__ import annotations

import types
from collections.abc import Iterable

import torch
from torch import nn

from engine.loaders.int4_groups import Int4Groups
from engine.model import cpu_decode, rope
from engine.model.int4_linear import PACK_ROWS, Int4Linear
from engine.model.model_config import ModelConfig
from engine.runner.forward_batch import ForwardBatch
from kernels import cpu_matmul
from kernels.cpu_decoder import CpuDecoder


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, ops: types.ModuleType) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.ops = ops

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [num_tokens, hidden] (+ residual) -> (normed, the sum that is the next residual)."""
        return self.ops.rms_norm(x, self.weight, self.eps, residual)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, ops: types.ModuleType) -> None:
        super().__init__()
        self.ops = ops
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=config.o_proj_bias)
        self.scale = self.head_dim ** -0.5

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: ForwardBatch,
                plan: object, kv_cache: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        num_tokens, qk_size = x.shape[0], self.q_size + self.kv_size
        qkv = self.qkv_proj(x)  # [T, (Hq + 2 Hkv) * D]
        # q and k sit side by side in qkv: one rotary pass over both (half the small ops of two)
        qk = rope.apply_rotary(qkv[:, :qk_size].view(num_tokens, -1, self.head_dim), cos, sin)  # [T, Hq + Hkv, D]
        q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)  # [T, Hq, D], [T, Hkv, D]
        v = qkv[:, qk_size:].view(num_tokens, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        k_cache, v_cache = kv_cache
        self.ops.store_kv(k, v, k_cache, v_cache, batch.slot_mapping)
        out = self.ops.paged_attention(q, k_cache, v_cache, plan, self.scale)  # [T, Hq, D]
        return self.o_proj(out.reshape(num_tokens, self.q_size))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [num_tokens, hidden]
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)  # [T, I] each
        return self.down_proj(nn.functional.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, ops: types.ModuleType) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.self_attn = Attention(config, ops)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                batch: ForwardBatch, plan: object, kv_cache: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual stream is x + residual (the first layer: x alone): each residual add is
        fused into the norm that follows it. Returns the MLP output and the residual before it."""
        h, residual = self.input_layernorm(x, residual)  # [T, hidden] each
        h, residual = self.post_attention_layernorm(self.self_attn(h, cos, sin, batch, plan, kv_cache), residual)
        return self.mlp(h), residual


class Llama(nn.Module):
    def __init__(self, config: ModelConfig, ops: types.ModuleType, max_model_len: int) -> None:
        super().__init__()
        self.config = config
        self.ops = ops
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, ops) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(
            config.hidden_size, config.vocab_size, bias=False)
        self.c_head_max_rows = 0  # the head runs the C bfloat16 matmul up to this many rows (engine/model/lm_head.py)
        self.int8_head: tuple[torch.Tensor, torch.Tensor] | None = None  # packed 8-bit copy (engine/model/lm_head.py)
        self.int8_head_max_rows = 0
        self.cpu_decoder: CpuDecoder | None = None  # decode steps' layers in one C call (engine/model/cpu_decode.py)
        self.cpu_decoder_max_rows = 0
        self.reset_rope_cache(max_model_len)

    def reset_rope_cache(self, max_model_len: int) -> None:
        """(Re)compute the float32 cos/sin tables; call after moving or casting the model."""
        config = self.config
        device = self.embed_tokens.weight.device
        tables = rope.rope_tables(config.head_dim, config.rope_theta, config.rope_scaling, max_model_len)
        self.register_buffer("rope_cos", tables.cos.to(device), persistent=False)  # [max_model_len, head_dim]
        self.register_buffer("rope_sin", tables.sin.to(device), persistent=False)
        has_long = tables.long_cos is not None
        self.register_buffer("rope_long_cos", tables.long_cos.to(device) if has_long else None, persistent=False)
        self.register_buffer("rope_long_sin", tables.long_sin.to(device) if has_long else None, persistent=False)
        self.rope_long_after = tables.long_after

    def _rope(self, batch: ForwardBatch, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [num_tokens, head_dim] for this batch's positions."""
        cos, sin = self.rope_cos[batch.positions], self.rope_sin[batch.positions]
        if self.rope_long_cos is not None:  # LongRoPE: a sequence past the original context uses long factors
            is_long = (batch.seq_lens > self.rope_long_after).repeat_interleave(
                batch.query_start_loc.diff(), output_size=batch.positions.shape[0])  # sized: no device sync
            cos = torch.where(is_long[:, None], self.rope_long_cos[batch.positions], cos)
            sin = torch.where(is_long[:, None], self.rope_long_sin[batch.positions], sin)
        return cos.to(dtype), sin.to(dtype)

    def forward(self, batch: ForwardBatch, kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                plan: object) -> torch.Tensor:
        """Hidden states of the rows to sample: [num_sampled, hidden]. `plan` is the step's
        `ops.plan_attention(...)`, built by the caller (once per CUDA graph, or once per step)."""
        x = self.embed_tokens(batch.input_ids)  # [T, hidden]
        cos, sin = self._rope(batch, x.dtype)  # [T, head_dim] each
        residual = None
        if cpu_decode.takes(self, plan, x.shape[0]):
            x, residual = self.cpu_decoder.forward(x, cos, sin, batch.slot_mapping, plan.decode_rows,
                                                   plan.decode_tables, plan.decode_lens, kv_caches)
        else:
            for layer, kv_cache in zip(self.layers, kv_caches):
                x, residual = layer(x, residual, cos, sin, batch, plan, kv_cache)
        rows = batch.logits_indices
        return self.norm(x[rows], residual[rows] if residual is not None else None)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[num_sampled, hidden] -> [num_sampled, vocab] float32."""
        if hidden.shape[0] <= self.int8_head_max_rows:
            logits = cpu_matmul.int8_matmul(hidden, *self.int8_head)  # [num_sampled, vocab] bfloat16
            if logits is not None:
                return logits.float()
        if hidden.shape[0] <= self.c_head_max_rows:
            weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
            logits = cpu_matmul.bf16_matmul(hidden, weight)  # [num_sampled, vocab] bfloat16
            if logits is not None:
                return logits.float()
        if self.lm_head is None:
            return nn.functional.linear(hidden, self.embed_tokens.weight).float()
        return self.lm_head(hidden).float()

    def weight_bytes(self) -> int:
        """Bytes the weights take: parameters and 4-bit buffers, not the derived rope tables."""
        tensors = [*self.parameters(), *(b for name, b in self.named_buffers() if not name.startswith("rope_"))]
        return sum(t.numel() * t.element_size() for t in tensors)

    def int4_candidates(self, int4_weights: frozenset[str]) -> dict[str, nn.Linear]:
        """The linear layers whose checkpoint parts all arrive as Int4Groups (`int4_weights`: HF
        names) and whose shape torch's int4 packing takes (blocks of PACK_ROWS output rows)."""
        found = {}
        for name, module in self.named_modules():
            if not isinstance(module, nn.Linear) or module.out_features % PACK_ROWS:
                continue
            whole = f"{'' if name == 'lm_head' else 'model.'}{name}.weight"
            if whole in int4_weights or all(p in int4_weights for p in self._parts_of(whole)):
                found[name] = module
        return found

    def use_int4(self, layers: dict[str, nn.Linear], keep_float: bool) -> None:
        """Swap `layers` (from int4_candidates) for Int4Linear layers, with a float copy too if
        `keep_float`, multiplied by the C kernel where the ops have it and it is vectorized here
        (else torch's). Call before the parameters are allocated (on the meta device)."""
        c_kernel = self.ops.C_MATMULS and cpu_matmul.available()
        for name, module in layers.items():
            parent, _, attr = name.rpartition(".")
            setattr(self.get_submodule(parent), attr, Int4Linear(
                module.in_features, module.out_features, module.bias is not None, keep_float, c_kernel))

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor | Int4Groups]]) -> None:
        """Copy Hugging Face-named tensors in, fusing q/k/v and gate/up; every parameter must be
        filled exactly once, and unknown or mis-shaped tensors raise ValueError. Int4Groups go
        into Int4Linear layers as they are, and are dequantized for every other place."""
        params = dict(self.named_parameters())
        modules = dict(self.named_modules())
        fused = self._fused_parts()
        filled: set[str] = set()
        for hf_name, tensor in weights:
            target, row = self._locate(hf_name, fused)
            if target is None:
                continue
            module_name, _, kind = target.rpartition(".")
            if isinstance(modules.get(module_name), Int4Linear) and kind == "weight":
                self._load_int4(modules[module_name], hf_name, tensor, row)
                filled.add(hf_name.removeprefix("model."))
                continue
            if isinstance(tensor, Int4Groups):
                tensor = tensor.dequantize()
            if target not in params:
                raise ValueError(f"checkpoint tensor {hf_name!r} has no place in {self.config.architecture}")
            param = params[target]
            rows = param.data if row is None else param.data.narrow(0, row[0], row[1])
            if tuple(rows.shape) != tuple(tensor.shape):
                raise ValueError(f"checkpoint tensor {hf_name!r} has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(rows.shape)}")
            rows.copy_(tensor)
            filled.add(hf_name.removeprefix("model."))
        self._check_all_filled(params, filled)
        incomplete = [name for name, m in modules.items() if isinstance(m, Int4Linear) and not m.complete]
        if incomplete:
            raise ValueError(f"checkpoint lacks rows of {len(incomplete)} 4-bit layers, e.g. {incomplete[:3]}")

    @staticmethod
    def _load_int4(layer: Int4Linear, hf_name: str, tensor: torch.Tensor | Int4Groups,
                   row: tuple[int, int] | None) -> None:
        expected = (layer.out_features if row is None else row[1], layer.in_features)
        if not isinstance(tensor, Int4Groups) or tensor.shape != expected:
            got = f"shape {tuple(tensor.shape)}" if isinstance(tensor, Int4Groups) else "a float tensor"
            raise ValueError(f"checkpoint tensor {hf_name!r}: expected 4-bit groups of shape {expected}, got {got}")
        layer.load_rows(0 if row is None else row[0], tensor)

    def _fused_parts(self) -> dict[str, tuple[str, int, int]]:
        """Checkpoint part -> (fused parameter, first row, num rows): q/k/v and gate/up."""
        q, kv, inter = self.config.num_heads * self.config.head_dim, \
            self.config.num_kv_heads * self.config.head_dim, self.config.intermediate_size
        return {"q_proj": ("qkv_proj", 0, q), "k_proj": ("qkv_proj", q, kv), "v_proj": ("qkv_proj", q + kv, kv),
                "gate_proj": ("gate_up_proj", 0, inter), "up_proj": ("gate_up_proj", inter, inter)}

    def _parts_of(self, name: str) -> list[str]:
        """The checkpoint tensors a fused parameter is stacked from (q/k/v, gate/up), or [name]."""
        parts = [name.replace(f".{whole}.", f".{part}.")
                 for part, (whole, _, _) in self._fused_parts().items() if f".{whole}." in name]
        return parts or [name]

    def _locate(self, hf_name: str, fused: dict[str, tuple[str, int, int]]
                ) -> tuple[str | None, tuple[int, int] | None]:
        """Where a HF tensor goes: (parameter name, (first row, num rows) inside it or None)."""
        name = hf_name.removeprefix("model.")
        if "rotary_emb" in name:
            return None, None  # derived, not loaded
        if name == "lm_head.weight" and self.lm_head is None:
            return None, None  # tied: the embedding serves as the head
        for part, (whole, start, size) in fused.items():
            if f".{part}." in name:
                return name.replace(part, whole), (start, size)
        return name, None

    def _check_all_filled(self, params: dict[str, nn.Parameter], filled: set[str]) -> None:
        missing = []
        for name in params:
            if name in filled:  # loaded whole (Phi-3 checkpoints store qkv_proj / gate_up_proj fused)
                continue
            missing += [p for p in self._parts_of(name) if p not in filled]
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
