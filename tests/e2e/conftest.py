from __future__ import annotations

import pytest

from tests.e2e.stack import Stack

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def stack():
    """One float32 stack for the whole session (float32: comparable with InferenceEngine)."""
    server = Stack("--dtype", "float32", "--max-queued-requests", "50")
    yield server
    server.stop()


@pytest.fixture
def client(stack):
    import openai

    return openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0, timeout=120)
