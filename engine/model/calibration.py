"""The start-up measurements that pick a kernel by row count (int4_crossover.py: where 4-bit
layers stop beating their float copies; lm_head.py: where the C heads stop beating torch's),
taken once per machine, kernel build and model shape, and remembered under $FORGE_CACHE_DIR.

Measuring takes seconds (2.7 of a 6 s start of the embedded model on a 2-core Xeon), and one
machine gives one answer up to its noise. Remembered, every later start is that much faster and
chooses the same kernels, so a model's output no longer moves with the noise of its start (steps
of different row counts run different kernels, whose rounding differs). FORGE_RECALIBRATE=1
measures again, and remembers the new answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile

import torch
from torch import nn

from engine.model import int4_crossover, lm_head
from engine.model.int4_linear import Int4Linear
from kernels import cpu_build, cpu_matmul


@dataclasses.dataclass(frozen=True)
class Calibration:
    int4_rows: int | None = None  # mixed weights: 4-bit layers up to this many rows, float copies past it
    c_head_rows: int | None = None  # the C bfloat16 head up to this many rows
    int8_head_rows: int | None = None  # the 8-bit head (a head stored quantized) up to this many


def calibrate(model: nn.Module, weight_format: str, quantized_names: frozenset[str], c_matmuls: bool) -> str:
    """Set the row limits of `model`'s kernels, remembered or measured; returns the words for the
    engine's description ("" when nothing here applies)."""
    head = lm_head.plain_weight(model) if c_matmuls else None
    int8_head = head is not None and lm_head.stored_quantized(model, quantized_names)
    if weight_format != "mixed" and head is None:
        return ""
    key = _key(model, weight_format, head, int8_head)
    remembered = _load()
    found = None if os.environ.get("FORGE_RECALIBRATE") else _valid(remembered.get(key))
    if found is None:
        found = _measure(model, weight_format == "mixed", head, int8_head)
        _store(remembered, key, found)
    return _apply(model, found, head)


def _valid(entry: object) -> Calibration | None:
    """A remembered answer, if it is one (the file is ours, but may be damaged or from another version)."""
    fields = [field.name for field in dataclasses.fields(Calibration)]
    if not isinstance(entry, dict) or sorted(entry) != sorted(fields):
        return None
    if not all(value is None or (type(value) is int and 0 <= value <= 1 << 20) for value in entry.values()):
        return None
    return Calibration(**entry)


def _measure(model: nn.Module, mixed: bool, head: torch.Tensor | None, int8_head: bool) -> Calibration:
    int4_rows = min(int4_crossover.calibrate(model).values()) if mixed else None
    if head is None:
        return Calibration(int4_rows)
    timings: lm_head.Timings = {}  # each head kernel timed once for both choices
    c_head_rows = lm_head.calibrate(head, timings)
    int8_head_rows = lm_head.int8_rows(head, c_head_rows, timings) if int8_head else None
    return Calibration(int4_rows, c_head_rows, int8_head_rows)


def _apply(model: nn.Module, found: Calibration, head: torch.Tensor | None) -> str:
    words = ""
    if found.int4_rows is not None:
        int4_crossover.limit(model, found.int4_rows)
        words += f" (4-bit up to {found.int4_rows} rows)"
    if found.c_head_rows is not None:
        model.c_head_max_rows = found.c_head_rows
        words += f", C LM head up to {found.c_head_rows} rows"
    if found.int8_head_rows:
        model.int8_head, model.int8_head_max_rows = cpu_matmul.pack_int8(head), found.int8_head_rows
        words += f", 8-bit LM head up to {found.int8_head_rows} rows"
    return words


def _key(model: nn.Module, weight_format: str, head: torch.Tensor | None, int8_head: bool) -> str:
    """What the answer depends on: the kernel build (its name hashes sources, flags, compiler and
    CPU), torch and its thread count, and the shapes measured."""
    shapes = sorted((m.out_features, m.in_features) for m in model.modules()
                    if isinstance(m, Int4Linear) and m.weight is not None)
    material = [_kernel_build(), torch.__version__, torch.get_num_threads(),
                weight_format, shapes, None if head is None else list(head.shape), str(model.embed_tokens.weight.dtype),
                int8_head]
    return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:24]


def _kernel_build() -> str:
    """The C kernels' library name (its build key), or "none" where they do not build."""
    try:
        return os.path.basename(cpu_build.library()._name)
    except Exception:  # noqa: BLE001 (BuildError or no compiler: the torch kernels were measured)
        return "none"


def _path() -> str:
    return os.path.join(cpu_build.cache_root(), "calibration.json")


def _load() -> dict[str, dict]:
    """The remembered answers ({} if none, or if the file is unreadable: then they are measured)."""
    try:
        with open(_path()) as f:
            remembered = json.load(f)
    except (OSError, ValueError):
        return {}
    return remembered if isinstance(remembered, dict) else {}


def _store(remembered: dict[str, dict], key: str, found: Calibration) -> None:
    """Add one answer to those read at start (written whole and renamed into place: a concurrent
    reader sees the old file or the new, and of two concurrent writers one answer may be lost, to
    be measured again)."""
    remembered[key] = dataclasses.asdict(found)
    path = _path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), delete=False, suffix=".tmp") as f:
            json.dump(remembered, f)
        os.replace(f.name, path)
    except OSError:
        pass  # a read-only home: measured at every start, as before
