"""Faults under load, end to end: start `forge serve`, stream greedy requests through the real
`openai` client, inject a fault, and count what every request ended with.

    python benchmarks/fault_recovery.py --fault engine-kill                  # kill -9 of the engine, 16 streams
    python benchmarks/fault_recovery.py --fault engine-stop --stall-timeout 5  # SIGSTOP past the stall timeout
    python benchmarks/fault_recovery.py --fault worker-kill --workers 2      # kill -9 of one of two workers
    python benchmarks/fault_recovery.py --fault engine-kill --streams 1000 --disconnect 0.1 --max-tokens 48

A stream ends "same" (its text equals the reference: the same prompt, greedy, run alone before the
fault), "different" (complete, another text: a near-tie decided otherwise in another batch),
"429" (refused at admission), "disconnected" (the client left on purpose), "error" or "hung"
(no end within --deadline). Lost = error + hung: the goal is zero. Also printed: the longest
pause between two chunks of a stream, when /health (polled every 0.1 s) was 200 again, and, once idle,
the engine's running / waiting counts and KV usage, and the stack's open files and RSS against
their values before the load.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request

import openai
import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "smollm2-135m-instruct"
FAULT_AFTER_STARTED = 64  # inject the fault once this many streams (or all) have their first chunk


def start(args: argparse.Namespace) -> subprocess.Popen:
    command = [sys.executable, "-m", "frontend.cli", "serve", "--port", str(args.port), "--dtype", "float32",
               "--workers", str(args.workers), "--engine-stall-timeout", str(args.stall_timeout)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("forge: serving"):
            return process
    raise SystemExit("forge serve did not start")


def health(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status
    except OSError as exc:
        return getattr(exc, "code", 0)


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            key, _, value = line.rpartition(" ")
            if key == name:
                return float(value)
    raise KeyError(name)


def footprint(launcher: psutil.Process) -> tuple[int, float]:
    """(open file descriptors, RSS in MiB) of the launcher and its children."""
    processes = [launcher, *launcher.children(recursive=True)]
    return sum(p.num_fds() for p in processes), sum(p.memory_info().rss for p in processes) / 2**20


def inject(fault: str, launcher: psutil.Process) -> None:
    children = launcher.children()
    engine = next(p for p in children if "engine" in " ".join(p.cmdline()))
    workers = [p for p in children if "worker" in " ".join(p.cmdline())]
    victim, sig = {"engine-kill": (engine, signal.SIGKILL), "engine-stop": (engine, signal.SIGSTOP),
                   "worker-kill": (workers[-1], signal.SIGKILL)}[fault]
    victim.send_signal(sig)


async def one(client: openai.AsyncOpenAI, prompt: str, args: argparse.Namespace, leave_after: int | None,
              started: asyncio.Event, gaps: list[float]) -> tuple[str, str]:
    """(outcome, text) of one stream."""
    try:
        stream = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=args.max_tokens,
                                                 temperature=0.0, stream=True, extra_body={"ignore_eos": True})
        text, last, chunks = "", time.monotonic(), 0
        async for chunk in stream:
            now = time.monotonic()
            if chunks:  # between chunks: a queued request's wait for its first one is not a pause
                gaps.append(now - last)
            last, chunks = now, chunks + 1
            text += chunk.choices[0].text
            started.set()
            if leave_after is not None and chunks >= leave_after:
                await stream.close()
                return "disconnected", text
        return "complete", text
    except openai.RateLimitError:
        started.set()
        return "429", ""
    except openai.APIError as exc:
        started.set()
        return "error", str(exc)


async def load(args: argparse.Namespace, prompts: list[str], launcher: psutil.Process, url: str):
    rng = random.Random(0)
    gaps: list[float] = []
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=args.deadline) as client:
        events = [asyncio.Event() for _ in range(args.streams)]
        leave = [rng.randrange(1, 8) if rng.random() < args.disconnect else None for _ in range(args.streams)]
        tasks = [asyncio.create_task(asyncio.wait_for(one(client, prompts[i % len(prompts)], args, leave[i],
                                                          events[i], gaps), args.deadline))
                 for i in range(args.streams)]
        target = min(args.streams, FAULT_AFTER_STARTED)
        while sum(e.is_set() for e in events) < target:  # the fault lands with streams mid-way
            await asyncio.sleep(0.05)
        inject(args.fault, launcher)
        fault_s = time.monotonic()
        statuses: list[tuple[float, int]] = []
        poller = asyncio.create_task(_poll_health(url, statuses))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        while not statuses or statuses[-1][1] != 200:
            await asyncio.sleep(0.1)
        poller.cancel()
    down = [t for t, status in statuses if status != 200]
    recovered_s = 0.0 if not down else next(t for t, status in statuses if status == 200 and t > down[-1]) - fault_s
    return [r if isinstance(r, tuple) else ("hung", "") for r in results], gaps, recovered_s, bool(down)


async def _poll_health(url: str, statuses: list[tuple[float, int]]) -> None:
    while True:
        statuses.append((time.monotonic(), await asyncio.to_thread(health, url)))
        await asyncio.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fault", choices=["engine-kill", "engine-stop", "worker-kill"], default="engine-kill")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=16, help="distinct prompts, cycled over the streams")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--disconnect", type=float, default=0.0, help="fraction of streams that leave early")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--stall-timeout", type=float, default=60.0)
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds before a stream counts as hung")
    parser.add_argument("--port", type=int, default=8321)
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    process = start(args)
    try:
        launcher = psutil.Process(process.pid)
        prompts = [f"Write one sentence about the number {i}." for i in range(args.prompts)]
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
        reference = {p: client.completions.create(model=MODEL, prompt=p, max_tokens=args.max_tokens, temperature=0.0,
                                                  extra_body={"ignore_eos": True}).choices[0].text for p in prompts}
        fds_before, rss_before = footprint(launcher)
        results, gaps, recovered_s, went_down = asyncio.run(load(args, prompts, launcher, url))
        outcomes = collections.Counter()
        for i, (outcome, text) in enumerate(results):
            if outcome == "complete":
                outcome = "same" if text == reference[prompts[i % len(prompts)]] else "different"
            outcomes[outcome] += 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and metric(url, "forge:num_requests_running") > 0:
            time.sleep(0.2)
        fds_after, rss_after = footprint(launcher)
        print(f"fault {args.fault}: {args.streams} streams ({args.disconnect:.0%} leave early), "
              f"{args.max_tokens} tokens each, {args.workers} worker(s)")
        print("outcomes: " + ", ".join(f"{name} {outcomes[name]}" for name in
                                        ("same", "different", "429", "disconnected", "error", "hung")))
        print(f"lost (error + hung): {outcomes['error'] + outcomes['hung']}")
        print(f"longest pause between chunks: {max(gaps, default=0.0):.1f} s; /health "
              + (f"503 after the fault, 200 again {recovered_s:.1f} s after it" if went_down else "stayed 200"))
        print(f"after: running {metric(url, 'forge:num_requests_running'):.0f}, waiting "
              f"{metric(url, 'forge:num_requests_waiting'):.0f}, KV usage {metric(url, 'forge:kv_cache_usage_perc'):.3f}; "
              f"open files {fds_before} -> {fds_after}; RSS {rss_before:.0f} -> {rss_after:.0f} MiB")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


if __name__ == "__main__":
    main()
