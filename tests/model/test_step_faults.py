"""One bad request fails alone: a step that raises is run again in halves down to the request
that fails by itself; that one ends with an error naming the cause, the others go on with the
tokens they would have had, and its KV blocks are freed."""

from __future__ import annotations

import pytest

from engine import SamplingParams

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.fixture
def engine(smollm2):
    yield smollm2
    smollm2.core.runner.inject_fault = None


def _fail_when_present(prompt: list[int], times: int | None = None):
    """A fault hook raising for every batch that holds the request of `prompt` (`times`: only that often)."""
    left = [times]

    def hook(batch) -> None:
        if any(r.token_ids[:len(prompt)] == prompt for r in batch.requests) and left[0] != 0:
            if left[0] is not None:
                left[0] -= 1
            raise RuntimeError("injected device fault")
    return hook


def test_a_request_that_fails_every_step_ends_alone_with_the_cause(engine, smollm2_prompts):
    prompts = smollm2_prompts[:5]
    reference = engine.generate(prompts, GREEDY)
    engine.core.runner.inject_fault = _fail_when_present(prompts[2])
    results = engine.generate(prompts, GREEDY)
    bad = results[2]
    assert bad.finish_reason == "error" and "RuntimeError: injected device fault" in bad.error
    for i in (0, 1, 3, 4):
        assert results[i].finish_reason == "length" and results[i].token_ids == reference[i].token_ids, i
    scheduler = engine.core.scheduler
    assert not scheduler.running and not scheduler.waiting and scheduler.block_manager.usage == 0.0
    scheduler.check_invariants()


def test_a_fault_that_passes_on_the_retry_fails_no_request(engine, smollm2_prompts):
    prompts = smollm2_prompts[:4]
    reference = engine.generate(prompts, GREEDY)
    engine.core.runner.inject_fault = _fail_when_present(prompts[1], times=1)
    results = engine.generate(prompts, GREEDY)
    assert [r.token_ids for r in results] == [r.token_ids for r in reference]
    assert all(r.finish_reason == "length" for r in results)
