"""Serving benchmark: streaming requests at a fixed concurrency, against the in-process engine and
against the real multi-process stack (`forge serve`, HTTP/SSE), in the same run.

    python benchmarks/serve_bench.py                    # both targets
    python benchmarks/serve_bench.py --target inprocess

Workload (the engine-core issue's table): I=128 random prompt tokens, O=128 output tokens, EOS
ignored, prefix caching off; N=64 at C=16, then N=8 at C=1. Reports output tokens/s and median
time to first token at C=16, milliseconds per output token at C=1 (after the first), CPU-seconds
per 1k output tokens (this process for in-process; the whole `forge serve` process tree for HTTP),
idle CPU, and the cold start (until the engine, or /health, is ready).
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

import aiohttp
import psutil
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from engine import InferenceEngine, SamplingParams
from shared.config import WEIGHT_FORMATS
from tests.e2e.stack import free_port


def tree_cpu_seconds(root: psutil.Process) -> float:
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


async def run_load(one_request, prompts: list[list[int]], concurrency: int, cpu_seconds) -> dict:
    gate = asyncio.Semaphore(concurrency)

    async def gated(prompt: list[int]) -> tuple[float, float, int]:
        async with gate:
            return await one_request(prompt)

    cpu_start, wall_start = cpu_seconds(), time.perf_counter()
    results = await asyncio.gather(*(gated(p) for p in prompts))
    wall, cpu = time.perf_counter() - wall_start, cpu_seconds() - cpu_start
    num_output = sum(r[2] for r in results)
    return {"tok_s": num_output / wall, "ttft_s": statistics.median(r[0] for r in results),
            "tpot_ms": 1000 * statistics.mean((r[1] - r[0]) / (r[2] - 1) for r in results),
            "cpu_s_per_1k": 1000 * cpu / num_output}


def in_process(args, make_prompts) -> dict:
    start = time.perf_counter()
    engine = InferenceEngine.from_pretrained(args.model, dtype=args.dtype, enable_prefix_caching=False,
                                             quantized_weights=args.quantized_weights)
    cold_start = time.perf_counter() - start
    params = SamplingParams(max_tokens=args.output_len, temperature=0.0, ignore_eos=True)
    me = psutil.Process()

    async def one(prompt: list[int]) -> tuple[float, float, int]:
        start, first, count = time.perf_counter(), None, 0
        async for token_ids in engine.stream_tokens(prompt, params):
            first = first or time.perf_counter() - start
            count += len(token_ids)
        return first, time.perf_counter() - start, count

    return _measure(one, make_prompts, lambda: tree_cpu_seconds(me), cold_start)


def over_http(args, make_prompts) -> dict:
    port = free_port()
    command = [sys.executable, "-m", "frontend.cli", "serve", "--port", str(port), "--dtype", args.dtype,
               "--no-prefix-caching", "--quantized-weights", args.quantized_weights,
               *(["--model", args.model] if args.model else [])]
    start = time.perf_counter()
    server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        for line in server.stdout:
            if line.startswith("forge: serving"):
                break
        cold_start = time.perf_counter() - start
        root = psutil.Process(server.pid)
        url = f"http://127.0.0.1:{port}/v1/completions"

        async def one(prompt: list[int]) -> tuple[float, float, int]:
            body = {"model": "smollm2-135m-instruct", "prompt": prompt, "max_tokens": args.output_len,
                    "temperature": 0, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}
            start, first, count = time.perf_counter(), None, 0
            async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
                async for raw in response.content:
                    line = raw.decode().strip()
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if chunk["choices"] and chunk["choices"][0]["text"]:
                        first = first or time.perf_counter() - start
                    if chunk.get("usage"):
                        count = chunk["usage"]["completion_tokens"]
            return first, time.perf_counter() - start, count

        return _measure(one, make_prompts, lambda: tree_cpu_seconds(root), cold_start)
    finally:
        server.terminate()
        server.wait(30)


def _measure(one, make_prompts, cpu_seconds, cold_start: float) -> dict:
    asyncio.run(run_load(one, make_prompts(2), 2, cpu_seconds))  # warm-up
    c16 = asyncio.run(run_load(one, make_prompts(64), 16, cpu_seconds))
    c1 = asyncio.run(run_load(one, make_prompts(8), 1, cpu_seconds))
    idle_start = cpu_seconds()
    time.sleep(3.0)
    return {"c16": c16, "c1": c1, "idle_cores": (cpu_seconds() - idle_start) / 3.0, "cold_start_s": cold_start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantized-weights", default="auto", choices=WEIGHT_FORMATS)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--target", choices=["both", "inprocess", "http"], default="both")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)

    def make_prompts(n: int) -> list[list[int]]:
        return [torch.randint(100, 49_000, (args.prompt_len,), generator=generator).tolist() for _ in range(n)]

    targets = {"in-process engine": in_process, "forge serve (HTTP, 1 worker)": over_http}
    if args.target != "both":
        targets = dict([list(targets.items())[0 if args.target == "inprocess" else 1]])
    print(f"# I={args.prompt_len} O={args.output_len}, dtype {args.dtype}, quantized weights {args.quantized_weights}, prefix caching off, streaming; "
          f"torch {torch.get_num_threads()} threads")
    print("| target | output tok/s, C=16 | median TTFT, C=16 | ms per output token, C=1 | "
          "CPU-s per 1k output tokens, C=16 | idle CPU | cold start |")
    print("|---|---|---|---|---|---|---|")
    for name, run in targets.items():
        r = run(args, make_prompts)
        print(f"| {name} | {r['c16']['tok_s']:.0f} | {r['c16']['ttft_s']:.2f} s | {r['c1']['tpot_ms']:.1f} | "
              f"{r['c16']['cpu_s_per_1k']:.1f} | {r['idle_cores']:.2f} core | {r['cold_start_s']:.1f} s |",
              flush=True)


if __name__ == "__main__":
    main()
