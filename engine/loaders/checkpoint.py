"""What every loader returns: the architecture, the weights (lazily) and the tokenizer."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import torch

from engine.loaders.int4_groups import Int4Groups
from engine.model.model_config import ModelConfig
from shared.text.tokenizer import Tokenizer

WeightStream = Iterator[tuple[str, torch.Tensor | Int4Groups]]  # Hugging Face tensor names


class ModelLoadError(ValueError):
    """A model path or file that cannot be loaded; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    config: ModelConfig
    open_weights: Callable[[], WeightStream]  # called once, after the model is built
    tokenizer: Tokenizer | None  # None: random weights, no vocabulary
    description: str  # what was loaded, for the start-up log line
    int4_weights: frozenset[str] = frozenset()  # HF names the stream yields as Int4Groups
    quantized_weights: frozenset[str] = frozenset()  # HF names the file stores at 8 bits a value or fewer
