"""docker-compose.yml, proven by running what it says: no Docker engine runs here, so each
service's command starts as a local process with the service's environment, service names
resolve to 127.0.0.1, and published or bound ports map to free local ones."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai
import yaml

from tests.e2e.stack import REPO, free_port

ADDRESS = re.compile(r"^tcp://([\w.\-]+):(\d+)$")


COMPOSE_VARIABLES = {"FORGE_API_KEY": "sk-compose-test"}  # as if exported before `docker compose up`


def _interpolate(value: str) -> str:
    """Compose's `${NAME:-default}` with COMPOSE_VARIABLES as the shell environment."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: COMPOSE_VARIABLES.get(m[1], m[2]), value)


def _load() -> dict:
    with open(os.path.join(REPO, "docker-compose.yml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


def _localize(command: list[str], services: set[str], ports: dict[int, int]) -> list[str]:
    out = []
    for i, arg in enumerate(command):
        match = ADDRESS.match(arg)
        if match:
            host, port = match.groups()
            assert host in services or host == "0.0.0.0", f"{arg}: unknown host"
            arg = f"tcp://127.0.0.1:{ports[int(port)]}"
        elif i and command[i - 1] in ("--port",):
            arg = str(ports[int(arg)])
        elif arg == "0.0.0.0":
            arg = "127.0.0.1"  # tests never listen publicly
        out.append(arg)
    return out


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError):
        return False


def test_compose_file_declares_the_three_roles():
    spec = _load()
    services = spec["services"]
    assert set(services) == {"frontend", "tokenizer", "engine"}
    devices = services["engine"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "container_name" not in services["tokenizer"], "a fixed name would prevent --scale"
    assert {"models", "kernel-cache"} <= set(spec["volumes"])
    assert all(s["networks"] == ["forge"] for s in services.values())


def test_compose_stack_serves_a_chat_completion(tmp_path):
    spec = _load()
    services = spec["services"]
    engine_port = free_port(2)
    ports = {5555: engine_port, 5556: engine_port + 1, 5557: free_port(), 8000: free_port()}
    processes = []
    try:
        for name, replicas in (("engine", 1), ("frontend", 1), ("tokenizer", 2)):  # --scale tokenizer=2
            service = services[name]
            command = _localize(service["command"], set(services), ports)
            assert command[0] == "forge"
            env = dict(os.environ, **{k: _interpolate(str(v)).replace("/cache", str(tmp_path)) for k, v in
                                      (service.get("environment") or {}).items()})
            for _ in range(replicas):
                processes.append(subprocess.Popen([sys.executable, "-m", "frontend.cli", *command[1:]], cwd=REPO,
                                                  env=env))
        url = f"http://127.0.0.1:{ports[8000]}"
        deadline = time.monotonic() + 180
        while not _healthy(url):
            assert time.monotonic() < deadline, "the compose stack did not become ready"
            assert all(p.poll() is None for p in processes), "a service exited"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=url + "/v1", api_key=COMPOSE_VARIABLES["FORGE_API_KEY"], max_retries=0,
                               timeout=60)
        response = client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=12, temperature=0,
                                                  messages=[{"role": "user", "content": "Say hi."}])
        assert response.choices[0].message.content
        assert response.usage.completion_tokens > 0
    finally:
        for p in processes:
            p.terminate()
        for p in processes:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()

