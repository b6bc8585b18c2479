"""The in-process Python API: load a model, generate, stream.

    eng = InferenceEngine.from_pretrained()            # the embedded default model
    out = eng.generate("Hello", SamplingParams(max_tokens=32, temperature=0.0))
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import torch

import kernels
from engine import compute_thread
from engine.completion import Completion
from engine.device import resolve_device, resolve_dtype
from engine.engine_core import EngineCore
from engine.grammar.compiler import GrammarCompiler
from engine.loaders import Checkpoint, open_checkpoint
from engine.model import calibration, cpu_decode
from engine.model.int4_linear import resolve_weight_format
from engine.model.llama import Llama
from engine.runner.model_runner import ModelRunner
from engine.runner.sampler import Sampler
from engine.scheduling.block_manager import BlockManager
from engine.scheduling.request import Request
from engine.scheduling.scheduler import Scheduler
from engine.speculative.drafter import Drafter
from engine.step_output import StepOutput
from shared.config import EngineConfig
from shared.sampling import FinishReason, SamplingParams
from shared.text.detokenizer import IncrementalDetokenizer
from shared.text.tokenizer import Tokenizer

Prompt = str | list[int]
logger = logging.getLogger("forge.engine")


class InferenceEngine:
    def __init__(self, core: EngineCore, tokenizer: Tokenizer | None, config: EngineConfig,
                 description: str) -> None:
        self.core = core
        self.tokenizer = tokenizer  # None for random-weight models: prompts must be token ids
        self.config = config
        self.description = description
        self.max_model_len = core.scheduler.max_model_len
        self._rids = itertools.count()
        self._lock = threading.Lock()  # one stepping caller at a time (generate vs. stream pump)
        self._streams: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._awaited: set[int] = set()  # rids some generate() call is waiting for
        self._finished: dict[int, Request] = {}  # of those, the ones that ended, until collected
        self._pump: asyncio.Task | None = None

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | None = None, device: str = "cpu", dtype: str = "auto",
                        **options: Any) -> InferenceEngine:
        """Load a HF directory, a .gguf file, or (None) the embedded default model. `options` are
        EngineConfig fields (num_kv_blocks, max_num_seqs, ...); unknown names raise TypeError."""
        config = EngineConfig(model=path, device=device, dtype=dtype, **options)
        return cls.from_checkpoint(open_checkpoint(path), config)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, config: EngineConfig) -> InferenceEngine:
        return compute_thread.run(cls._build, checkpoint, config)

    @classmethod
    def _build(cls, checkpoint: Checkpoint, config: EngineConfig) -> InferenceEngine:
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        device = resolve_device(config.device)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # this (compute) thread's current device, for torch and CuPy alike
        dtype = resolve_dtype(config.dtype, device)
        model_config = checkpoint.config
        max_model_len = min(config.max_model_len or model_config.max_position_embeddings,
                            model_config.max_position_embeddings)
        dtype_name = str(dtype).removeprefix("torch.")
        ops = kernels.load(config.kernels, device, (dtype_name, model_config.head_dim, config.block_size))
        with torch.device("meta"):
            model = Llama(model_config, ops, max_model_len)
            weight_format = cls._use_int4(model, checkpoint, config, device, dtype)
            model = model.to(dtype)  # cast while it costs nothing
        model = model.to_empty(device=device)  # allocates each parameter once, in its final dtype
        model.reset_rope_cache(max_model_len)
        model.load_weights(checkpoint.open_weights())
        model.eval()
        weights = f", {weight_format} weights" if weight_format != "float" else ""
        # where 4-bit beats bfloat16, and the C heads torch's, on this machine
        weights += calibration.calibrate(model, weight_format, checkpoint.quantized_weights, ops.C_MATMULS)
        weights += cpu_decode.attach(model)
        block_size = config.block_size
        num_blocks = config.num_kv_blocks or max(
            1, int(config.kv_cache_gib * 2**30) // ModelRunner.kv_bytes_per_block(model, block_size))
        if num_blocks * block_size < max_model_len:  # one request must always fit the cache alone
            logger.warning("max_model_len capped from %d to %d by the KV cache size", max_model_len,
                           num_blocks * block_size)
            max_model_len = num_blocks * block_size
        runner = ModelRunner(model, Sampler(ops, device), num_blocks, block_size)
        runner.warm_up()
        if config.cuda_graphs and ops.GRAPH_SAFE:
            runner.capture_graphs(config.max_num_seqs, min(config.cuda_graph_max_seq_len, max_model_len))
        block_manager = BlockManager(num_blocks, block_size, config.enable_prefix_caching)
        drafter = Drafter(config.speculative, max_model_len) if config.speculative else None
        scheduler = Scheduler(block_manager, config.max_num_seqs, config.max_num_batched_tokens, max_model_len,
                              drafter)
        eos = set(model_config.eos_token_ids)
        if checkpoint.tokenizer is not None and checkpoint.tokenizer.eos_token_id is not None:
            eos.add(checkpoint.tokenizer.eos_token_id)
        kernels_used = ops.__name__.removeprefix("kernels.")
        description = f"{checkpoint.description} as {dtype_name} on {device}{weights}, {kernels_used} kernels"
        if device.type == "cuda":
            description += f", {'decode graphs' if runner.graphs else 'eager'}"
        if drafter:
            description += (f", speculative {config.speculative.method} "
                            f"({config.speculative.num_speculative_tokens} tokens)")
        logger.info("loaded %s; KV cache %d blocks of %d tokens", description, num_blocks, block_size)
        tokenizer = checkpoint.tokenizer
        grammars = None if tokenizer is None else GrammarCompiler(tokenizer, model_config.vocab_size, frozenset(eos))
        return cls(EngineCore(scheduler, runner, frozenset(eos), grammars), tokenizer, config, description)

    @staticmethod
    def _use_int4(model: Llama, checkpoint: Checkpoint, config: EngineConfig, device: torch.device,
                  dtype: torch.dtype) -> str:
        """Keep the checkpoint's 4-bit layers 4-bit where config.quantized_weights asks for it (see
        engine/model/int4_linear.py); returns the weight format used."""
        layers = model.int4_candidates(checkpoint.int4_weights)
        float_bytes = sum(layer.in_features * layer.out_features for layer in layers.values()) * dtype.itemsize
        weight_format = resolve_weight_format(config.quantized_weights, device, dtype, bool(layers), float_bytes)
        if weight_format != "float":
            model.use_int4(layers, keep_float=weight_format == "mixed")
        return weight_format

    # --- text helpers ---------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            tokenize: bool = False) -> str | list[int]:
        """The prompt for `messages`: text, or (tokenize=True) ids encoded without extra special
        tokens, since the template already writes them."""
        text = self._require_tokenizer().apply_chat_template(messages, add_generation_prompt)
        return self.tokenizer.encode(text, add_special_tokens=False) if tokenize else text

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self._require_tokenizer().encode(prompt)
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        raise TypeError(f"a prompt is a str or a list of token ids, got {type(prompt).__name__}")

    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer (random weights): pass token ids")
        return self.tokenizer

    # --- generation -----------------------------------------------------------------------------
    def generate(self, prompts: Prompt | Sequence[Prompt], params: SamplingParams | None = None
                 ) -> Completion | list[Completion]:
        """Run every prompt through the same continuous-batching scheduler; blocks until all end."""
        single = isinstance(prompts, str) or (isinstance(prompts, list) and prompts
                                              and isinstance(prompts[0], int))
        prompt_list = [prompts] if single else list(prompts)
        params = params or SamplingParams()
        encoded = [self.encode_prompt(p) for p in prompt_list]
        for ids in encoded:
            self._check_prompt_len(ids)
        with self._lock:
            rids = [next(self._rids) for _ in encoded]
            try:
                for rid, ids in zip(rids, encoded):
                    self.core.add_request(rid, ids, params)
            except ValueError:  # all or nothing: drop the prompts already queued
                for rid in rids:
                    self.core.abort(rid)
                raise
            self._awaited.update(rids)
        pending, done = set(rids), {}
        while pending:  # whichever caller steps, finished requests wait in _finished for their owner
            compute_thread.run(self._step_and_route)
            with self._lock:
                for rid in [rid for rid in pending if rid in self._finished]:
                    done[rid] = self._finished.pop(rid)
                    pending.discard(rid)
                    self._awaited.discard(rid)
        completions = [self._completion(done[rid]) for rid in rids]
        return completions[0] if single else completions

    def _check_prompt_len(self, prompt_ids: list[int]) -> None:
        if len(prompt_ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(prompt_ids)} tokens but the model's context is "
                             f"{self.max_model_len} (max_model_len), including at least one new token")

    def _completion(self, request: Request) -> Completion:
        output_ids = request.output_ids
        text = self.tokenizer.decode(output_ids) if self.tokenizer is not None else ""
        return Completion(text=text, token_ids=output_ids, finish_reason=request.finish_reason.openai_name,
                          num_prompt_tokens=request.prompt_len, num_cached_tokens=request.num_cached_tokens,
                          logprobs=list(request.logprobs) if request.params.logprobs is not None else None,
                          error=request.error,
                          prompt_logprobs=list(request.prompt_logprobs) if request.params.prompt_logprobs is not None
                          else None)

    async def generate_stream(self, prompt: Prompt, params: SamplingParams | None = None
                              ) -> AsyncIterator[str]:
        """Text deltas of one generation as they are produced. Concurrent streams share steps."""
        detokenizer = IncrementalDetokenizer(self._require_tokenizer())
        async for token_ids in self.stream_tokens(prompt, params):
            text = detokenizer.push(token_ids)
            if text:
                yield text

    async def stream_tokens(self, prompt: Prompt, params: SamplingParams | None = None
                            ) -> AsyncIterator[list[int]]:
        """The new token ids of one generation, per engine step. Leaving the loop early aborts
        the request and frees its KV blocks; an engine-side failure raises RuntimeError."""
        prompt_ids = self.encode_prompt(prompt)
        self._check_prompt_len(prompt_ids)
        queue: asyncio.Queue[tuple[list[int], FinishReason, str | None]] = asyncio.Queue()  # (new ids, finish, error)
        with self._lock:
            rid = next(self._rids)
            self.core.add_request(rid, prompt_ids, params or SamplingParams())  # may refuse: nothing registered
            self._streams[rid] = (asyncio.get_running_loop(), queue)
        self._ensure_pump()
        try:
            while True:
                new_ids, finish_reason, error = await queue.get()
                if new_ids:
                    yield new_ids
                if finish_reason:
                    if error:
                        raise RuntimeError(error)
                    return
        finally:
            if self._streams.pop(rid, None) is not None:  # consumer left early: free its blocks
                with self._lock:
                    self.core.abort(rid)

    def _ensure_pump(self) -> None:
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._run_pump())

    async def _run_pump(self) -> None:
        """Step the engine on the compute thread while streams are open."""
        while self._streams:
            await compute_thread.run_async(self._step_and_route)

    def _step_and_route(self) -> None:
        """One engine step. Stream requests' deltas go to their queues; other requests that
        finished wait in _finished until their generate() call collects them."""
        with self._lock:
            output = self.core.step() if self.core.has_work() else StepOutput.empty()
            for request, new_ids in zip(output.requests, output.new_ids):
                stream = self._streams.get(request.rid)
                if stream is not None:
                    if request.finish_reason:
                        del self._streams[request.rid]
                    loop, queue = stream
                    # the finish as of this step: the consumer may read it a step later
                    loop.call_soon_threadsafe(queue.put_nowait, (new_ids, request.finish_reason, request.error))
                elif request.finish_reason and request.rid in self._awaited:
                    self._finished[request.rid] = request
