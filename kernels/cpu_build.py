"""Builds the C kernels of kernels/csrc/cpu at first use and loads them with ctypes.

The machine's C compiler builds them for this very CPU (-march=native: its vector units), with
OpenMP; the library links the libgomp torch has already loaded (same soname), so the kernels run
on torch's thread team, not a second one that would fight it for the cores. Builds are cached by
the hash of the sources, flags, compiler and CPU, under $FORGE_CACHE_DIR (default
~/.cache/forge); no header of torch or Python is needed, so a build takes about a second.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable

SOURCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "cpu")
# -Wno-psabi: GCC notes, as an error under -Werror, that 64-byte vector arguments pass differently
# without AVX-512; the functions taking them are static, so no ABI is crossed (without the flag the
# library did not build at all on AVX2-only CPUs).
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11", "-Wall", "-Werror", "-Wno-psabi")


class BuildError(RuntimeError):
    """No C compiler, or the sources did not build: the reference kernels serve instead."""


@functools.cache
def library() -> ctypes.CDLL:
    """The built kernels (raises BuildError, with the compiler's words)."""
    import torch  # noqa: F401  torch's libgomp must be loaded first, so ours resolves to it

    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise BuildError("no C compiler (cc) on PATH")
    files = sorted(os.path.join(SOURCE_DIR, name) for name in os.listdir(SOURCE_DIR) if name.endswith((".c", ".h")))
    sources = [name for name in files if name.endswith(".c")]
    path = os.path.join(_cache_dir(), f"forge-cpu-{_build_key(compiler, files)}.so")
    if not os.path.exists(path):
        _compile(compiler, sources, path)
    return ctypes.CDLL(path)


def declared(name: str, *argtypes: type) -> Callable[[], ctypes._CFuncPtr]:
    """The library's C function `name` (returning int), looked up at first use with its argument
    types declared once (cheaper calls than wrapping each argument)."""
    @functools.cache
    def function() -> ctypes._CFuncPtr:
        found = getattr(library(), name)
        found.argtypes, found.restype = list(argtypes), ctypes.c_int
        return found
    return function


def _compile(compiler: str, sources: list[str], path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handle, partial = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    os.close(handle)
    try:
        result = subprocess.run([compiler, *FLAGS, "-o", partial, *sources, "-lm"], check=False, capture_output=True,
                                text=True, timeout=300)
        if result.returncode != 0:
            raise BuildError(f"the CPU kernels did not build:\n{result.stderr.strip()}")
        os.replace(partial, path)  # atomic: a concurrent builder never loads half a file
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _build_key(compiler: str, files: list[str]) -> str:
    """Sources and headers, flags, compiler and CPU: any change means a new build."""
    digest = hashlib.sha256()
    for source in files:
        with open(source, "rb") as f:
            digest.update(f.read())
    version = subprocess.run([compiler, "--version"], check=True, capture_output=True, text=True, timeout=60).stdout
    digest.update(" ".join(FLAGS).encode() + version.encode() + _cpu_identity().encode())
    return digest.hexdigest()[:16]


def _cpu_identity() -> str:
    """The CPU model and feature flags: -march=native builds are for this CPU only."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor()


def cache_root() -> str:
    """Where Forge keeps what it builds or measures once per machine: $FORGE_CACHE_DIR, else ~/.cache/forge."""
    return os.environ.get("FORGE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "forge")


def _cache_dir() -> str:
    return os.path.join(cache_root(), "cpu-kernels")
