"""Speculative decoding, served: the same workloads against `forge serve` without drafts, with n-gram
drafts, and llama.cpp's llama-server (when built: ../shared/peers/setup.sh llamacpp), one server
after another in one run, with one streaming HTTP client.

    python benchmarks/speculative_bench.py
    python benchmarks/speculative_bench.py --speculative-config '{"num_speculative_tokens": 6}'

Workloads:
  copy    concurrency 1: chat requests whose answers largely copy their prompt (rename a variable in
          a function, quote a passage, fix one word in a paragraph, fill a record from a form, repeat
          a list), greedy, up to 256 tokens: the text prompt lookup is for.
  random  concurrency 16: 64 prompts of 128 random tokens, 128 output tokens, EOS ignored (the peers'
          W1): batched serving, where drafting must cost nothing. Forge only.
Reports output tokens/s, median milliseconds per output token after the first, and for Forge with
drafts the acceptance rate (accepted / drafted tokens, from /metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

import aiohttp
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.copy_prompts import COPY_PROMPTS
from engine.loaders import default_model_path
from tests.e2e.stack import HttpProbe, free_port

MODEL = "smollm2-135m-instruct"
LLAMA_SERVER = os.path.expanduser(os.path.join(os.environ.get("FORGE_PEERS_DIR", "~/.cache/forge-peers"),
                                               "llama.cpp-build/bin/llama-server"))


def start_forge(port: int, extra: list[str]) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "frontend.cli", "serve", "--port", str(port),
                               "--no-prefix-caching", *extra], cwd=REPO, stdout=subprocess.PIPE, text=True)
    for line in server.stdout:
        if line.startswith("forge: serving"):
            return server
    raise RuntimeError("forge serve exited before serving")


def start_llama_server(port: int) -> subprocess.Popen:
    """As ../shared/peers/compare.sh runs it: the same GGUF, 16 slots, prompt cache off."""
    server = subprocess.Popen([LLAMA_SERVER, "-m", default_model_path(), "--host", "127.0.0.1", "--port", str(port),
                               "-a", MODEL, "-c", "8192", "-t", "2", "-tb", "2", "--parallel", "16", "--cont-batching",
                               "--no-webui", "--metrics", "--no-cache-prompt", "--no-repack"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("llama-server did not become ready")


async def stream(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[float, float, int]:
    """(first token s, whole request s, output tokens) of one streamed request."""
    start, first, count, deltas = time.perf_counter(), None, 0, 0
    async with session.post(url, json={**body, "stream": True, "stream_options": {"include_usage": True}}) as reply:
        async for raw in reply.content:
            line = raw.decode().strip()
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            choice = chunk["choices"][0] if chunk.get("choices") else {}
            if choice.get("text") or (choice.get("delta") or {}).get("content"):
                first = first or time.perf_counter() - start
                deltas += 1
            if chunk.get("usage"):
                count = chunk["usage"]["completion_tokens"]
    return first or 0.0, time.perf_counter() - start, count or deltas


async def load(base: str, bodies: list[tuple[str, dict]], concurrency: int) -> dict:
    gate = asyncio.Semaphore(concurrency)

    async def one(session, path: str, body: dict):
        async with gate:
            return await stream(session, base + path, body)

    started = time.perf_counter()
    # a fresh connection per request, as ../shared/peers runs every server (llama-server drops idle ones)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800),
                                     connector=aiohttp.TCPConnector(force_close=True)) as session:
        results = await asyncio.gather(*(one(session, path, body) for path, body in bodies))
    elapsed = time.perf_counter() - started
    tokens = sum(count for _, _, count in results)
    tpot = [(total - first) / (count - 1) * 1000 for first, total, count in results if count > 1]
    return {"tok_s": tokens / elapsed, "tpot_ms": statistics.median(tpot), "tokens": tokens}


def copy_bodies() -> list[tuple[str, dict]]:
    return [("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": prompt}],
                                      "max_tokens": 256, "temperature": 0}) for prompt in COPY_PROMPTS]


def random_bodies() -> list[tuple[str, dict]]:
    generator = torch.Generator().manual_seed(0)
    return [("/v1/completions", {"model": MODEL, "prompt": torch.randint(100, 49_000, (128,), generator=generator)
                                 .tolist(), "max_tokens": 128, "temperature": 0, "ignore_eos": True})
            for _ in range(64)]


def draft_counters(probe: HttpProbe) -> tuple[float, float]:
    """(accepted, drafted) tokens so far, from Forge's /metrics."""
    return (probe.metric("forge:spec_decode_num_accepted_tokens_total"),
            probe.metric("forge:spec_decode_num_draft_tokens_total"))


def run_server(name: str, start, workloads: list[str], repeats: int) -> list[str]:
    port = free_port()
    server = start(port)
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        asyncio.run(load(base, copy_bodies()[:1], 1))  # warm-up
        for workload in workloads:
            bodies, concurrency = (copy_bodies(), 1) if workload == "copy" else (random_bodies(), 16)
            for _ in range(repeats):
                before = draft_counters(HttpProbe(base)) if "drafts" in name else (0, 0)
                result = asyncio.run(load(base, bodies, concurrency))
                if "drafts" in name:
                    time.sleep(1.5)  # the engine's counters reach /metrics with its next stats
                after = draft_counters(HttpProbe(base)) if "drafts" in name else (0, 0)
                accepted, drafted = after[0] - before[0], after[1] - before[1]
                rate = f"{accepted / drafted:.0%} of {drafted:.0f}" if drafted else "-"
                rows.append(f"| {name} | {workload} (C={concurrency}) | {result['tok_s']:.1f} | "
                            f"{result['tpot_ms']:.1f} | {result['tokens']} | {rate} |")
                print(rows[-1], flush=True)
    finally:
        server.terminate()
        server.wait(30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speculative-config", default='{"method": "ngram", "num_speculative_tokens": 4}')
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workloads", default="copy,random")
    args = parser.parse_args()
    workloads = args.workloads.split(",")
    print(f"# speculative config {args.speculative_config}; default model, dtype and weights; prefix caching off")
    print("| server | workload | output tok/s | median ms per output token | output tokens | accepted drafts |")
    print("|---|---|---|---|---|---|")
    run_server("forge, no drafts", lambda port: start_forge(port, []), workloads, args.repeats)
    run_server("forge, n-gram drafts", lambda port: start_forge(port, ["--speculative-config", args.speculative_config]),
               workloads, args.repeats)
    if os.path.exists(LLAMA_SERVER):
        run_server("llama.cpp llama-server", start_llama_server, ["copy"], args.repeats)
    else:
        print(f"(no llama-server at {LLAMA_SERVER}: ../shared/peers/setup.sh llamacpp builds it)")


if __name__ == "__main__":
    main()
