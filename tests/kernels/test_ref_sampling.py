"""kernels.ref sampling and penalties."""

from __future__ import annotations

import torch

import kernels

ops = kernels.load("ref")


def columns(rows: int, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0, offset=0):
    return (torch.full((rows,), temperature), torch.full((rows,), top_k, dtype=torch.int64),
            torch.full((rows,), top_p), torch.full((rows,), min_p),
            torch.full((rows,), seed, dtype=torch.int64), torch.full((rows,), offset, dtype=torch.int64))


def test_temperature_zero_is_argmax():
    logits = torch.randn(5, 100)
    assert torch.equal(ops.sample(logits, *columns(5, temperature=0.0)), logits.argmax(-1))


def test_top_k_one_and_tiny_top_p_are_argmax():
    logits = torch.randn(6, 100)
    for rows_seed in range(3):
        assert torch.equal(ops.sample(logits, *columns(6, top_k=1, seed=rows_seed)), logits.argmax(-1))
        assert torch.equal(ops.sample(logits, *columns(6, top_p=1e-6, seed=rows_seed)), logits.argmax(-1))


def test_top_k_restricts_to_the_k_best():
    logits = torch.randn(1, 50).repeat(400, 1)
    draws = ops.sample(logits, *columns(400, top_k=3, temperature=5.0, seed=7)[:4],
                       torch.arange(400, dtype=torch.int64), torch.zeros(400, dtype=torch.int64))
    allowed = set(logits[0].topk(3).indices.tolist())
    assert set(draws.tolist()) == allowed  # every one of the 3 shows up, nothing else


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log().repeat(300, 1)
    seeds = torch.arange(300, dtype=torch.int64)
    t, k, p, m, _, o = columns(300, top_p=0.7)
    assert set(ops.sample(logits, t, k, p, m, seeds, o).tolist()) == {0, 1}  # 0.5 < 0.7 <= 0.8


def test_min_p_drops_unlikely_tokens():
    probs = torch.tensor([[0.6, 0.3, 0.06, 0.04]])
    logits = probs.log().repeat(300, 1)
    t, k, p, m, _, o = columns(300, min_p=0.09)  # threshold 0.054: drops only 0.04
    assert set(ops.sample(logits, t, k, p, m, torch.arange(300, dtype=torch.int64), o).tolist()) == {0, 1, 2}


def test_draws_follow_the_distribution():
    probs = torch.tensor([0.7, 0.2, 0.1])
    logits = probs.log().repeat(3000, 1)
    t, k, p, m, _, o = columns(3000)
    draws = ops.sample(logits, t, k, p, m, torch.arange(3000, dtype=torch.int64), o)
    freq = torch.bincount(draws, minlength=3).float() / 3000
    torch.testing.assert_close(freq, probs, atol=0.03, rtol=0)


def test_a_rows_draw_depends_only_on_its_seed_and_offset():
    logits = torch.randn(8, 1000)
    seeds = torch.arange(8, dtype=torch.int64) * 11
    offsets = torch.arange(8, dtype=torch.int64)
    t, k, p, m, _, _ = columns(8)
    batch = ops.sample(logits, t, k, p, m, seeds, offsets)
    for row in range(8):
        alone = ops.sample(logits[row:row + 1], t[:1], k[:1], p[:1], m[:1], seeds[row:row + 1],
                           offsets[row:row + 1])
        assert int(alone) == int(batch[row])
    other_offsets = ops.sample(logits, t, k, p, m, seeds, offsets + 1)
    assert not torch.equal(other_offsets, batch)  # a new step draws anew


def test_penalties_follow_the_openai_and_vllm_rules():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    prompt_mask = torch.tensor([[True, True, False, False]])
    output_counts = torch.tensor([[0, 0, 3, 0]], dtype=torch.int32)
    got = ops.apply_penalties(logits, prompt_mask, output_counts, torch.tensor([2.0]), torch.tensor([0.5]),
                              torch.tensor([0.1]))
    # token 0: seen in prompt, positive -> /2; token 1: negative -> *2;
    # token 2: output x3 -> /2, then -0.1*3 - 0.5; token 3 untouched.
    expected = torch.tensor([[1.0, -4.0, 0.5 - 0.3 - 0.5, 0.5]])
    torch.testing.assert_close(got, expected)


def test_token_bitmask_keeps_exactly_the_set_bits():
    """Against llguidance's own numpy reading of the same bits (its layout is the contract)."""
    import numpy as np
    from llguidance.numpy import apply_token_bitmask_inplace

    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 70, generator=g)  # 70 tokens: the last word is part padding
    bitmask = torch.randint(-2**31, 2**31 - 1, (3, 3), generator=g, dtype=torch.int64).int()
    expected = logits.numpy().copy()
    apply_token_bitmask_inplace(expected, bitmask.numpy())
    got = ops.apply_token_bitmask(logits, bitmask)
    assert np.array_equal(got.numpy(), expected)
    assert torch.equal(torch.isinf(got), torch.from_numpy(np.isinf(expected)))


def test_the_cpu_token_bitmask_equals_the_reference():
    from kernels import cpu

    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 1000, generator=g)
    bitmask = torch.randint(-2**31, 2**31 - 1, (4, 32), generator=g, dtype=torch.int64).int()
    bitmask[0], bitmask[1] = -1, 0
    assert torch.equal(cpu.apply_token_bitmask(logits, bitmask), ops.apply_token_bitmask(logits, bitmask))
