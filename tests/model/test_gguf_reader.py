"""Forge's GGUF parser and dequantizers against the `gguf` package's own."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from engine.loaders import gguf_dequant
from engine.loaders.gguf_reader import GGUFFile


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
