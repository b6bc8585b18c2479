"""The engine's own time per step, with a model that costs nothing.

    python benchmarks/engine_overhead.py                     # 1, 64, 256 and 1,024 running requests
    python benchmarks/engine_overhead.py --running 256 --steps 100

On a GPU the device idles while the host does this work between steps; on a CPU it is time the
cores are not multiplying weights. The runner here is the real ModelRunner with its forward pass
replaced by fixed logits (a 256-token slice, so greedy sampling costs nothing either): what is
timed is everything else, on the real code paths, in steady decode with N requests running:

  schedule    Scheduler.schedule: token budget, block allocation
  prepare     the runner's input tensors (ids, positions, slots, block tables) and attention plan
  sample      the sampler on the fixed logits, and the token list back to Python
  update      the rest of EngineCore.step: Scheduler.update_from_output, the per-request deltas,
              the runner's per-row bookkeeping
  publish     EngineLoop._publish: one TokenDeltas for the worker, msgspec-encoded (not sent)
  detokenize  the worker: TokenDeltas decoded, each request's TextStream pushed, TextDeltas encoded

Prints microseconds per step for each part, the engine's own (all but detokenize, which runs in
the worker processes, beside the engine), and the total: each the median over chunks of steps,
since a shared machine's noise lands on single chunks.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections import defaultdict

import msgspec
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import InferenceEngine, SamplingParams, compute_thread
from engine.loaders import open_checkpoint
from engine.loaders.random_weights import random_checkpoint
from engine.model.model_config import ModelConfig
from engine.process.loop import EngineLoop
from engine.runner.model_runner import ModelRunner
from frontend.in_flight import InFlight
from frontend.tokenizer_worker import TokenizerWorker
from shared import ipc
from shared.config import EngineConfig
from shared.messages import EngineReady, TokenDeltas
from shared.text.text_stream import TextStream

PROMPT_LEN = 32
CHUNK_STEPS = 25  # parts are timed over chunks of this many steps; the median chunk is reported
FIXED_VOCAB = 256  # logits columns: the byte tokens of the embedded tokenizer
TINY = ModelConfig(architecture="LlamaForCausalLM", vocab_size=49152, hidden_size=64, intermediate_size=128,
                   num_layers=1, num_heads=2, num_kv_heads=1, head_dim=32, rms_norm_eps=1e-5,
                   rope_theta=10000.0, max_position_embeddings=8192, tie_word_embeddings=True)


class FreeModelRunner(ModelRunner):
    """The model runner with a forward pass that costs nothing: fixed logits, real everything else."""

    def _forward(self, batch, sampling_rows, scored):
        self._run_plan(self._prepare(batch, sampling_rows, scored))
        return self.fixed_logits[:len(sampling_rows)]  # [num_sampled, FIXED_VOCAB] (nothing here scores prompts)

    def _run_plan(self, batch) -> None:
        self.model.ops.plan_attention(batch.block_tables, batch.seq_lens, batch.query_start_loc,
                                      self.model.config.sliding_window)


class Timings:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
        return timed


def build(num_running: int) -> tuple[InferenceEngine, Timings]:
    blocks = num_running * ((PROMPT_LEN + 4096) // 16 + 2)
    config = EngineConfig(max_num_seqs=num_running, max_num_batched_tokens=max(512, num_running),
                          num_kv_blocks=blocks, enable_prefix_caching=False, dtype="float32")
    engine = InferenceEngine.from_checkpoint(random_checkpoint(TINY), config)
    runner = FreeModelRunner(engine.core.runner.model, engine.core.runner.sampler, blocks, config.block_size)
    logits = torch.zeros(num_running, FIXED_VOCAB)
    logits[:, 65] = 1.0  # always the byte token "A": greedy, one token per step
    runner.fixed_logits = logits
    engine.core.runner = runner
    timings = Timings()
    scheduler = engine.core.scheduler
    scheduler.schedule = timings.wrap("schedule", scheduler.schedule)
    runner._prepare = timings.wrap("prepare", runner._prepare)
    runner._run_plan = timings.wrap("prepare", runner._run_plan)
    runner.sampler.sample = timings.wrap("sample", runner.sampler.sample)
    return engine, timings


def measure(num_running: int, steps: int) -> dict[str, float]:
    engine, timings = build(num_running)
    tokenizer = open_checkpoint(None).tokenizer
    loop = EngineLoop(engine.core, EngineReady("m", 16, 1, 8192, "", None, None, None), "", "")
    worker = TokenizerWorker(1, "", "ipc://unused", None)
    worker.tokenizer = tokenizer
    encoded: list[bytes] = []
    loop._send_to_worker = lambda _, message: encoded.append(ipc.encode(message))
    worker._send_text = lambda message: ipc.encode(message)
    decoder = msgspec.msgpack.Decoder(TokenDeltas)
    gc.collect()
    gc.freeze()  # as the engine and worker processes do once started, before any request
    params = SamplingParams(max_tokens=4000, temperature=0.0, ignore_eos=True)
    for rid in range(num_running):
        state = InFlight(rid, [], params, TextStream(tokenizer, []), "")
        engine.core.add_request(state.engine_rid, [(rid * 31 + j) % 200 + 40 for j in range(PROMPT_LEN)], params)
        loop.worker_of[state.engine_rid] = 1
        worker.active[rid] = state
    while engine.core.scheduler.waiting or any(r.num_output_tokens == 0 for r in engine.core.scheduler.running):
        loop._publish(engine.core.step())  # prefill: not measured
    chunks = [_timed_chunk(engine, loop, worker, timings, encoded, decoder, CHUNK_STEPS)
              for _ in range(max(1, steps // CHUNK_STEPS))]
    return {name: statistics.median(chunk[name] for chunk in chunks) for name in chunks[0]}


def _timed_chunk(engine, loop, worker, timings, encoded, decoder, steps: int) -> dict[str, float]:
    """Microseconds per step of each part over `steps` steady decode steps."""
    timings.seconds.clear()
    publish, detokenize, total = 0.0, 0.0, 0.0
    for _ in range(steps):
        encoded.clear()
        start = time.perf_counter()
        output = engine.core.step()
        stepped = time.perf_counter()
        loop._publish(output)
        published = time.perf_counter()
        for message in encoded:
            worker._on_tokens(decoder.decode(message))
        done = time.perf_counter()
        publish += published - stepped
        detokenize += done - published
        total += done - start
    parts = dict(timings.seconds)
    parts["update"] = total - publish - detokenize - sum(parts.values())
    parts["publish"], parts["detokenize"], parts["total"] = publish, detokenize, total
    parts["engine"] = total - detokenize
    return {name: 1e6 * seconds / steps for name, seconds in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--running", type=int, nargs="+", default=[1, 64, 256, 1024])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    names = ("schedule", "prepare", "sample", "update", "publish", "engine", "detokenize", "total")
    print(f"# engine host time per decode step, microseconds; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| running | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for n in args.running:
        result = compute_thread.run(measure, n, args.steps)
        print(f"| {n} | " + " | ".join(f"{result[name]:.0f}" for name in names) + " |", flush=True)


if __name__ == "__main__":
    main()
