"""The engine process: build the engine from its options, announce it, serve it until Shutdown.

`forge engine` runs this, and so does `forge serve` for its engine child, again after a crash:
a restart builds exactly what a start builds. Each start draws a new instance number; workers
that see it replay their in-flight requests to it.
"""

from __future__ import annotations

import os
import secrets
import sys
from typing import Any

from engine.inference_engine import InferenceEngine
from engine.process.loop import EngineLoop
from shared.config import engine_addresses
from shared.messages import EngineReady
from shared.text import tool_call_format

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"


def serve(model: str | None, options: dict[str, Any], served_model_name: str | None, address: str,
          curve_dir: str | None, tool_call_parser: str | None = None) -> None:
    """Load `model` (None: the embedded default) with EngineConfig `options`, then serve it on
    `address` (the ROUTER there, the PULL on the next port or path). `tool_call_parser`: the
    tool-call format to announce (None: the one the chat template writes)."""
    engine = InferenceEngine.from_pretrained(model, **options)
    name = served_model_name or os.path.basename(os.path.normpath(model or DEFAULT_MODEL_NAME))
    router, pull = engine_addresses(address)
    ready = announcement(engine, name, tool_call_parser)
    print(f"forge-engine: {name}: {engine.description}; {ready.num_kv_blocks} KV blocks of {ready.block_size} "
          f"tokens, max model length {ready.max_model_len}", file=sys.stderr, flush=True)
    EngineLoop(engine.core, ready, pull, router, curve_dir).run()


def announcement(engine: InferenceEngine, name: str, tool_call_parser: str | None = None) -> EngineReady:
    """What the engine tells each client that says Hello: the model, its limits, its tokenizer and
    how it writes tool calls."""
    tokenizer = engine.tokenizer
    if tokenizer is None:
        raise ValueError("serving needs a model with a tokenizer")
    manager = engine.core.scheduler.block_manager
    return EngineReady(name, manager.block_size, manager.num_blocks, engine.max_model_len,
                       tokenizer.backend.to_str(), tokenizer.chat_template, tokenizer.bos_token,
                       tokenizer.eos_token, instance=1 + secrets.randbits(62),
                       tool_call_format=tool_call_parser or tool_call_format.detect(tokenizer.chat_template))
