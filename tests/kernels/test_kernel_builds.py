"""Every CUDA module the engine can ask for builds, without a GPU; and kernels.cuda mirrors
kernels.ref function for function."""

from __future__ import annotations

import concurrent.futures
import inspect
import pathlib
import shutil
import subprocess

import pytest

from kernels import cpu, cuda, ref, sources

NVCC_VARIANTS = [sources.STORE_KV, sources.SAMPLING, *(sources.attention_variant(d, 128, 16) for d in sources.SCALARS)]
NEWEST, *OLDER = sorted(sources.ARCHITECTURES, key=lambda arch: int(arch.removeprefix("sm_")), reverse=True)
# On the newest architecture, every value of each attention constant with every dtype: each head_dim
# at block 16, each block size at head_dim 128 (a head_dim and a block size meet only in sizes,
# not in code paths); one per source and dtype on the older ones. All 27 x 2 took 70 s of a 2-core run.
COVERING = {sources.attention_variant(d, h, 16) for d in sources.SCALARS for h in sources.HEAD_DIMS} | {
    sources.attention_variant(d, 128, b) for d in sources.SCALARS for b in sources.BLOCK_SIZES}
NVRTC_BUILDS = ([(v, NEWEST) for v in sources.variants() if v.source != "paged_attention.cu" or v in COVERING]
                + [(v, a) for a in OLDER for v in NVCC_VARIANTS])


def _failures(build, jobs) -> list[str]:
    """Run `build(job)` for every job on both cores (NVRTC and nvcc work outside the GIL);
    returns one line per job that raised or built nothing loadable."""
    def attempt(job) -> str | None:
        try:
            return None if build(job)[:4] == b"\x7fELF" else f"{job}: not a device binary"
        except Exception as exc:  # noqa: BLE001 (each failure is reported with its variant)
            return f"{job}: {exc}"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return [line for line in pool.map(attempt, jobs) if line is not None]


def test_kernel_variants_compile_with_nvrtc():
    """Every source, dtype, head_dim and block size on the newest architecture (see COVERING); one
    variant per source and dtype on the older ones."""
    assert not _failures(lambda job: sources.nvrtc_compile(*job), NVRTC_BUILDS)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on this machine")
def test_kernels_compile_with_the_machines_nvcc_too(tmp_path: pathlib.Path):
    """A second toolchain (CI's nvcc is CUDA 13, as are the lent GPU machines; NVRTC above is 12),
    on the newest architecture."""
    def build(job: tuple[int, sources.Variant]) -> bytes:
        index, variant = job
        directory = tmp_path / str(index)
        directory.mkdir()
        source = directory / variant.source
        source.write_text(sources.read(variant.source))
        built = subprocess.run(["nvcc", "-cubin", f"-arch={NEWEST}", "-Werror", "all-warnings",
                                *variant.options(), str(source), "-o", str(directory / "out.cubin")],
                               capture_output=True, text=True, check=False)
        if built.returncode != 0:
            raise RuntimeError(built.stderr)
        return (directory / "out.cubin").read_bytes()
    assert not _failures(build, list(enumerate(NVCC_VARIANTS)))


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


def test_cuda_and_cpu_ops_have_the_reference_names_and_signatures():
    ops = public_functions(ref)
    assert set(ops) == {"store_kv", "plan_attention", "paged_attention", "apply_penalties", "apply_token_bitmask",
                        "sample", "rms_norm"}
    mirrored = {name: sig for name, sig in public_functions(cuda).items() if name in ops}
    assert {name: str(sig) for name, sig in mirrored.items()} == {name: str(sig) for name, sig in ops.items()
                                                                   if name in mirrored}
    for module in (cuda, cpu):  # their own functions, or the reference's re-exported
        params = {name: [(p.name, p.default) for p in inspect.signature(getattr(module, name)).parameters.values()]
                  for name in ops}
        assert params == {name: [(p.name, p.default) for p in sig.parameters.values()] for name, sig in ops.items()}