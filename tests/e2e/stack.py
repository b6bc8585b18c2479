"""Start real Forge processes for end-to-end tests."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port(count: int = 1) -> int:
    """A port P with P..P+count-1 free (the engine binds P and P+1).

    Ports come from below the kernel's ephemeral range: a port in that range can be taken between
    this check and the bind by any outgoing connection, including a ZeroMQ peer retrying its
    connect to that very port before it is bound (TCP then connects the socket to itself)."""
    low = _ephemeral_low()
    bottom = 10_000 if low > 12_000 else 1_024  # below the range if the machine leaves room
    for _ in range(200):
        port = _port_picker.randrange(bottom, max(low, bottom + 1_000) - count)
        candidates = range(port, port + count)
        if not _handed_out.intersection(candidates) and all(_is_free(p) for p in candidates):
            _handed_out.update(candidates)
            return port
    raise RuntimeError("no free port range")


_port_picker = random.Random(os.getpid() ^ time.time_ns())
_handed_out: set[int] = set()  # never hand a port out twice in one test run


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def forge(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "frontend.cli", *args], cwd=REPO, **popen)


class HttpProbe:
    """HTTP helpers against a running Forge frontend at `url`."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def post(self, path: str, body: bytes | dict, timeout_s: float = 60.0) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        status, raw = self.request("POST", path, data, timeout_s)
        return status, json.loads(raw)

    def request(self, method: str, path: str, data: bytes | None = None, timeout_s: float = 60.0):
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def metric(self, name: str) -> float:
        """The value of one sample, e.g. 'forge:num_requests_running' or 'forge:worker_requests_total{worker="1"}'."""
        _, text = self.get("/metrics")
        for line in text.decode().splitlines():
            key, _, value = line.rpartition(" ")
            if key == name:
                return float(value)
        raise KeyError(name)

    def wait_for(self, condition, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.05)
        return condition()


class Stack(HttpProbe):
    """`forge serve` on free ports, with tcp:// addresses so more workers can be attached."""

    def __init__(self, *extra: str, stderr=None) -> None:
        self.port = free_port()
        self.worker_address = f"tcp://127.0.0.1:{free_port()}"
        self.engine_address = f"tcp://127.0.0.1:{free_port(2)}"
        self.process = forge("serve", "--port", str(self.port), "--worker-address", self.worker_address,
                             "--engine-address", self.engine_address, *extra,
                             stdout=subprocess.PIPE, stderr=stderr, text=True)
        super().__init__(f"http://127.0.0.1:{self.port}")
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        for line in self.process.stdout:
            if line.startswith("forge: serving"):
                return
            if time.monotonic() > deadline:
                break
        self.stop()
        pytest.fail("forge serve did not become ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
