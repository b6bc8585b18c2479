"""Forge's device ops. `load(kind)` picks one implementation once, at start-up.

`ref` (kernels/ref.py) is plain torch and runs everywhere; it is the spec and the CPU path.
"""

from __future__ import annotations

import types

KINDS = ("auto", "ref")


def load(kind: str = "auto") -> types.ModuleType:
    """The ops module for `kind`: `ref`, or `auto` (the best available; today always `ref`)."""
    if kind not in KINDS:
        raise ValueError(f"kernels must be one of {', '.join(KINDS)}; got {kind!r} "
                         "(the CUDA kernels are not part of this build yet)")
    from kernels import ref

    return ref
