"""The architecture facts of a Llama-family model, from a HF config.json or GGUF metadata."""

from __future__ import annotations

import dataclasses
from typing import Any

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Phi3ForCausalLM")
_GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "phi3": "Phi3ForCausalLM"}
_HF_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                   "phi3": "Phi3ForCausalLM"}  # for config.json files without "architectures"
_ROPE_TYPES = ("default", "linear", "llama3", "longrope", "freq_factors")
_SLIDING_WINDOW_FAMILIES = ("MistralForCausalLM", "Phi3ForCausalLM")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rope_scaling: dict[str, Any] | None = None  # None: plain RoPE; else rope_type + its factors
    attention_bias: bool = False  # biases on q/k/v projections
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    o_proj_bias: bool = False
    sliding_window: int | None = None  # None: full attention; W: a token sees the W latest keys

    def __post_init__(self) -> None:
        _check_architecture(self.architecture)
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model config field {name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads "
                             f"{self.num_kv_heads}")
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in _ROPE_TYPES:
            raise ValueError(f"unsupported rope_type {rope_type!r}; supported: {', '.join(_ROPE_TYPES)}")

    @property
    def num_params(self) -> int:
        attention = self.hidden_size * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * self.hidden_size * self.intermediate_size
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * (attention + mlp + 2 * self.hidden_size) + embeddings + self.hidden_size

    @classmethod
    def from_hf_json(cls, config: dict[str, Any]) -> ModelConfig:
        architectures = config.get("architectures") or [
            _HF_MODEL_TYPES.get(config.get("model_type"), f"model_type {config.get('model_type')!r}")]
        _check_architecture(architectures[0])
        num_heads = _int(config, "num_attention_heads")
        hidden_size = _int(config, "hidden_size")
        rope_theta, rope_scaling = _hf_rope(config)
        eos = config.get("eos_token_id")
        arch = architectures[0]
        for unsupported in ("mlp_bias", "use_sliding_window"):
            if config.get(unsupported):
                raise ValueError(f"config.json sets {unsupported}, which Forge does not support yet")
        if float(config.get("partial_rotary_factor", 1.0)) != 1.0:
            raise ValueError("partial_rotary_factor != 1 is not supported yet")
        declared_bias = bool(config.get("attention_bias", False))
        return cls(
            architecture=architectures[0],
            vocab_size=_int(config, "vocab_size"),
            hidden_size=hidden_size,
            intermediate_size=_int(config, "intermediate_size"),
            num_layers=_int(config, "num_hidden_layers"),
            num_heads=num_heads,
            num_kv_heads=int(config.get("num_key_value_heads") or num_heads),
            head_dim=int(config.get("head_dim") or hidden_size // num_heads),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            max_position_embeddings=_int(config, "max_position_embeddings"),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            rope_scaling=rope_scaling,
            attention_bias=declared_bias or arch == "Qwen2ForCausalLM",  # Qwen2: q/k/v biases always
            bos_token_id=config.get("bos_token_id"),
            eos_token_ids=tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),)),
            o_proj_bias=declared_bias and arch != "Qwen2ForCausalLM",
            sliding_window=config.get("sliding_window") if arch in _SLIDING_WINDOW_FAMILIES else None,
        )

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any], has_output_tensor: bool,
                           rope_factors: dict[str, list[float]] | None = None) -> ModelConfig:
        """`rope_factors`: rope scaling GGUF stores as tensors, by tensor name without ".weight"
        (rope_factors_short / rope_factors_long for LongRoPE, rope_freqs for llama3 scaling)."""
        arch = meta.get("general.architecture")
        if arch not in _GGUF_ARCHITECTURES:
            raise ValueError(f"unsupported GGUF architecture {arch!r}; Forge supports "
                             f"{', '.join(_GGUF_ARCHITECTURES)}")

        def get(key: str, default: Any = None) -> Any:
            value = meta.get(f"{arch}.{key}", default)
            if value is None:
                raise ValueError(f"GGUF metadata lacks {arch}.{key}")
            return value

        num_heads = int(get("attention.head_count"))
        hidden_size = int(get("embedding_length"))
        vocab_size = meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens") or ())
        eos = meta.get("tokenizer.ggml.eos_token_id")
        return cls(
            architecture=_GGUF_ARCHITECTURES[arch],
            vocab_size=int(vocab_size),
            hidden_size=hidden_size,
            intermediate_size=int(get("feed_forward_length")),
            num_layers=int(get("block_count")),
            num_heads=num_heads,
            num_kv_heads=int(get("attention.head_count_kv", num_heads)),
            head_dim=int(get("attention.key_length", hidden_size // num_heads)),
            rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(get("rope.freq_base", 10000.0)),
            max_position_embeddings=int(get("context_length")),
            tie_word_embeddings=not has_output_tensor,
            rope_scaling=_gguf_rope_scaling(meta, arch, rope_factors),
            attention_bias=arch == "qwen2",
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_token_ids=() if eos is None else (int(eos),),
            sliding_window=meta.get(f"{arch}.attention.sliding_window") or None if arch == "phi3" else None,
        )


def _check_architecture(architecture: str) -> None:
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"unsupported architecture {architecture!r}; Forge supports "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)}")


def _int(config: dict[str, Any], key: str) -> int:
    if key not in config:
        raise ValueError(f"config.json lacks {key!r}")
    return int(config[key])


def _hf_rope(config: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, scaling) from either style: transformers 4's `rope_theta` + `rope_scaling`, or
    transformers 5's `rope_parameters` (which holds rope_theta and rope_type together)."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", config.get("rope_theta", 10000.0)))
    rope_type = params.pop("type", None) or params.get("rope_type", "default")
    rope_type = "longrope" if rope_type == "su" else rope_type  # Phi-3's old name for it
    if rope_type == "default":
        return theta, None
    params["rope_type"] = rope_type
    params.setdefault("original_max_position_embeddings",
                      config.get("original_max_position_embeddings") or config.get("max_position_embeddings"))
    params["max_position_embeddings"] = config.get("max_position_embeddings")
    return theta, params


def _gguf_rope_scaling(meta: dict[str, Any], arch: str,
                       rope_factors: dict[str, list[float]] | None) -> dict[str, Any] | None:
    rope_factors = rope_factors or {}
    if "rope_freqs" in rope_factors:  # llama.cpp divides each rotation speed by its factor
        return {"rope_type": "freq_factors", "factors": rope_factors["rope_freqs"]}
    if "rope_factors_long" in rope_factors:  # Phi-3 LongRoPE
        original = meta.get(f"{arch}.rope.scaling.original_context_length")
        if original is None:
            raise ValueError(f"GGUF has rope factor tensors but no {arch}.rope.scaling.original_context_length")
        return {"rope_type": "longrope", "short_factor": rope_factors["rope_factors_short"],
                "long_factor": rope_factors["rope_factors_long"],
                "original_max_position_embeddings": int(original),
                "max_position_embeddings": int(meta[f"{arch}.context_length"]),
                "attention_factor": meta.get(f"{arch}.rope.scaling.attn_factor")}
    kind = meta.get(f"{arch}.rope.scaling.type")
    if kind in (None, "none"):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(meta[f"{arch}.rope.scaling.factor"])}
    raise ValueError(f"unsupported GGUF rope scaling {kind!r}")
