"""Encrypted, authenticated sockets (ZeroMQ CURVE) for stacks that span hosts."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import openai
import pytest

from tests.e2e.conftest import MODEL
from tests.e2e.stack import REPO, Stack, forge


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("curve") / "keys")
    subprocess.run([sys.executable, "-m", "frontend.cli", "keys", directory], cwd=REPO, check=True)
    return directory


def test_an_encrypted_stack_serves_and_refuses_workers_without_keys_or_with_a_taken_id(keys, tmp_path):
    log_path = tmp_path / "stack.log"
    with open(log_path, "w") as log:
        stack = Stack("--curve-dir", keys, stderr=log)
    intruder = forge("worker", "--frontend", stack.worker_address, "--engine", stack.engine_address,
                     "--worker-id", "66")
    friend = forge("worker", "--frontend", stack.worker_address, "--engine", stack.engine_address,
                   "--worker-id", "67", "--curve-dir", keys)
    try:
        client = openai.OpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0, timeout=60)
        answer = client.chat.completions.create(model=MODEL, max_tokens=8, temperature=0,
                                                messages=[{"role": "user", "content": "Hi"}])
        assert answer.choices[0].message.content
        assert stack.wait_for(lambda: stack.metric("forge:tokenizer_workers") == 2, timeout_s=30)
        time.sleep(3)  # the keyless worker had every chance to register
        assert stack.metric("forge:tokenizer_workers") == 2
        with pytest.raises(KeyError):
            stack.metric('forge:worker_requests_total{worker="66"}')
        twin = subprocess.run([sys.executable, "-m", "frontend.cli", "worker", "--frontend", stack.worker_address,
                               "--engine", stack.engine_address, "--worker-id", "67", "--curve-dir", keys],
                              check=False, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert twin.returncode == 2 and "worker id 67 is in use by another live worker" in twin.stderr
        assert stack.metric("forge:tokenizer_workers") == 2  # the first 67 serves on
        said = log_path.read_text()
        assert "refused a worker: worker id 67 is in use by a live worker" in said
        # the keyless 66: ZeroMQ reports a protocol failure, or (by timing) a handshake broken off
        assert re.search(r"the CURVE handshake failed; (it does not speak CURVE|the handshake broke off)", said), said
    finally:
        for worker in (intruder, friend):
            worker.kill()
            worker.wait()
        stack.stop()


def test_missing_key_files_are_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "frontend.cli", "worker", "--frontend", "tcp://127.0.0.1:1",
                             "--engine", "tcp://127.0.0.1:2", "--curve-dir", str(tmp_path)],
                            check=False, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "client.key_secret is missing" in result.stderr


def test_forge_keys_never_overwrites_existing_keys(keys):
    with open(f"{keys}/server.key", "rb") as f:
        before = f.read()
    result = subprocess.run([sys.executable, "-m", "frontend.cli", "keys", keys], check=False, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "already holds CURVE keys" in result.stderr
    with open(f"{keys}/server.key", "rb") as f:
        assert f.read() == before
