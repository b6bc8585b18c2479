"""Offline throughput: Forge's continuous batching vs transformers `generate`, same run.

    python benchmarks/offline_throughput.py                      # float32 and bfloat16, CPU
    python benchmarks/offline_throughput.py --dtype bfloat16 --num-prompts 64
    python benchmarks/offline_throughput.py --device cuda        # Llama-3.1-8B shape, random bf16,
                                                                 # 1,000 prompts, CUDA kernels + graphs

Workload: N prompts of I random tokens, O new tokens each, greedy, EOS ignored. Prints output
tokens/s for both engines and their ratio, and Forge's model FLOP utilization: achieved FLOP/s
(matmul FLOPs of every prompt and output token) over the peak a plain torch matmul of the
model's own weight shapes reaches at the decode batch size on this machine, measured here too.
On CUDA (no model file travels to a GPU machine) both engines run a model of Llama-3.1-8B's
shape with random weights; Forge with its CUDA kernels and decode graphs, transformers with
batches of --hf-batch-size prompts.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import InferenceEngine, SamplingParams, compute_thread
from engine.loaders import default_model_path
from engine.loaders.random_weights import random_checkpoint
from engine.model.model_config import ModelConfig
from shared.config import EngineConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def weight_shapes(config) -> list[tuple[int, int]]:
    """(out, in) of every matmul one token passes through, the LM head last."""
    h, d = config.hidden_size, config.head_dim
    layer = [((config.num_heads + 2 * config.num_kv_heads) * d, h), (h, config.num_heads * d),
             (2 * config.intermediate_size, h), (h, config.intermediate_size)]
    return layer * config.num_layers + [(config.vocab_size, h)]


def matmul_peak_flops(config, dtype: torch.dtype, rows: int, seconds: float = 3.0) -> float:
    """FLOP/s of plain torch matmuls over the model's weight shapes at `rows` rows."""
    shapes = weight_shapes(config)
    weights = [torch.randn(o, i, dtype=dtype) for o, i in {s: None for s in shapes}]
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=dtype) for w in weights}
    flops_per_pass = sum(2 * rows * w.shape[0] * w.shape[1] for w in weights)
    for w in weights:  # warm-up
        torch.nn.functional.linear(inputs[w.shape[1]], w)
    passes, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for w in weights:
            torch.nn.functional.linear(inputs[w.shape[1]], w)
        passes += 1
    return flops_per_pass * passes / (time.perf_counter() - start)


def workload_flops(config, num_prompts: int, prompt_len: int, output_len: int) -> float:
    shapes = weight_shapes(config)
    per_token = sum(2 * o * i for o, i in shapes[:-1])
    head = 2 * shapes[-1][0] * shapes[-1][1]
    return num_prompts * (prompt_len + output_len) * per_token + num_prompts * output_len * head


def run_forge(dtype: str, prompts: list[list[int]], output_len: int) -> tuple[float, object]:
    engine = InferenceEngine.from_pretrained(None, dtype=dtype, max_num_seqs=len(prompts))
    engine.generate(prompts[:2], SamplingParams(max_tokens=2, temperature=0.0))  # warm-up
    engine.core.scheduler.block_manager.reset_prefix_cache()  # random prompts: no reuse to exploit
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    outputs = engine.generate(prompts, params)
    elapsed = time.perf_counter() - start
    assert all(len(o.token_ids) == output_len for o in outputs)
    return len(prompts) * output_len / elapsed, engine.core.runner.model.config


def run_transformers(dtype: str, prompts: list[list[int]], output_len: int) -> float:
    from transformers import AutoModelForCausalLM

    directory, name = os.path.split(default_model_path())
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=DTYPES[dtype]).eval()
    input_ids = torch.tensor(prompts)
    kwargs = dict(do_sample=False, min_new_tokens=output_len, max_new_tokens=output_len, pad_token_id=0)
    with torch.inference_mode():
        model.generate(input_ids[:2, :8], **dict(kwargs, min_new_tokens=2, max_new_tokens=2))  # warm-up
        start = time.perf_counter()
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        elapsed = time.perf_counter() - start
    assert out.shape[1] == input_ids.shape[1] + output_len
    return len(prompts) * output_len / elapsed


LLAMA_31_8B = dict(  # config.json of meta-llama/Llama-3.1-8B-Instruct, the fields that shape compute
    architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=4096, intermediate_size=14336,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0,
    max_position_embeddings=131072, tie_word_embeddings=False,
    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=8192))


def run_forge_random(config: dict, prompts: list[list[int]], output_len: int, kv_cache_gib: float) -> float:
    engine = InferenceEngine.from_checkpoint(
        random_checkpoint(ModelConfig.from_hf_json(config), device="cuda"),
        EngineConfig(device="cuda", dtype="bfloat16", kernels="cuda", max_num_seqs=256, max_num_batched_tokens=8192,
                     kv_cache_gib=kv_cache_gib, max_model_len=4096))
    engine.generate(prompts[:2], SamplingParams(max_tokens=2, temperature=0.0))  # warm-up
    engine.core.scheduler.block_manager.reset_prefix_cache()
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    outputs = engine.generate(prompts, params)
    elapsed = time.perf_counter() - start
    assert all(len(o.token_ids) == output_len for o in outputs)
    del engine, outputs
    gc.collect()
    torch.cuda.empty_cache()  # transformers' copy of the model needs the room
    return len(prompts) * output_len / elapsed


def run_transformers_random(config: dict, prompts: list[list[int]], output_len: int, batch_size: int) -> float:
    from transformers import LlamaConfig, LlamaForCausalLM

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16 directly: no 32 GB float32 copy
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    finally:
        torch.set_default_dtype(previous)
    kwargs = dict(do_sample=False, min_new_tokens=output_len, max_new_tokens=output_len, pad_token_id=0)
    with torch.inference_mode():
        warm = torch.tensor(prompts[:2], device="cuda")
        model.generate(warm, attention_mask=torch.ones_like(warm), **dict(kwargs, min_new_tokens=2, max_new_tokens=2))
        torch.cuda.synchronize()
        start = time.perf_counter()
        for first in range(0, len(prompts), batch_size):
            input_ids = torch.tensor(prompts[first:first + batch_size], device="cuda")
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
            assert out.shape[1] == input_ids.shape[1] + output_len
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return len(prompts) * output_len / elapsed


def main_cuda(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        sys.exit("--device cuda needs a CUDA GPU")
    config = LLAMA_31_8B
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, config["vocab_size"] - 100, (args.prompt_len,), generator=generator).tolist()
               for _ in range(args.num_prompts)]
    print(f"# {torch.cuda.get_device_name()}; Llama-3.1-8B shape, random bfloat16 weights; {args.num_prompts} "
          f"prompts x {args.prompt_len} tokens -> {args.output_len} new tokens, greedy, ignore_eos; "
          f"torch {torch.__version__}")
    forge_tps = run_forge_random(config, prompts, args.output_len, args.kv_cache_gib)
    line = f"forge {forge_tps:8.1f} out tok/s"
    if not args.skip_transformers:
        hf_tps = run_transformers_random(config, prompts, args.output_len, args.hf_batch_size)
        line += f" | transformers {hf_tps:8.1f} out tok/s (batches of {args.hf_batch_size}) | " \
                f"ratio {forge_tps / hf_tps:5.2f}x"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["both", *DTYPES], default="both", help="CPU only; CUDA runs bfloat16")
    parser.add_argument("--num-prompts", type=int, default=None, help="default: 64 on CPU, 1000 on CUDA")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--kv-cache-gib", type=float, default=40.0, help="CUDA: Forge's KV cache")
    parser.add_argument("--hf-batch-size", type=int, default=256, help="CUDA: prompts per transformers generate")
    args = parser.parse_args()
    if args.device == "cuda":
        args.num_prompts = args.num_prompts or 1000
        return main_cuda(args)
    args.num_prompts = args.num_prompts or 64
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 49_000, (args.prompt_len,), generator=generator).tolist()
               for _ in range(args.num_prompts)]
    print(f"# {args.num_prompts} prompts x {args.prompt_len} tokens -> {args.output_len} new tokens, greedy, "
          f"ignore_eos; torch {torch.__version__}, {torch.get_num_threads()} threads")
    # Every measurement runs on Forge's compute thread: a second thread running torch would give
    # this process two OpenMP teams, which slows both on a small machine (engine/compute_thread.py).
    for dtype in (DTYPES if args.dtype == "both" else [args.dtype]):
        forge_tps, config = run_forge(dtype, prompts, args.output_len)
        peak = compute_thread.run(matmul_peak_flops, config, DTYPES[dtype], args.num_prompts)
        achieved = workload_flops(config, args.num_prompts, args.prompt_len, args.output_len) * \
            forge_tps / (args.num_prompts * args.output_len)
        line = (f"{dtype:9s} forge {forge_tps:7.1f} out tok/s | achieved {achieved / 1e9:6.1f} GFLOP/s = "
                f"{100 * achieved / peak:5.1f}% of matmul peak {peak / 1e9:6.1f} GFLOP/s")
        if not args.skip_transformers:
            hf_tps = compute_thread.run(run_transformers, dtype, prompts, args.output_len)
            line += f" | transformers {hf_tps:7.1f} out tok/s | ratio {forge_tps / hf_tps:4.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
