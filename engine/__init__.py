"""Forge's engine. `from engine import InferenceEngine, SamplingParams`.

Rooms: scheduling/ (pure Python), runner/ (tensors in, tokens out), model/ (the forward pass and
its kernels' start-up choices), process/ (the engine process), loaders/ (model files). Heavy
modules (torch) load on first use, so the pure parts import cheaply.
"""

from __future__ import annotations

from typing import Any

from shared.sampling import SamplingParams

__all__ = ["Completion", "InferenceEngine", "SamplingParams"]


def __getattr__(name: str) -> Any:
    if name == "InferenceEngine":
        from engine.inference_engine import InferenceEngine
        return InferenceEngine
    if name == "Completion":
        from engine.completion import Completion
        return Completion
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
