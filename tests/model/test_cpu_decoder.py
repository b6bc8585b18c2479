"""Decode steps through the C decoder (engine/model/cpu_decode.py, kernels/cpu_decoder.py): against
transformers along its greedy path, against Forge's own layer-by-layer path, and the steps it leaves
to that path."""

from __future__ import annotations

import types

import pytest
import torch

from engine import SamplingParams
from engine.model import cpu_decode
from kernels import cpu_matmul

pytestmark = pytest.mark.skipif(not cpu_matmul.available(), reason="no C compiler, or no AVX-512 VNNI and BF16")

BF16_TIE_MARGIN = 0.25  # as tests/model/test_int4_weights.py: bfloat16 activations flip closer calls


@pytest.fixture(scope="module")
def int4_engine(smollm2_int4_bf16):
    """bfloat16, every layer 4-bit (no float copy, so no row limit): the C decoder's model."""
    return smollm2_int4_bf16


def test_a_4_bit_bfloat16_model_on_the_cpu_kernels_decodes_through_c(int4_engine, smollm2):
    model = int4_engine.core.runner.model
    assert model.cpu_decoder is not None and model.cpu_decoder_max_rows == cpu_decode.NO_ROW_LIMIT
    assert ", C decoder, " in int4_engine.description
    float32_model = smollm2.core.runner.model  # the session's float32 engine: nothing 4-bit, no C decoder
    assert float32_model.cpu_decoder is None and cpu_decode.build(float32_model) is None


@pytest.mark.slow
def test_greedy_decoding_follows_transformers_until_a_near_tie(int4_engine, hf_greedy_runs):
    """Each golden prompt decoded greedily, 24 tokens (all but the first from decode steps, batch of
    one): the same tokens as transformers' float32 greedy run, until a step where the two part,
    which must be one whose top-2 gap is under BF16_TIE_MARGIN (after it the contexts differ)."""
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    compared = 0
    for prompt, tokens, margins, _ in hf_greedy_runs:
        got = int4_engine.generate(prompt, params).token_ids
        same = next((i for i in range(24) if got[i] != tokens[i]), 24)
        if same < 24:
            assert margins[same] < BF16_TIE_MARGIN, f"another token at decisive step {same}"
        compared += same
    assert compared >= 60, "too many near-ties to make a claim"


def test_c_and_layer_by_layer_decoding_agree_on_a_ragged_batch(int4_engine, smollm2_prompts):
    """Several rows at once (the kernels' threaded paths), prompts of different lengths: the same
    greedy tokens, and log-probabilities within bfloat16 rounding of SwiGLU's exp."""
    model = int4_engine.core.runner.model
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, logprobs=1)
    prompts = smollm2_prompts[:6]
    through_c = int4_engine.generate(prompts, params)
    decoder = model.cpu_decoder
    model.cpu_decoder = None
    try:
        layer_by_layer = int4_engine.generate(prompts, params)
    finally:
        model.cpu_decoder = decoder
    for c, torch_path in zip(through_c, layer_by_layer):
        assert c.token_ids == torch_path.token_ids
        gaps = [abs(a.logprob - b.logprob) for a, b in zip(c.logprobs, torch_path.logprobs)]
        assert max(gaps) < 0.05


def test_steps_the_c_decoder_leaves_to_the_layer_by_layer_path(int4_engine):
    model = int4_engine.core.runner.model

    def plan(decode_rows: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(decode_rows=torch.arange(decode_rows))

    assert cpu_decode.takes(model, plan(4), num_tokens=4)
    assert not cpu_decode.takes(model, plan(3), num_tokens=20), "a prefill chunk in the step"
    assert not cpu_decode.takes(model, types.SimpleNamespace(decode_rows=None), num_tokens=20), "prefill only"
    assert not cpu_decode.takes(model, types.SimpleNamespace(), num_tokens=1), "another kernel set's plan"
    limit = model.cpu_decoder_max_rows
    model.cpu_decoder_max_rows = 8  # as "mixed" weights set it: past it, the float copy
    try:
        assert cpu_decode.takes(model, plan(8), num_tokens=8)
        assert not cpu_decode.takes(model, plan(9), num_tokens=9)
    finally:
        model.cpu_decoder_max_rows = limit


def test_a_q8_0_head_is_multiplied_8_bit_up_to_its_calibrated_rows(int4_engine, smollm2):
    """The embedded GGUF stores the (tied) embedding as Q8_0: the head gets an 8-bit copy, used up
    to the rows where it wins on this machine (possibly none: then the engine says nothing of it);
    its logits are the stored Q8_0 weights' within bfloat16 rounding."""
    from kernels import cpu_matmul

    model = int4_engine.core.runner.model
    calibrated = model.int8_head_max_rows if model.int8_head is not None else 0
    assert ("8-bit LM head" in int4_engine.description) == (calibrated > 0)
    if calibrated:
        assert f"8-bit LM head up to {calibrated} rows" in int4_engine.description
    saved = model.int8_head, model.int8_head_max_rows
    model.int8_head, model.int8_head_max_rows = cpu_matmul.pack_int8(model.embed_tokens.weight), 4
    try:
        hidden = torch.randn(4, model.config.hidden_size).bfloat16()
        weight = cpu_matmul.dequantize_int8(*model.int8_head).double()  # [vocab, hidden]
        expected = hidden.double() @ weight.t()
        got = model.compute_logits(hidden)
    finally:
        model.int8_head, model.int8_head_max_rows = saved
    assert (got.double() - expected).abs().max() <= 2 ** -8 * expected.abs().max()
    # the 8-bit copy is the bfloat16 embedding's values to within that copy's own rounding
    embedding = model.embed_tokens.weight.double()
    assert (weight - embedding).abs().max() <= 2 ** -8 * embedding.abs().max()
    assert smollm2.core.runner.model.int8_head is None  # float32: the head stays float32
