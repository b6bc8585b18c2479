"""Engine configuration: frozen, validated at construction, never mutated afterwards.

Runtime facts (the number of KV blocks actually allocated, the resolved dtype) are returned by
the components that compute them, never written back here.
"""

from __future__ import annotations

import dataclasses
import json

_DEVICES = ("cpu", "cuda", "auto")
_DTYPES = ("auto", "float32", "bfloat16", "float16")
KERNEL_KINDS = ("auto", "ref", "cuda", "cpu")  # kernels.load picks one
WEIGHT_FORMATS = ("auto", "float", "int4", "mixed")  # 4-bit checkpoint layers: engine/model/int4_linear.py


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """What the engine is asked to do. `None` fields mean "derive from the model or memory"."""

    model: str | None = None  # path to a HF directory or .gguf file; None: the embedded default
    device: str = "cpu"
    dtype: str = "auto"
    kernels: str = "auto"
    quantized_weights: str = "auto"  # WEIGHT_FORMATS: keep 4-bit GGUF layers 4-bit (CPU, bfloat16)
    block_size: int = 16
    num_kv_blocks: int | None = None  # None: sized from kv_cache_gib
    kv_cache_gib: float = 1.0
    max_model_len: int | None = None  # None: the model's own context length
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 512
    enable_prefix_caching: bool = True
    num_threads: int | None = None  # CPU: torch intra-op threads; None: torch's default
    cuda_graphs: bool = True  # CUDA kernels: replay decode steps from graphs captured at start-up
    cuda_graph_max_seq_len: int = 8192  # longer contexts decode eagerly
    speculative: SpeculativeConfig | None = None  # None: one token a step per request

    def __post_init__(self) -> None:
        _choice("device", self.device.split(":")[0], _DEVICES)
        _choice("dtype", self.dtype, _DTYPES)
        _choice("kernels", self.kernels, KERNEL_KINDS)
        _choice("quantized_weights", self.quantized_weights, WEIGHT_FORMATS)
        _positive("block_size", self.block_size)
        _positive("max_num_seqs", self.max_num_seqs)
        _positive("max_num_batched_tokens", self.max_num_batched_tokens)
        if self.num_kv_blocks is not None:
            _positive("num_kv_blocks", self.num_kv_blocks)
        if self.max_model_len is not None:
            _positive("max_model_len", self.max_model_len)
        if self.num_threads is not None:
            _positive("num_threads", self.num_threads)
        _positive("cuda_graph_max_seq_len", self.cuda_graph_max_seq_len)
        if not self.kv_cache_gib > 0:
            raise ValueError(f"kv_cache_gib must be > 0, got {self.kv_cache_gib!r}")

    def replace(self, **changes: object) -> EngineConfig:
        """A new config with some fields changed (unknown names raise TypeError)."""
        return dataclasses.replace(self, **changes)


SPECULATIVE_METHODS = ("ngram", "suffix")  # suffix: ngram, then the outputs of recent requests


@dataclasses.dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding, with the names of vLLM's `--speculative-config` JSON: `method` proposes
    up to `num_speculative_tokens` draft tokens a step, which the model verifies in that step."""

    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_min: int = 2  # ngram: the shortest suffix of the sequence looked up
    prompt_lookup_max: int = 5  # ngram: the longest
    # No drafts in a step with more running requests than this: a batch that large is bound by
    # compute, not by reading the weights, so verifying drafts would cost what it saves.
    disable_by_batch_size: int = 4
    suffix_decoding_max_cached_requests: int = 1000  # suffix: how many finished outputs are kept

    def __post_init__(self) -> None:
        _choice("speculative method", self.method, SPECULATIVE_METHODS)
        for name in ("num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max", "disable_by_batch_size",
                     "suffix_decoding_max_cached_requests"):
            _positive(name, getattr(self, name))
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(f"prompt_lookup_min ({self.prompt_lookup_min}) is more than prompt_lookup_max "
                             f"({self.prompt_lookup_max})")

    @classmethod
    def from_json(cls, text: str) -> SpeculativeConfig:
        """Parse `--speculative-config`; an unknown key or a method not built here is a ValueError."""
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--speculative-config is not valid JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise ValueError("--speculative-config must be a JSON object")  # noqa: TRY004 (a usage error)
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"--speculative-config: unknown key(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known))}")
        return cls(**fields)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclasses.dataclass(frozen=True)
class FrontendConfig:
    """The HTTP frontend: where it listens, where workers find it, and its admission limits."""

    host: str = "127.0.0.1"
    port: int = 8000
    worker_address: str = "tcp://127.0.0.1:5557"  # workers connect here
    max_num_seqs: int = 128  # the engine's running set
    max_queued_requests: int = 256  # requests beyond that wait in line; more get 429
    max_body_bytes: int = 8 * 2**20
    shutdown_timeout_s: float = 5.0  # on SIGTERM: time to drain before in-flight requests are aborted
    curve_dir: str | None = None  # CURVE keys (`forge keys DIR`); None: plain sockets
    # A step running this long, or an engine silent this long, is stalled: /health answers 503
    # and `forge serve` kills and restarts the engine (its requests are replayed).
    engine_stall_timeout_s: float = 60.0
    api_keys: tuple[str, ...] = ()  # any of them as `Authorization: Bearer KEY`; () : no authentication
    request_timeout_s: float | None = None  # a request running longer ends with its text so far (None: never)
    max_queue_wait_s: float | None = None  # no first token after this long: 503, retry later (None: wait)

    def __post_init__(self) -> None:
        _positive("port", self.port)
        _positive("max_num_seqs", self.max_num_seqs)
        if self.max_queued_requests < 0:
            raise ValueError(f"max_queued_requests must be >= 0, got {self.max_queued_requests!r}")
        _positive("max_body_bytes", self.max_body_bytes)
        if any(not key or key != key.strip() for key in self.api_keys):
            raise ValueError("an API key must be non-empty, without surrounding spaces")
        for name in ("request_timeout_s", "max_queue_wait_s"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 (or None), got {getattr(self, name)!r}")
        if not self.engine_stall_timeout_s > 0:
            raise ValueError(f"engine_stall_timeout_s must be > 0, got {self.engine_stall_timeout_s!r}")

    @property
    def max_in_flight(self) -> int:
        return self.max_num_seqs + self.max_queued_requests


def engine_addresses(address: str) -> tuple[str, str]:
    """(router, pull) endpoints of the engine named by one address: tcp://H:P serves its ROUTER on
    P and its PULL on P+1; ipc://PATH on PATH and PATH-pull."""
    if address.startswith("tcp://"):
        host, _, port = address[len("tcp://"):].rpartition(":")
        if not port.isdigit() or not host:
            raise ValueError(f"engine address must look like tcp://HOST:PORT, got {address!r}")
        return address, f"tcp://{host}:{int(port) + 1}"
    if address.startswith("ipc://"):
        return address, address + "-pull"
    raise ValueError(f"engine address must start with tcp:// or ipc://, got {address!r}")
