"""4-bit GGUF layers kept 4-bit vs dequantized, same run: weight memory, single-request decode
latency and batched throughput of the embedded model in bfloat16 on the CPU.

    python benchmarks/int4_weights.py
    python benchmarks/int4_weights.py --num-prompts 16 --repeats 3

Formats (--quantized-weights): float (every layer dequantized to bfloat16: the baseline), int4
(4-bit layers stay 4-bit), mixed (both copies: the 4-bit one for steps of at most 16 tokens).
Latency: one request, a 128-token prompt, ms per output token after the first (median of
--repeats). Throughput: --num-prompts prompts of 128 random tokens -> 128 new tokens, greedy,
EOS ignored. Everything runs on Forge's compute thread (engine/compute_thread.py).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import InferenceEngine, SamplingParams, compute_thread

FORMATS = ("float", "int4", "mixed")


def decode_ms_per_token(engine: InferenceEngine, prompt: list[int], output_len: int, repeats: int) -> float:
    """(time for output_len tokens - time for 1 token) / (output_len - 1): decode steps only."""
    def timed(max_tokens: int) -> float:
        engine.core.scheduler.block_manager.reset_prefix_cache()
        start = time.perf_counter()
        engine.generate(prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
        return time.perf_counter() - start

    runs = [(timed(output_len) - timed(1)) / (output_len - 1) for _ in range(repeats)]
    return 1000 * statistics.median(runs)


def throughput(engine: InferenceEngine, prompts: list[list[int]], output_len: int) -> float:
    engine.core.scheduler.block_manager.reset_prefix_cache()
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    outputs = engine.generate(prompts, params)
    elapsed = time.perf_counter() - start
    assert all(len(o.token_ids) == output_len for o in outputs)
    return len(prompts) * output_len / elapsed


def measure(fmt: str, prompts: list[list[int]], output_len: int, repeats: int) -> dict[str, float]:
    engine = InferenceEngine.from_pretrained(None, dtype="bfloat16", quantized_weights=fmt,
                                             max_num_seqs=len(prompts))
    engine.generate(prompts[0][:8], SamplingParams(max_tokens=2, temperature=0.0))  # warm-up
    result = {"weights_mib": engine.core.runner.model.weight_bytes() / 2**20,
              "decode_ms": decode_ms_per_token(engine, prompts[0], output_len, repeats),
              "tok_s": throughput(engine, prompts, output_len)}
    del engine
    gc.collect()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 49_000, (args.prompt_len,), generator=generator).tolist()
               for _ in range(args.num_prompts)]
    print(f"# embedded SmolLM2-135M (GGUF Q4_1 layers), bfloat16, CPU, {torch.get_num_threads()} threads; "
          f"latency: 1 x {args.prompt_len} -> {args.output_len}; throughput: {args.num_prompts} x "
          f"{args.prompt_len} -> {args.output_len}; torch {torch.__version__}")
    results = {fmt: compute_thread.run(measure, fmt, prompts, args.output_len, args.repeats) for fmt in FORMATS}
    base = results["float"]
    for fmt, r in results.items():
        print(f"{fmt:6s} weights {r['weights_mib']:6.1f} MiB ({r['weights_mib'] / base['weights_mib']:4.2f}x) | "
              f"decode {r['decode_ms']:5.1f} ms/token ({base['decode_ms'] / r['decode_ms']:4.2f}x faster) | "
              f"{args.num_prompts} prompts {r['tok_s']:6.1f} out tok/s ({r['tok_s'] / base['tok_s']:4.2f}x)",
              flush=True)


if __name__ == "__main__":
    main()
