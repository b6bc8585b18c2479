"""Worker: what the frontend knows of one tokenizer worker process (for routing and /metrics)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Worker:
    worker_id: int
    identity: bytes
    model: str
    max_model_len: int
    last_seen_s: float
    num_in_flight: int = 0
    num_requests_total: int = 0
    cpu_seconds: float = 0.0
    sees_engine: bool = False  # its last heartbeat carried live engine stats
    tool_call_format: str = ""  # how the engine's model writes tool calls ("" none)
