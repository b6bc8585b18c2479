"""The project's own top-level packages must win over unrelated PyPI packages of the same name."""

from __future__ import annotations

import fnmatch
import json
import pathlib

import engine
import frontend
import kernels
import shared

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_top_level_packages_resolve_inside_the_repository():
    for package in (engine, frontend, kernels, shared):
        assert pathlib.Path(package.__file__).resolve().is_relative_to(REPO), package.__file__


def test_kernel_loader_rejects_unknown_kinds():
    import pytest

    assert kernels.load("auto") in (kernels.load("cpu"), kernels.load("ref"))  # cpu where a C compiler is
    with pytest.raises(ValueError, match="kernels must be one of"):
        kernels.load("triton")


def test_cuda_kernels_refuse_a_cpu_device_by_name():
    import pytest

    assert kernels.load("auto", "cpu").__name__ in ("kernels.cpu", "kernels.ref")  # never cuda
    with pytest.raises(ValueError, match="kernels=cuda needs a CUDA device"):
        kernels.load("cuda", "cpu")


def test_auto_kernels_fall_back_to_the_reference_where_cuda_kernels_do_not_cover_the_model(monkeypatch):
    import pytest

    from kernels import cuda, ref

    monkeypatch.setattr(kernels.torch.cuda, "is_available", lambda: True)  # as on a GPU machine with CuPy
    monkeypatch.setattr(kernels, "_cupy_imports", lambda: True)
    assert kernels.load("auto", "cuda", ("bfloat16", 128, 16)) is cuda
    assert kernels.load("auto", "cuda", ("bfloat16", 80, 16)) is ref  # no head_dim 80 kernel
    with pytest.raises(ValueError, match="head_dim=80"):
        kernels.load("cuda", "cuda", ("bfloat16", 80, 16))


def test_every_kernel_source_is_packaged():
    """A wheel carries kernels/csrc only through package-data: a source or header left out of it
    builds in the checkout and fails in an installed copy (the Docker image)."""
    data_line = next(line for line in (REPO / "pyproject.toml").read_text().splitlines()
                     if line.startswith("kernels = ["))  # [tool.setuptools.package-data] (no tomllib on 3.10)
    patterns = json.loads(data_line.split("=", 1)[1])
    kernels_dir = REPO / "kernels"
    sources = [p.relative_to(kernels_dir).as_posix() for p in (kernels_dir / "csrc").rglob("*") if p.is_file()]
    assert sources
    left_out = [s for s in sources if not any(fnmatch.fnmatch(s, pattern) for pattern in patterns)]
    assert not left_out, f"pyproject.toml's package-data misses {left_out}"
