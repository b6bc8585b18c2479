"""The OpenAI API through the real processes, driven by the official openai client."""

from __future__ import annotations

import json

import pytest

from engine import SamplingParams
from tests.e2e.conftest import MODEL

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_greedy_equals_the_in_process_engine(client, smollm2):
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)
    prompt = smollm2.apply_chat_template(QUESTION, tokenize=True)
    expected = smollm2.generate(prompt, SamplingParams(max_tokens=24, temperature=0.0))
    choice = response.choices[0]
    assert choice.message.content == expected.text and choice.message.role == "assistant"
    assert choice.finish_reason == expected.finish_reason
    assert response.usage.prompt_tokens == len(prompt)
    assert response.usage.completion_tokens == len(expected.token_ids)
    assert response.id.startswith("chatcmpl-") and response.model == MODEL


def test_completion_greedy_equals_the_in_process_engine(client, smollm2):
    response = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=16, temperature=0)
    expected = smollm2.generate("The quick brown fox", SamplingParams(max_tokens=16, temperature=0.0))
    assert response.choices[0].text == expected.text
    assert response.choices[0].finish_reason == "length" and response.usage.completion_tokens == 16


def test_token_id_prompts_and_echo(client, smollm2):
    ids = smollm2.tokenizer.encode("Once upon a time")
    response = client.completions.create(model=MODEL, prompt=ids, max_tokens=5, temperature=0, echo=True)
    expected = smollm2.generate(ids, SamplingParams(max_tokens=5, temperature=0.0))
    assert response.choices[0].text == "Once upon a time" + expected.text


def test_streaming_chat_matches_non_streaming_and_ends_with_usage(client):
    full = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=20, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_completion(client):
    full = client.completions.create(model=MODEL, prompt="def add(a, b):", max_tokens=12, temperature=0)
    stream = client.completions.create(model=MODEL, prompt="def add(a, b):", max_tokens=12, temperature=0,
                                       stream=True)
    assert "".join(c.choices[0].text for c in stream) == full.choices[0].text


def test_n_choices_with_a_seed_are_distinct_and_reproducible(client):
    def ask():
        return client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=1.0,
                                              n=2, seed=42)

    first, second = ask(), ask()
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    assert first.choices[0].message.content != first.choices[1].message.content
    assert first.usage.prompt_tokens == second.usage.prompt_tokens  # counted once for both choices


def test_stop_strings_cut_the_text(client):
    plain = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0)
    assert "7" in plain.choices[0].text
    stopped = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0,
                                        stop=["7"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == plain.choices[0].text.split("7")[0]
    streamed = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0,
                                         stop=["7"], stream=True)
    assert "".join(c.choices[0].text for c in streamed) == stopped.choices[0].text


def test_chat_logprobs(client):
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, temperature=0,
                                              logprobs=True, top_logprobs=3)
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    assert "".join(item.token for item in content) == response.choices[0].message.content
    for item in content:
        assert len(item.top_logprobs) == 3 and item.top_logprobs[0].token == item.token


def test_models_health_and_metrics(stack):
    status, body = stack.get("/v1/models")
    assert status == 200 and json.loads(body)["data"][0]["id"] == MODEL
    assert stack.get("/health")[0] == 200
    _, text = stack.get("/metrics")
    for name in ("forge:num_requests_running", "forge:kv_cache_usage_perc", "forge:prompt_tokens_total",
                 "forge:generation_tokens_total", "forge:prefix_cache_queries_total", "forge:num_preemptions_total",
                 "forge:time_to_first_token_seconds_bucket", "forge:e2e_request_latency_seconds_count",
                 "forge:tokenizer_workers", 'forge:process_cpu_seconds_total{role="engine"}'):
        assert name in text.decode(), name


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    ({"model": MODEL, "prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "frobnicate": True}, 400, "frobnicate"),
    ({"model": MODEL, "prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "temperature": -0.1}, 400, "temperature"),
    ({"model": MODEL, "prompt": "x", "n": 0}, 400, "n"),
    ({"model": MODEL, "prompt": ""}, 400, "prompt"),
    ({"model": "gpt-17", "prompt": "x"}, 404, "model"),
    ({"model": MODEL, "prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options"),
])
def test_bad_input_gets_a_clear_error(stack, body, status, param):
    got_status, got = stack.post("/v1/completions", body)
    assert got_status == status
    assert got["error"]["code"] == status and got["error"]["param"] == param and got["error"]["message"]


def test_prompt_longer_than_the_context_names_the_limit(stack):
    status, body = stack.post("/v1/completions", {"model": MODEL, "prompt": "hello " * 9000, "max_tokens": 4})
    assert status == 400 and "8192" in body["error"]["message"]
    status, body = stack.post("/v1/chat/completions", {"model": MODEL, "max_tokens": 8190,
                                                       "messages": [{"role": "user", "content": "hi"}]})
    assert status == 400 and "maximum context length is 8192" in body["error"]["message"]


def test_a_10_mb_body_is_refused_with_413(stack):
    status, body = stack.post("/v1/completions", b"{" + b" " * (10 * 2**20) + b"}")
    assert status == 413 and body["error"]["code"] == 413


def test_tokenize_and_detokenize_round_trip(stack, smollm2):
    status, body = stack.post("/tokenize", {"model": MODEL, "prompt": "Hello 世界 🎉"})
    assert status == 200 and body["tokens"] == smollm2.tokenizer.encode("Hello 世界 🎉")
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 8192
    status, body = stack.post("/detokenize", {"model": MODEL, "tokens": body["tokens"]})
    assert status == 200 and body["prompt"] == "Hello 世界 🎉"
    status, body = stack.post("/tokenize", {"model": MODEL, "messages": QUESTION})
    assert body["tokens"] == smollm2.apply_chat_template(QUESTION, tokenize=True)
    assert stack.post("/detokenize", {"model": MODEL, "tokens": [10**9]})[0] == 400
    assert stack.post("/tokenize", {"model": MODEL})[0] == 400


def test_without_max_tokens_the_rest_of_the_context_is_available(client):
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0)
    assert response.choices[0].finish_reason == "stop" and response.usage.completion_tokens > 0
    response = client.completions.create(model=MODEL, prompt="Hello", temperature=0)
    assert response.usage.completion_tokens == 16  # the completions API's documented default


def test_echo_with_logprobs_scores_the_prompt_as_lm_evaluation_harness_asks(client, smollm2):
    """max_tokens 0, echo, logprobs: the prompt back with every token's logprob (the first: null),
    nothing generated; with max_tokens > 0 the generated tokens' follow the prompt's."""
    ids = smollm2.tokenizer.encode("The capital of France is Paris")
    scored = client.completions.create(model=MODEL, prompt=ids, max_tokens=0, echo=True, logprobs=1, temperature=0)
    choice, expected = scored.choices[0], smollm2.generate(ids, SamplingParams(max_tokens=1, prompt_logprobs=1))
    assert choice.text == smollm2.tokenizer.decode(ids) and scored.usage.completion_tokens == 0
    assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
    assert choice.logprobs.token_logprobs[1:] == pytest.approx([e.logprob for e in expected.prompt_logprobs], abs=1e-4)
    assert "".join(choice.logprobs.tokens) == choice.text and len(choice.logprobs.top_logprobs[1]) == 1
    more = client.completions.create(model=MODEL, prompt=ids, max_tokens=3, echo=True, logprobs=2, temperature=0)
    assert len(more.choices[0].logprobs.tokens) == len(ids) + 3 and more.usage.completion_tokens == 3
    assert more.choices[0].logprobs.token_logprobs[:len(ids)] == pytest.approx(
        choice.logprobs.token_logprobs, abs=1e-4, nan_ok=True)


def test_max_tokens_0_without_echo_is_refused(stack):
    import openai

    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=0)
    assert raised.value.body["param"] == "max_tokens"
