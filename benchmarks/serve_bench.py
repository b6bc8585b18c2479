"""Serving benchmark against the in-process engine: streaming requests at a fixed concurrency.

    python benchmarks/serve_bench.py            # I=128, O=128: N=64 at C=16, then N=8 at C=1

Reports output tokens/s and median time to first token at C=16, milliseconds per output token
at C=1 (after the first), this process's CPU-seconds per 1k output tokens, idle CPU, and the
cold start (model load until the engine can take requests). Prefix caching is off and EOS is
ignored, as in the reference table of the engine-core issue.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import InferenceEngine, SamplingParams


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one_request(engine: InferenceEngine, prompt: list[int], params: SamplingParams,
                      gate: asyncio.Semaphore) -> tuple[float, float, int]:
    """(time to first token, end-to-end latency, output tokens) of one streamed request."""
    async with gate:
        start = time.perf_counter()
        first = None
        count = 0
        async for token_ids in engine.stream_tokens(prompt, params):
            if first is None:
                first = time.perf_counter() - start
            count += len(token_ids)
        return first, time.perf_counter() - start, count


async def run_load(engine: InferenceEngine, prompts: list[list[int]], output_len: int, concurrency: int) -> dict:
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    gate = asyncio.Semaphore(concurrency)
    cpu_start, wall_start = cpu_seconds(), time.perf_counter()
    results = await asyncio.gather(*(one_request(engine, p, params, gate) for p in prompts))
    wall, cpu = time.perf_counter() - wall_start, cpu_seconds() - cpu_start
    num_output = sum(r[2] for r in results)
    return {"tok_s": num_output / wall, "ttft_median_s": statistics.median(r[0] for r in results),
            "tpot_ms": 1000 * statistics.mean((r[1] - r[0]) / (r[2] - 1) for r in results),
            "cpu_s_per_1k": 1000 * cpu / num_output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    args = parser.parse_args()
    load_start = time.perf_counter()
    engine = InferenceEngine.from_pretrained(args.model, dtype=args.dtype, enable_prefix_caching=False)
    cold_start_s = time.perf_counter() - load_start
    generator = torch.Generator().manual_seed(0)

    def prompts(n: int) -> list[list[int]]:
        return [torch.randint(100, 49_000, (args.prompt_len,), generator=generator).tolist() for _ in range(n)]

    asyncio.run(run_load(engine, prompts(2), 4, 2))  # warm-up
    c16 = asyncio.run(run_load(engine, prompts(64), args.output_len, 16))
    c1 = asyncio.run(run_load(engine, prompts(8), args.output_len, 1))
    idle_start = cpu_seconds()
    time.sleep(3.0)
    idle_cores = (cpu_seconds() - idle_start) / 3.0
    print(f"# {engine.description}; I={args.prompt_len} O={args.output_len}; "
          f"{torch.get_num_threads()} threads; in-process engine, streaming")
    print("| output tok/s, C=16 | median TTFT, C=16 | ms per output token, C=1 | "
          "CPU-s per 1k output tokens, C=16 | idle CPU | cold start |")
    print("|---|---|---|---|---|---|")
    print(f"| {c16['tok_s']:.0f} | {c16['ttft_median_s']:.2f} s | {c1['tpot_ms']:.1f} | "
          f"{c16['cpu_s_per_1k']:.1f} | {idle_cores:.2f} core | {cold_start_s:.1f} s |")


if __name__ == "__main__":
    main()
