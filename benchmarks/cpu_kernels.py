"""One engine step with the CPU kernels against the same step with the torch reference, same run.

    python benchmarks/cpu_kernels.py                      # 1 and 16 decode rows, 4 rounds
    python benchmarks/cpu_kernels.py --rows 1 16 64 --rounds 6

Both engines (`kernels="ref"` and `kernels="cpu"`, the embedded model with the default dtype and
weight format) are loaded side by side; each round, each engine decodes N requests of 128-token
prompts and the median time of 15 `EngineCore.step` calls is taken. Rounds alternate the two, so
the machine's drift hits both alike. Prints each round's median ms per step and the ratio of the
medians of the rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import InferenceEngine, SamplingParams, compute_thread

KINDS = ("ref", "cpu")
PROMPT = list(range(100, 228))


def step_ms(engine: InferenceEngine, rows: int, round_index: int, steps: int = 15) -> float:
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    for i in range(rows):
        engine.core.add_request(10**6 * (round_index + 1) + i, [t + i for t in PROMPT], params)
    for _ in range(4):  # prefill and the first decode steps: not timed
        engine.core.step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        engine.core.step()
        times.append(time.perf_counter() - start)
    while engine.core.has_work():
        engine.core.step()
    return 1000 * statistics.median(times)


def run(rows_list: list[int], rounds: int) -> None:
    engines = {kind: InferenceEngine.from_pretrained(None, kernels=kind) for kind in KINDS}
    print(f"# {engines['cpu'].description}")
    print("| decode rows | " + " | ".join(f"{k}, ms per step" for k in KINDS) + " | cpu / ref |")
    print("|---|---|---|---|")
    for rows in rows_list:
        results: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for r in range(rounds):
            for kind, engine in engines.items():
                results[kind].append(step_ms(engine, rows, r))
        ratio = statistics.median(results["cpu"]) / statistics.median(results["ref"])
        cells = [", ".join(f"{ms:.1f}" for ms in results[kind]) for kind in KINDS]
        print(f"| {rows} | " + " | ".join(cells) + f" | {ratio:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    compute_thread.run(run, args.rows, args.rounds)


if __name__ == "__main__":
    main()
