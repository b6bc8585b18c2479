"""CUDA kernel benchmarks (needs a GPU): paged decode attention's bandwidth and sampling time.

    python benchmarks/kernels.py                  # everything, markdown to stdout
    python benchmarks/kernels.py --json out.json  # also the raw figures

Attention: Llama-3.1-8B's shape (32 query heads over 8 KV heads, head_dim 128, bfloat16, 16-token
pages scattered over the cache), decode only, batch 1 / 64 / 256 with contexts 512 to 32k. The
bytes it must move (every K and V of every sequence, plus queries and outputs) over its time,
as a fraction of the copy bandwidth a device-to-device torch copy reaches in the same run, and
the torch reference's time on the same inputs where its gathered K/V fits.
Sampling: 256 rows over a 128,256-token vocabulary (Llama 3), top-k 50 + top-p 0.9 and top-p
0.9 alone, kernels.cuda against the sort-based torch reference, same inputs, same run.
Times are medians of CUDA-event timings after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels import cuda, ref

NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
BATCHES = (1, 64, 256)
CONTEXTS = (512, 2048, 4096, 8192, 16384, 32768)
VOCAB = 128256


def median_ms(fn, repeats: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth(num_bytes: int = 2 << 30) -> float:
    """Bytes/s of a device-to-device copy, counting bytes read and written."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * num_bytes / (median_ms(lambda: dst.copy_(src)) / 1e3)


def attention_case(batch: int, context: int, bandwidth: float) -> dict:
    blocks_per_seq = context // BLOCK_SIZE
    num_blocks = batch * blocks_per_seq
    k_cache = torch.randn(num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    v_cache = torch.randn_like(k_cache)
    tables = torch.randperm(num_blocks, device="cuda", dtype=torch.int64).int().view(batch, blocks_per_seq)
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
    starts = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
    query = torch.randn(batch, NUM_Q_HEADS, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    plan = cuda.plan_attention(tables, seq_lens, starts)
    ms = median_ms(lambda: cuda.paged_attention(query, k_cache, v_cache, plan, HEAD_DIM ** -0.5))
    moved = 2 * k_cache.numel() * k_cache.element_size() + 2 * query.numel() * query.element_size()
    achieved = moved / (ms / 1e3)
    torch_ms = None
    if batch * context <= 64 * 8192:  # the reference gathers every sequence's K/V: keep it in memory
        ref_plan = ref.plan_attention(tables, seq_lens, starts)
        torch_ms = median_ms(lambda: ref.paged_attention(query, k_cache, v_cache, ref_plan, HEAD_DIM ** -0.5), 5)
    return dict(batch=batch, context=context, ms=ms, partitions=plan.max_parts, gb_per_s=achieved / 1e9,
                fraction_of_copy=achieved / bandwidth, torch_reference_ms=torch_ms)


def sampling_cases() -> list[dict]:
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = 256
    logits = torch.randn(rows, VOCAB, device="cuda", generator=g) * 4
    temperature = torch.full((rows,), 0.8, device="cuda")
    min_p = torch.zeros(rows, device="cuda")
    seeds = torch.arange(rows, device="cuda")
    offsets = torch.zeros(rows, dtype=torch.int64, device="cuda")
    results = []
    for label, top_k, top_p in (("top-k 50 + top-p 0.9", 50, 0.9), ("top-p 0.9", 0, 0.9)):
        columns = (temperature, torch.full((rows,), top_k, device="cuda"), torch.full((rows,), top_p, device="cuda"),
                   min_p, seeds, offsets)
        kernel_ms = median_ms(lambda columns=columns: cuda.sample(logits, *columns))
        torch_ms = median_ms(lambda columns=columns: ref.sample(logits, *columns), repeats=5)
        same = torch.equal(cuda.sample(logits, *columns), ref.sample(logits, *columns))
        results.append(dict(case=label, rows=rows, vocab=VOCAB, kernel_ms=kernel_ms, torch_sort_ms=torch_ms,
                            speedup=torch_ms / kernel_ms, same_tokens=same))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/kernels.py needs a CUDA GPU")
    device = torch.cuda.get_device_name()
    bandwidth = copy_bandwidth()
    print(f"# {device}; torch {torch.__version__}; copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write)\n")
    print("| batch | context | partitions | time (ms) | GB/s | of copy bandwidth | torch reference (ms) |\n"
          "|---|---|---|---|---|---|---|")
    attention = []
    for batch in BATCHES:
        for context in CONTEXTS:
            r = attention_case(batch, context, bandwidth)
            torch.cuda.empty_cache()  # the next case's cache may be larger
            attention.append(r)
            reference = "-" if r["torch_reference_ms"] is None else f"{r['torch_reference_ms']:.3f}"
            print(f"| {batch} | {context} | {r['partitions']} | {r['ms']:.3f} | {r['gb_per_s']:.0f} | "
                  f"{100 * r['fraction_of_copy']:.1f}% | {reference} |", flush=True)
    print("\n| sampling | rows x vocab | kernel (ms) | torch sort (ms) | speedup | same tokens |\n|---|---|---|---|---|---|")
    sampling = sampling_cases()
    for r in sampling:
        print(f"| {r['case']} | {r['rows']} x {r['vocab']} | {r['kernel_ms']:.3f} | {r['torch_sort_ms']:.3f} | "
              f"{r['speedup']:.1f}x | {r['same_tokens']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=device, copy_gb_per_s=bandwidth / 1e9, attention=attention, sampling=sampling), f,
                      indent=1)


if __name__ == "__main__":
    main()
