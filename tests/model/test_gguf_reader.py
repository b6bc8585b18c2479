"""Forge's GGUF parser and dequantizers against the `gguf` package's own."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from engine.loaders import gguf_dequant
from engine.loaders.gguf_reader import GGUFFile
from tests.model.gguf_blocks import finite_scales


@pytest.fixture(scope="module")
def both_readers(gguf_path):
    return GGUFFile(gguf_path), gguf.GGUFReader(gguf_path)


def test_metadata_matches_the_gguf_package(both_readers):
    ours, theirs = both_readers
    expected = {k: f.contents() for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert ours.metadata.keys() == expected.keys()
    for key, value in expected.items():
        assert ours.metadata[key] == value, key


def test_tensor_directory_matches_the_gguf_package(both_readers):
    ours, theirs = both_readers
    assert [(t.name, t.qtype, t.shape, t.offset, t.num_bytes) for t in ours.tensors] == [
        (t.name, t.tensor_type, tuple(int(d) for d in reversed(t.shape)), t.data_offset, t.n_bytes)
        for t in theirs.tensors]


def test_every_tensor_of_the_model_dequantizes_bit_identically(both_readers):
    ours, theirs = both_readers
    for mine, reference in zip(ours.tensors, theirs.tensors):
        got = gguf_dequant.dequantize(ours.tensor_bytes(mine), mine.qtype, mine.shape).float()
        expected = torch.from_numpy(gguf.quants.dequantize(reference.data, reference.tensor_type).copy())
        assert torch.equal(got, expected.reshape(got.shape)), mine.name


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1,
                                   gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F16,
                                   gguf.GGMLQuantizationType.BF16])
def test_quantized_random_tensors_dequantize_bit_identically(qtype):
    values = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    packed = gguf.quants.quantize(values, qtype)
    got = gguf_dequant.dequantize(packed, qtype, (64, 256)).float()
    expected = torch.from_numpy(gguf.quants.dequantize(packed, qtype).copy()).float()
    assert torch.equal(got, expected)


KQUANTS = [gguf.GGMLQuantizationType.Q2_K, gguf.GGMLQuantizationType.Q3_K, gguf.GGMLQuantizationType.Q4_K,
           gguf.GGMLQuantizationType.Q5_K, gguf.GGMLQuantizationType.Q6_K, gguf.GGMLQuantizationType.Q5_0,
           gguf.GGMLQuantizationType.Q5_1]


@pytest.mark.parametrize("qtype", KQUANTS, ids=lambda t: t.name)
def test_k_quants_and_q5_dequantize_bit_identically(qtype):
    """Random block bytes (any bytes are a block; the gguf package has no quantizer for most of
    these), with every float16 scale made finite so the comparison is exact."""
    values_per_block, bytes_per_block = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(int(qtype))
    blocks = rng.integers(0, 256, size=(512, bytes_per_block), dtype=np.uint8)
    blocks = finite_scales(blocks, qtype)
    expected = torch.from_numpy(gguf.quants.dequantize(blocks, qtype).copy()).reshape(512, values_per_block)
    got = gguf_dequant.dequantize(blocks, qtype, (512, values_per_block))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("qtype", gguf_dequant.INT4_TYPES, ids=lambda t: t.name)
def test_int4_groups_hold_the_same_values_row_by_row(qtype):
    """What a kept-4-bit layer receives: codes and per-32 scales/mins that dequantize bit-identically
    to the gguf package, in the tensor's own row order."""
    values_per_block, bytes_per_block = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = 48, 2 * values_per_block
    rng = np.random.default_rng(int(qtype))
    if qtype == gguf.GGMLQuantizationType.Q4_K:
        blocks = finite_scales(rng.integers(0, 256, size=(rows * 2, bytes_per_block), dtype=np.uint8), qtype)
    else:
        blocks = gguf.quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), qtype)
    groups = gguf_dequant.int4_groups(blocks, qtype, (rows, cols))
    expected = torch.from_numpy(gguf.quants.dequantize(blocks, qtype).copy()).reshape(rows, cols)
    assert groups.codes.shape == (rows, cols) and groups.scales.shape == (rows, cols // 32)
    assert int(groups.codes.max()) <= 15
    assert torch.equal(groups.dequantize(), expected)
    torch_form = (groups.codes.float() - 8).view(rows, -1, 32) * groups.scales[..., None] \
        + groups.zero_points()[..., None]  # torch's int4 layout: (code - 8) * scale + zero
    assert torch.allclose(torch_form.view(rows, cols), expected, atol=1e-6, rtol=1e-5)


def test_a_tensor_that_is_not_rows_of_4_bit_groups_is_refused():
    blocks = gguf.quants.quantize(np.ones((4, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    with pytest.raises(ValueError, match="not rows of 4-bit groups"):
        gguf_dequant.int4_groups(blocks, gguf.GGMLQuantizationType.Q8_0, (4, 64))
