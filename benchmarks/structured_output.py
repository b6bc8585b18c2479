"""What constraints cost under load, end to end: `forge serve` (defaults), the real `openai`
client, C concurrent streaming chat requests of exactly --max-tokens tokens each.

1. Rounds alternate: every request unconstrained, then every request with a JSON schema. Printed:
   each round's median time per output token (TPOT, vLLM's definition: (latency - TTFT) /
   (tokens - 1)) and the constrained / unconstrained ratio of the medians over all rounds.
2. A grammar that takes long to compile (its compile time, measured in this process, is printed),
   on a request of 4 tokens, is sent beside C - 1 unconstrained requests, against a round of those
   alone: their median TPOT should not move, since no step waits for a compile.

    python benchmarks/structured_output.py --concurrency 16 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import string
import subprocess
import sys
import time

import llguidance
import openai

from benchmarks.fault_recovery import REPO
from tests.e2e.stack import free_port

MODEL = "smollm2-135m-instruct"
ASK = [{"role": "user", "content": "List sixteen fruits as JSON."}]
FRUITS = {"type": "object", "required": ["fruits"], "additionalProperties": False, "properties": {
    "fruits": {"type": "array", "minItems": 16, "maxItems": 16, "items": {"type": "string", "maxLength": 24}}}}


def slow_regex(num_words: int, seed: int) -> str:
    """An alternation of many random words: the slowest grammar to build found that llguidance
    still enforces within its per-token bounds (a choice or an object of thousands of entries
    exceeds them, and is refused while generating)."""
    rng = random.Random(seed)
    return "(" + "|".join("".join(rng.choice(string.ascii_lowercase) for _ in range(12)) for _ in range(num_words)) + ")"


def compile_seconds(regex: str) -> float:
    """How long llguidance takes to build a matcher for `regex` over the default model's vocabulary."""
    from engine.loaders import open_checkpoint

    tokenizer = open_checkpoint(None).tokenizer
    vocabulary = llguidance.LLTokenizer(tokenizer.backend.to_str())
    grammar = llguidance.grammar_from("regex", regex)
    start = time.perf_counter()
    matcher = llguidance.LLMatcher(vocabulary, grammar, log_level=0)
    matcher.compute_bitmask()  # as the engine's compile thread does
    assert not matcher.is_error(), matcher.get_error()
    return time.perf_counter() - start


def schema_body(schema: dict) -> dict:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}


async def one(client: openai.AsyncOpenAI, max_tokens: int, body: dict) -> float | None:
    """TPOT of one streamed request with these extra body fields (None: under 2 tokens)."""
    first, tokens = None, 0
    stream = await client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True, **body})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    if tokens < 2 or first is None:
        return None
    return (time.perf_counter() - first) / (tokens - 1)


async def round_of(client: openai.AsyncOpenAI, bodies: list[dict], max_tokens: int,
                   slow: dict | None = None) -> list[float | None]:
    """One request per body, all at once; with `slow`, one more of 4 tokens with that body (not timed)."""
    requests = [one(client, max_tokens, body) for body in bodies]
    if slow is not None:
        requests.append(one(client, 4, slow))
    return (await asyncio.gather(*requests))[:len(bodies)]


def median_ms(values: list[float | None]) -> float:
    return 1000 * statistics.median(v for v in values if v is not None)


async def measure(args: argparse.Namespace, url: str) -> None:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    c = args.concurrency
    await round_of(client, [{}, schema_body(FRUITS)], 8)  # warm-up: the first constrained request builds the vocabulary
    free, constrained = [], []
    for r in range(args.rounds):
        free += (tpot := await round_of(client, [{}] * c, args.max_tokens))
        print(f"round {r + 1}: unconstrained median TPOT {median_ms(tpot):.1f} ms", flush=True)
        constrained += (tpot := await round_of(client, [schema_body(FRUITS)] * c, args.max_tokens))
        print(f"round {r + 1}: JSON schema on every request {median_ms(tpot):.1f} ms "
              f"({sum(v is None for v in tpot)} short)", flush=True)
    print(f"JSON schema / unconstrained median TPOT: {median_ms(constrained) / median_ms(free):.3f}")
    seconds = compile_seconds(slow_regex(args.slow_words, -1))
    print(f"slow grammar: a regex of {args.slow_words} words, compiles in {seconds:.2f} s here")
    alone, beside = [], []
    for r in range(args.rounds):
        alone += await round_of(client, [{}] * (c - 1), args.slow_phase_tokens)
        slow = {"structured_outputs": {"regex": slow_regex(args.slow_words, r)}}  # new each round: never cached
        beside += await round_of(client, [{}] * (c - 1), args.slow_phase_tokens, slow)
    print(f"unconstrained median TPOT: {median_ms(alone):.1f} ms alone, {median_ms(beside):.1f} ms beside a slow "
          f"compile ({median_ms(beside) / median_ms(alone):.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--slow-words", type=int, default=60000)
    parser.add_argument("--slow-phase-tokens", type=int, default=192,
                        help="tokens a request in part 2: long enough to span the slow grammar's check and compile")
    parser.add_argument("--url", default=None, help="a running server (default: start forge serve)")
    args = parser.parse_args()
    if args.url:
        asyncio.run(measure(args, args.url))
        return
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "frontend.cli", "serve", "--port", str(port)], cwd=REPO,
                               stdout=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if line.startswith("forge: serving"):
                break
        asyncio.run(measure(args, f"http://127.0.0.1:{port}"))
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
