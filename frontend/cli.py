"""The `forge` command: serve, engine, worker, generate."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import secrets
import sys

from shared import ipc
from shared.config import KERNEL_KINDS, WEIGHT_FORMATS, SpeculativeConfig
from shared.sampling import SamplingParams
from shared.text.tool_call_format import PARSER_NAMES

LOG_LEVELS = ("debug", "info", "warning", "error")


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto (cuda when torch sees a GPU)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--max-num-batched-tokens", type=int, default=512)
    p.add_argument("--num-kv-blocks", type=int, default=None)
    p.add_argument("--kv-cache-gib", type=float, default=1.0)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--tool-call-parser", default=None, choices=PARSER_NAMES,
                   help="how the model writes tool calls (default: read from its chat template)")
    p.add_argument("--kernels", default="auto", choices=KERNEL_KINDS,
                   help="device ops: cuda kernels, the torch reference, or auto (cuda on a GPU when CuPy imports)")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs for decode steps")
    p.add_argument("--speculative-config", default=None, type=_speculative_config, metavar="JSON",
                   help='speculative decoding, as vLLM\'s: {"method": "ngram", "num_speculative_tokens": 4, '
                        '"prompt_lookup_min": 2, "prompt_lookup_max": 5, "disable_by_batch_size": 4}')
    p.add_argument("--quantized-weights", default="auto", choices=WEIGHT_FORMATS,
                   help="4-bit GGUF layers (Q4_0/Q4_1/Q4_K) on a bfloat16 CPU model: int4 keeps them 4-bit, "
                        "mixed adds a float copy for steps of more than 16 tokens, float dequantizes them; "
                        "auto: mixed while the float copy is at most 2 GiB, else int4 (float elsewhere)")


def _engine_options(args: argparse.Namespace) -> list[str]:
    """The engine flags of `forge serve`, passed on to the engine child."""
    out = ["--device", args.device, "--dtype", args.dtype, "--max-num-seqs", str(args.max_num_seqs),
           "--max-num-batched-tokens", str(args.max_num_batched_tokens), "--kv-cache-gib", str(args.kv_cache_gib),
           "--kernels", args.kernels, "--quantized-weights", args.quantized_weights]
    for flag, value in (("--max-model-len", args.max_model_len), ("--num-kv-blocks", args.num_kv_blocks),
                        ("--served-model-name", args.served_model_name),
                        ("--tool-call-parser", args.tool_call_parser)):
        if value is not None:
            out += [flag, str(value)]
    if args.speculative_config is not None:
        out += ["--speculative-config", args.speculative_config.to_json()]
    return (out + (["--no-prefix-caching"] if args.no_prefix_caching else [])
            + (["--enforce-eager"] if args.enforce_eager else []))


def _run_serve(args: argparse.Namespace) -> int:
    from frontend import launch
    from shared.config import FrontendConfig

    launch.set_title("forge-frontend")
    config = FrontendConfig(host=args.host, port=args.port, max_num_seqs=args.max_num_seqs,
                            max_queued_requests=args.max_queued_requests, curve_dir=args.curve_dir,
                            engine_stall_timeout_s=args.engine_stall_timeout, api_keys=_api_keys(args),
                            request_timeout_s=args.request_timeout, max_queue_wait_s=args.max_queue_wait,
                            **({"worker_address": args.worker_address} if args.worker_address else {}))
    return launch.serve(args.model, config, args.workers, _engine_options(args), args.engine_address,
                        ["--log-level", args.log_level])


def _run_frontend(args: argparse.Namespace) -> int:
    from frontend import launch
    from shared.config import FrontendConfig

    launch.set_title("forge-frontend")
    config = FrontendConfig(host=args.host, port=args.port, worker_address=args.worker_address,
                            max_num_seqs=args.max_num_seqs, max_queued_requests=args.max_queued_requests,
                            curve_dir=args.curve_dir, engine_stall_timeout_s=args.engine_stall_timeout,
                            api_keys=_api_keys(args), request_timeout_s=args.request_timeout,
                            max_queue_wait_s=args.max_queue_wait)
    return launch.serve_frontend(config)


def _run_engine(args: argparse.Namespace) -> int:
    from frontend.launch import die_with_launcher, set_title

    die_with_launcher()  # before the engine's imports: an orphan should not load a model
    set_title("forge-engine")
    if args.model is not None and not os.path.exists(args.model):  # one line, before seconds of imports
        raise SystemExit(f"forge engine: no model at {args.model}")
    from engine.process import serving

    options = dict(device=args.device, dtype=args.dtype, max_model_len=args.max_model_len,
                   max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                   num_kv_blocks=args.num_kv_blocks, kv_cache_gib=args.kv_cache_gib,
                   enable_prefix_caching=not args.no_prefix_caching, kernels=args.kernels,
                   cuda_graphs=not args.enforce_eager, quantized_weights=args.quantized_weights,
                   speculative=args.speculative_config)
    serving.serve(args.model, options, args.served_model_name, args.engine, args.curve_dir, args.tool_call_parser)
    return 0


def _run_worker(args: argparse.Namespace) -> int:
    from frontend.launch import die_with_launcher, set_title
    from frontend.tokenizer_worker import TokenizerWorker

    die_with_launcher()
    worker_id = args.worker_id if args.worker_id is not None else secrets.randbits(31)
    set_title(f"forge-worker-{worker_id}")
    TokenizerWorker(worker_id, args.frontend, args.engine, args.curve_dir).run()
    return 0


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


def _run_keys(args: argparse.Namespace) -> int:
    from shared.ipc import create_keys

    create_keys(args.directory)
    print(f"forge: CURVE keys written to {args.directory}; pass --curve-dir {args.directory} to every process")
    return 0


def _speculative_config(text: str) -> SpeculativeConfig:
    """argparse type: a ValueError here becomes a usage error naming the problem."""
    try:
        return SpeculativeConfig.from_json(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _api_keys(args: argparse.Namespace) -> tuple[str, ...]:
    """--api-key flags, then FORGE_API_KEY (comma-separated): the keys a client may present."""
    from_env = [key.strip() for key in os.environ.get("FORGE_API_KEY", "").split(",") if key.strip()]
    return tuple(args.api_key or []) + tuple(from_env)


def _add_frontend_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-queued-requests", type=int, default=256)
    p.add_argument("--api-key", action="append", metavar="KEY",
                   help="require `Authorization: Bearer KEY` on every route but /health (repeat for several "
                        "keys; FORGE_API_KEY adds comma-separated ones and keeps them out of the process list)")
    p.add_argument("--request-timeout", type=float, default=None, metavar="SECONDS",
                   help="end a request running longer, with its text so far and finish_reason \"timeout\" "
                        "(a request's own \"request_timeout\" field can only lower it)")
    p.add_argument("--max-queue-wait", type=float, default=None, metavar="SECONDS",
                   help="a request with no token after this long (queued behind others) gets 503 and Retry-After")
    p.add_argument("--engine-stall-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="an engine step running this long, or an engine silent this long, is stalled: /health "
                        "answers 503, and `forge serve` kills the engine and restarts it (requests are replayed)")


def _add_curve_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--curve-dir", default=None,
                   help="encrypt and authenticate ZeroMQ sockets with the keys in this directory (`forge keys`)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forge", description="Forge LLM inference server")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="warning", choices=LOG_LEVELS,
                        help="how much each process logs (forge serve passes it on to its children)")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser = functools.partial(sub.add_parser, parents=[common])

    p = add_parser("serve", help="serve the OpenAI API: frontend, tokenizer workers and engine")
    p.add_argument("model", nargs="?", default=None, help="HF directory or .gguf file (default: embedded SmolLM2)")
    _add_frontend_options(p)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--worker-address", default=None,
                   help="where workers reach the frontend (default: ipc:// in a temp dir); tcp://H:P to attach more")
    p.add_argument("--engine-address", default=None,
                   help="where the engine binds (default: ipc:// in a temp dir); tcp://H:P uses P and P+1")
    _add_engine_options(p)
    _add_curve_option(p)
    p.set_defaults(run=_run_serve)

    p = add_parser("frontend", help="run the HTTP frontend alone; workers attach to --worker-address")
    _add_frontend_options(p)
    p.add_argument("--worker-address", default="tcp://127.0.0.1:5557")
    p.add_argument("--max-num-seqs", type=int, default=128)
    _add_curve_option(p)
    p.set_defaults(run=_run_frontend)

    p = add_parser("engine", help="run the engine process (owns the device)")
    p.add_argument("--model", default=None)
    p.add_argument("--engine", required=True, help="address to bind, e.g. tcp://0.0.0.0:5555 (uses P and P+1)")
    _add_engine_options(p)
    _add_curve_option(p)
    p.set_defaults(run=_run_engine)

    p = add_parser("worker", help="attach one tokenizer worker to a running frontend and engine")
    p.add_argument("--frontend", required=True, help="the frontend's worker address, e.g. tcp://host:5557")
    p.add_argument("--engine", required=True, help="the engine's address, e.g. tcp://host:5555")
    p.add_argument("--worker-id", type=int, default=None, help="unique id (default: random)")
    _add_curve_option(p)
    p.set_defaults(run=_run_worker)

    p = add_parser("keys", help="create CURVE keys for encrypted cross-host sockets")
    p.add_argument("directory")
    p.set_defaults(run=_run_keys)

    p = add_parser("generate", help="generate text in-process and stream it to stdout")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(name)s: %(message)s")
    try:
        return args.run(args)
    except (ValueError, TypeError, ipc.BindError) as exc:  # bad input: one clear line, no traceback
        print(f"forge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
