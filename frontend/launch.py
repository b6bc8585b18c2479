"""`forge serve`: start the engine and N tokenizer workers as child processes, then serve HTTP here.

Children die with the launcher (PR_SET_PDEATHSIG), and Ctrl-C or SIGTERM stops every child:
nothing is left orphaned. A child that exits is started again (see Child). Local stacks talk over ipc:// sockets in a per-launch temp dir.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from aiohttp import web

from frontend.client import EngineClient
from frontend.server import CLIENT, make_app
from shared.config import FrontendConfig

READY_TIMEOUT_S = 300.0
RESTART_LIMIT = 3  # restarts of one child allowed within RESTART_WINDOW_S
RESTART_WINDOW_S = 300.0
LAUNCHER_PID_ENV = "FORGE_LAUNCHER_PID"  # set for the children: whose death they share
logger = logging.getLogger("forge.launch")


def spawn(args: list[str]) -> subprocess.Popen:
    """Start `forge ARGS` as a child that dies with this process (see die_with_launcher). No
    preexec_fn: children are also started again while ZeroMQ's threads run, where code between
    fork and exec is not safe."""
    env = dict(os.environ, **{LAUNCHER_PID_ENV: str(os.getpid())})
    return subprocess.Popen([sys.executable, "-m", "frontend.cli", *args], env=env)


def die_with_launcher() -> None:
    """In a child of `forge serve`: get SIGTERM when the launcher dies (PR_SET_PDEATHSIG), and
    exit at once if it died before this call (the child was already orphaned)."""
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if launcher is None:
        return
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(launcher):
        raise SystemExit("forge: the launcher is gone")


class Child:
    """A child process of `forge serve`, started again when it exits (the engine's replacement
    gets its in-flight requests replayed by the workers), up to RESTART_LIMIT times within
    RESTART_WINDOW_S: past that the fault is not transient, and the server stops."""

    def __init__(self, name: str, args: list[str]) -> None:
        self.name, self.args = name, args
        self.process = spawn(args)
        self.started_s = time.monotonic()
        self.restarts: collections.deque[float] = collections.deque()  # monotonic times

    def revive(self) -> bool:
        """Restart the process if it has exited; False when the restart budget is spent."""
        code = self.process.poll()
        if code is None:
            return True
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW_S:
            self.restarts.popleft()
        if len(self.restarts) >= RESTART_LIMIT:
            logger.error("the %s exited (code %s), its %d-th time within %.0f s: stopping the server", self.name, code,
                         len(self.restarts) + 1, RESTART_WINDOW_S)
            return False
        self.restarts.append(now)
        logger.warning("the %s exited (code %s); starting it again (restart %d of %d allowed within %.0f s)",
                       self.name, code, len(self.restarts), RESTART_LIMIT, RESTART_WINDOW_S)
        self.process, self.started_s = spawn(self.args), time.monotonic()
        return True

    def kill(self, why: str) -> None:
        """Kill a hung process (revive starts it again)."""
        logger.error("the %s %s: killing it", self.name, why)
        self.process.kill()
        self.process.wait()


def stop_children(children: list[subprocess.Popen], grace_s: float = 5.0) -> None:
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


async def _serve_http(config: FrontendConfig, children: list[Child], model_label: str) -> int:
    """Serve until SIGINT or SIGTERM (0), or until a child exhausts its restarts (1)."""
    app = make_app(config)
    # A client that leaves cancels its handler; on shutdown, handlers still running after the drain
    # window are cancelled too, which aborts their requests.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=config.shutdown_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        started = time.monotonic()
        while not app[CLIENT].is_ready:
            if any(c.process.poll() is not None for c in children):
                raise SystemExit("forge: a child process exited during start-up")
            if time.monotonic() - started > READY_TIMEOUT_S:
                raise SystemExit("forge: the engine did not become ready in time")
            await asyncio.sleep(0.05)
        print(f"forge: serving {model_label} on http://{config.host}:{config.port}", flush=True)
        while not stop.is_set():
            stall = _engine_stall(children[0], app[CLIENT]) if children else None
            if stall is not None:
                children[0].kill(stall)
            if not all(child.revive() for child in children):
                app[CLIENT].fail_all("the server is stopping: a process of it kept crashing", 503)
                return 1
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass
        return 0
    finally:
        await _drain(app[CLIENT], config.shutdown_timeout_s)
        await runner.cleanup()


async def _drain(client: EngineClient, grace_s: float) -> None:
    """Shutting down: refuse new requests, give those in flight `grace_s` to finish, then end each
    with an error event (streams then get their `[DONE]`) before the handlers are cut."""
    client.draining = True
    deadline = time.monotonic() + grace_s
    while client.streams and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    client.fail_all(f"the server is shutting down (requests get {grace_s:g} s to finish)", 503)
    deadline = time.monotonic() + 1.0
    while client.streams and time.monotonic() < deadline:  # their handlers write the error and [DONE]
        await asyncio.sleep(0.05)


def _engine_stall(engine: Child, client: EngineClient) -> str | None:
    """Why the engine child counts as hung (None: it does not): a step running past the stall
    timeout, or no word from it for that long (READY_TIMEOUT_S after a (re)start: loading)."""
    limit = client.engine_stall_timeout_s
    if client.engine_stalled:
        return f"has run one step for over {limit:.0f} s"
    heard_s = client.engine_stats_s if client.engine_stats_s > engine.started_s else None
    silent_s = time.monotonic() - (heard_s or engine.started_s)
    if silent_s > (limit if heard_s else READY_TIMEOUT_S) and engine.process.poll() is None:
        return f"has been silent for {silent_s:.0f} s"
    return None


def serve(model: str | None, config: FrontendConfig, num_workers: int, engine_args: list[str],
          engine_address: str | None = None, child_args: list[str] = ()) -> int:
    """`child_args`: flags for every child (the log level)."""
    # Without explicit addresses the stack talks over ipc:// sockets in a fresh temp dir (mode 0700).
    run_dir = tempfile.mkdtemp(prefix="forge-")
    engine_address = engine_address or f"ipc://{run_dir}/engine"
    if config.worker_address == FrontendConfig.worker_address:
        config = dataclasses.replace(config, worker_address=f"ipc://{run_dir}/workers")
    model_args = ["--model", model] if model else []
    curve_args = [*child_args, *(["--curve-dir", config.curve_dir] if config.curve_dir else [])]
    children = [Child("engine", ["engine", *model_args, "--engine", engine_address, *curve_args, *engine_args])]
    children += [Child(f"tokenizer worker {i}", ["worker", "--frontend", config.worker_address, "--engine",
                                                 engine_address, "--worker-id", str(i), *curve_args])
                 for i in range(1, num_workers + 1)]
    try:
        return asyncio.run(_serve_http(config, children, model or "the embedded default model"))
    finally:
        stop_children([child.process for child in children])
        shutil.rmtree(run_dir, ignore_errors=True)


def serve_frontend(config: FrontendConfig) -> int:
    """The HTTP frontend alone: workers and the engine run elsewhere (docker-compose, other hosts)."""
    return asyncio.run(_serve_http(config, [], "the model of the attached engine"))


def set_title(title: str) -> None:
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)
