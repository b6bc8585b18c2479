from __future__ import annotations

import pytest

from tests.e2e.stack import Stack

MODEL = "smollm2-135m-instruct"
STALL_TIMEOUT_S = 6


@pytest.fixture(scope="session")
def stack():
    """One float32 stack for the whole session (float32: comparable with InferenceEngine); an engine
    silent for STALL_TIMEOUT_S is restarted (no step of these tests comes near it). SmolLM2's template
    shows no tools: tool calls are parsed as Hermes / Qwen 2.5 write them. It drafts with n-gram lookup,
    so every greedy request here also checks that speculation changes no text."""
    server = Stack("--dtype", "float32", "--max-queued-requests", "50", "--engine-stall-timeout", str(STALL_TIMEOUT_S),
                   "--tool-call-parser", "hermes", "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 4}')
    yield server
    server.stop()


@pytest.fixture
def client(stack):
    import openai

    return openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0, timeout=120)
