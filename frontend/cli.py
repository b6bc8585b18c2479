"""The `forge` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from shared.messages import SamplingParams


def _generate_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="generate text in-process and stream it to stdout")
    p.add_argument("prompt", help="the prompt (with --chat: the user message)")
    p.add_argument("--model", default=None, help="HF directory or .gguf file (default: embedded SmolLM2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from engine import InferenceEngine

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed)
    engine = InferenceEngine.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    print(f"forge: {engine.description}", file=sys.stderr)
    prompt = args.prompt
    if args.chat:
        prompt = engine.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True)

    async def stream() -> None:
        async for text in engine.generate_stream(prompt, params):
            sys.stdout.write(text)
            sys.stdout.flush()

    asyncio.run(stream())
    sys.stdout.write("\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forge", description="Forge LLM inference server")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _generate_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError) as exc:  # bad input: one clear line, no traceback
        print(f"forge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
