"""Peak memory while loading a float16 safetensors checkpoint of about 1 GB on CPU.

    python benchmarks/load_memory.py

Writes a random Llama-shaped float16 checkpoint (sharded, as Hugging Face does) in a temp dir,
then loads it with Forge in a fresh process and reports that process's peak RSS, next to the
checkpoint's size and the RSS of a bare `import torch` measured the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = {"architectures": ["LlamaForCausalLM"], "vocab_size": 32000, "hidden_size": 2048,
          "intermediate_size": 5632, "num_hidden_layers": 8, "num_attention_heads": 32,
          "num_key_value_heads": 4, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
          "tie_word_embeddings": False, "torch_dtype": "float16"}
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report the size of the
# parent that forked it; VmHWM belongs to the child's own address space.
PEAK_RSS = ("print([int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")


def write_checkpoint(directory: str) -> int:
    c = CONFIG
    h = c["hidden_size"]
    kv = c["num_key_value_heads"] * (h // c["num_attention_heads"])  # rows of k_proj / v_proj
    shards, weight_map, total = [], {}, 0

    def shard(tensors: dict[str, torch.Tensor]) -> None:
        nonlocal total
        name = f"model-{len(shards) + 1:05d}.safetensors"
        save_file(tensors, os.path.join(directory, name))
        shards.append(name)
        weight_map.update({k: name for k in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape) * 0.02).half()

    shard({"model.embed_tokens.weight": rand(c["vocab_size"], h), "lm_head.weight": rand(c["vocab_size"], h),
           "model.norm.weight": torch.ones(h).half()})
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shard({f"{p}.self_attn.q_proj.weight": rand(h, h), f"{p}.self_attn.k_proj.weight": rand(kv, h),
               f"{p}.self_attn.v_proj.weight": rand(kv, h), f"{p}.self_attn.o_proj.weight": rand(h, h),
               f"{p}.mlp.gate_proj.weight": rand(c["intermediate_size"], h),
               f"{p}.mlp.up_proj.weight": rand(c["intermediate_size"], h),
               f"{p}.mlp.down_proj.weight": rand(h, c["intermediate_size"]),
               f"{p}.input_layernorm.weight": torch.ones(h).half(),
               f"{p}.post_attention_layernorm.weight": torch.ones(h).half()})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(CONFIG, f)
    return total


def peak_rss(code: str) -> int:
    out = subprocess.run([sys.executable, "-c", code + "\n" + PEAK_RSS], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        size = write_checkpoint(directory)
        baseline = peak_rss("import torch")
        load = ("from engine import InferenceEngine\n"
                f"InferenceEngine.from_pretrained({directory!r}, dtype='float16', num_kv_blocks=8)")
        peak = peak_rss(load)
    gb = 1e9
    print(f"checkpoint {size / gb:.2f} GB float16 safetensors | peak RSS while loading {peak / gb:.2f} GB "
          f"({peak / size:.2f}x the checkpoint) | bare `import torch` {baseline / gb:.2f} GB")


if __name__ == "__main__":
    main()
