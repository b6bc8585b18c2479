"""Constrained output in the engine (the embedded SmolLM2): every token keeps to the grammar, under
greedy and seeded sampling, beside free requests in one batch, across a replay; a grammar that
cannot be enforced ends its request alone with an error."""

from __future__ import annotations

import json
import re

import llguidance

from engine import SamplingParams
from shared.sampling import FinishReason

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}}}
PHONE = r"[0-9]{3}-[0-9]{4}"  # llguidance reads \d as any script's digit (the frontend makes it ASCII)


def _json_grammar(schema: dict) -> str:
    return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema))


def _chat(engine, text: str) -> list[int]:
    return engine.apply_chat_template([{"role": "user", "content": text}], tokenize=True)


def test_json_schema_holds_greedy_and_sampled(smollm2):
    prompt = _chat(smollm2, "Describe a person as JSON with a name and an age.")
    outs = [smollm2.generate(prompt, SamplingParams(max_tokens=60, temperature=0.0, grammar=_json_grammar(PERSON)))]
    outs += smollm2.generate([prompt] * 4, SamplingParams(max_tokens=60, temperature=1.2, seed=7,
                                                          grammar=_json_grammar(PERSON)))
    for out in outs:
        assert out.finish_reason == "stop", out  # the grammar's end, not max_tokens
        value = json.loads(out.text)
        assert set(value) == {"name", "age"} and isinstance(value["name"], str) and isinstance(value["age"], int)


def test_regex_and_choice_hold_under_hot_sampling(smollm2):
    prompt = _chat(smollm2, "Tell me a phone number.")
    phone = llguidance.grammar_from("regex", PHONE)
    for out in smollm2.generate([prompt] * 6, SamplingParams(max_tokens=20, temperature=1.5, grammar=phone)):
        assert re.fullmatch(PHONE, out.text) and out.finish_reason == "stop", out
    choice = llguidance.grammar_from("choice", json.dumps(["red", "green", "blue"]))
    texts = {out.text for out in smollm2.generate([prompt] * 6, SamplingParams(
        max_tokens=20, temperature=1.5, grammar=choice))}
    assert texts <= {"red", "green", "blue"}, texts


def test_free_requests_in_a_constrained_batch_are_unchanged(smollm2):
    prompts = [_chat(smollm2, f"Write a sentence about the number {i}.") for i in range(3)]
    free = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    alone = smollm2.generate(prompts, free)
    constrained = SamplingParams(max_tokens=16, temperature=0.0, grammar=llguidance.grammar_from("regex", PHONE))
    rids = list(range(10_000, 10_006))
    for rid, prompt in zip(rids[:3], prompts):
        smollm2.core.add_request(rid, prompt, constrained)
    for rid, prompt in zip(rids[3:], prompts):
        smollm2.core.add_request(rid, prompt, free)
    finished = _run(smollm2.core)
    assert [finished[rid].output_ids for rid in rids[3:]] == [out.token_ids for out in alone]
    assert all(re.fullmatch(PHONE, smollm2.tokenizer.decode(finished[rid].output_ids)) for rid in rids[:3])


def test_a_replay_continues_the_grammar_where_it_was(smollm2):
    """A new engine given the tokens so far (as after a crash) finishes the same JSON greedily."""
    prompt = _chat(smollm2, "Describe a person as JSON with a name and an age.")
    params = SamplingParams(max_tokens=60, temperature=0.0, grammar=_json_grammar(PERSON))
    whole = smollm2.generate(prompt, params).token_ids
    smollm2.core.add_request(20_000, prompt, params, output_ids=whole[:5])
    assert _run(smollm2.core)[20_000].output_ids == whole
    # Tokens that break the grammar cannot be continued: that request alone ends with an error.
    smollm2.core.add_request(20_001, prompt, params, output_ids=smollm2.tokenizer.encode("[1, 2"))
    smollm2.core.add_request(20_002, prompt, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    finished = _run(smollm2.core)
    assert finished[20_001].finish_reason is FinishReason.ERROR and "grammar" in finished[20_001].error
    assert finished[20_002].finish_reason is FinishReason.LENGTH


def test_a_grammar_that_does_not_compile_fails_its_request_alone(smollm2):
    prompt = _chat(smollm2, "Hi")
    out = smollm2.generate(prompt, SamplingParams(max_tokens=8, grammar="start: missing_rule"))
    assert out.finish_reason == "error" and "grammar" in out.error


def test_an_abort_while_the_grammar_compiles_frees_everything(smollm2):
    grammar = _json_grammar({**PERSON, "title": "never compiled before"})
    smollm2.core.add_request(30_000, _chat(smollm2, "Hi"), SamplingParams(max_tokens=8, grammar=grammar))
    smollm2.core.abort(30_000)
    finished = _run(smollm2.core)
    assert finished[30_000].finish_reason is FinishReason.ABORT
    assert not smollm2.core.compiling and not smollm2.core.scheduler.requests


def _run(core) -> dict:
    """Step until the engine is idle -> {rid: finished Request}."""
    finished = {}
    while core.has_work():
        output = core.step()
        finished.update({r.rid: r for r in output.requests if r.is_finished})
    return finished


def test_a_grammar_past_llguidances_bounds_ends_its_request_with_a_short_error(smollm2):
    """Thousands of alternatives: the matcher gives up at the first token (each token's work is
    bounded); the request ends with a 400 whose message is one line, not the whole grammar."""
    choices = json.dumps([f"option number {i}" for i in range(3000)])
    out = smollm2.generate("Pick:", SamplingParams(max_tokens=4, grammar=llguidance.grammar_from("choice", choices)))
    assert out.finish_reason == "error" and "cannot be enforced" in out.error and len(out.error) < 400


def test_a_matcher_that_cannot_be_built_fails_its_request_not_the_engine(smollm2, monkeypatch):
    """Whatever building the matcher raises (here llguidance refusing the vocabulary) ends that
    request with an error; the engine goes on serving."""
    def refuse(*_args, **_kwargs):
        raise RuntimeError("the vocabulary is not one llguidance reads")

    grammar = llguidance.grammar_from("regex", "[0-9]+ never compiled before")
    monkeypatch.setattr(llguidance, "LLMatcher", refuse)
    out = smollm2.generate("Pick:", SamplingParams(max_tokens=4, grammar=grammar))
    monkeypatch.undo()
    assert out.finish_reason == "error" and "vocabulary" in out.error
    assert smollm2.generate("Pick:", SamplingParams(max_tokens=2, ignore_eos=True)).finish_reason == "length"
