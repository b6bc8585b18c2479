"""The session stack drafts with n-gram lookup (tests/e2e/conftest.py): text the model copies
streams the same text, token counts and stop strings as the in-process engine without drafts,
and /metrics counts the drafts."""

from __future__ import annotations

from engine import SamplingParams
from tests.e2e.conftest import MODEL

COPY = [{"role": "user", "content": "Repeat this list exactly, once: apples, pears, plums, figs, dates, limes, "
                                    "kiwis, mangos, lemons, grapes."}]


def test_a_copied_text_streams_as_without_drafts_and_drafts_are_counted(client, stack, smollm2):
    before = stack.metric("forge:spec_decode_num_accepted_tokens_total")
    prompt = smollm2.apply_chat_template(COPY, tokenize=True)
    expected = smollm2.generate(prompt, SamplingParams(max_tokens=40, temperature=0.0))
    stream = client.chat.completions.create(model=MODEL, messages=COPY, max_tokens=40, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert chunks[-1].usage.completion_tokens == len(expected.token_ids)
    # the engine's counters reach /metrics with its next stats, within about a second
    assert stack.wait_for(lambda: stack.metric("forge:spec_decode_num_accepted_tokens_total") > before, timeout_s=5)
    assert stack.metric("forge:spec_decode_num_draft_tokens_total") >= stack.metric(
        "forge:spec_decode_num_accepted_tokens_total")


def test_a_stop_string_inside_an_accepted_draft_ends_the_text_and_the_count_there(client, smollm2):
    prompt = smollm2.apply_chat_template(COPY, tokenize=True)
    expected = smollm2.generate(prompt, SamplingParams(max_tokens=40, temperature=0.0))
    stop = "dates"
    assert stop in expected.text, expected.text
    # the tokens up to the one that completes the stop string: what a server without drafts counts
    num_tokens = next(n for n in range(1, len(expected.token_ids) + 1)
                      if stop in smollm2.tokenizer.decode(expected.token_ids[:n]))
    response = client.chat.completions.create(model=MODEL, messages=COPY, max_tokens=40, temperature=0, stop=[stop])
    assert response.choices[0].message.content == expected.text[:expected.text.index(stop)]
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens == num_tokens
