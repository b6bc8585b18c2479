"""Every CUDA module the engine can ask for builds, without a GPU; and kernels.cuda mirrors
kernels.ref function for function."""

from __future__ import annotations

import inspect

import pytest

from kernels import cuda, ref, sources


@pytest.mark.parametrize("architecture", sources.ARCHITECTURES)
@pytest.mark.parametrize("variant", sources.variants(), ids=lambda v: f"{v.source}{dict(v.defines)}")
def test_every_kernel_variant_compiles_with_nvrtc(variant, architecture):
    cubin = sources.nvrtc_compile(variant, architecture)
    assert cubin[:4] == b"\x7fELF"  # a loadable device binary, built by ptxas inside NVRTC


def test_a_kernel_that_does_not_build_fails_with_the_compiler_log(monkeypatch):
    monkeypatch.setattr(sources, "read", lambda source: "extern \"C\" __global__ void k() { undeclared(); }")
    with pytest.raises(RuntimeError, match="undeclared"):
        sources.nvrtc_compile(sources.STORE_KV, "sm_90")


def test_unsupported_constants_are_refused_by_name():
    with pytest.raises(ValueError, match="head_dim=80"):
        sources.attention_variant("bfloat16", 80, 16)


def public_functions(module) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(f) for name, f in vars(module).items()
            if inspect.isfunction(f) and not name.startswith("_") and f.__module__ == module.__name__}


def test_cuda_ops_have_the_reference_names_and_signatures():
    ops = public_functions(ref)
    assert set(ops) == {"store_kv", "plan_attention", "paged_attention", "apply_penalties", "sample"}
    mirrored = {name: sig for name, sig in public_functions(cuda).items() if name in ops}
    assert {name: str(sig) for name, sig in mirrored.items()} == {name: str(sig) for name, sig in ops.items()}
