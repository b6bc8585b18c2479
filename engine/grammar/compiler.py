"""Grammar text -> a request's llguidance matcher, built on a thread of its own (at the lowest CPU
priority: engine/grammar/compile_thread.py).

Building a matcher compiles the grammar against the vocabulary: well under a millisecond for most
schemas, but up to seconds for huge ones, so it never runs in a step. The engine holds a request
back until its matcher is ready (EngineCore), then the request queues like any other. Compiled
grammars are cached by their text; each request gets a copy (cheap) that it advances alone.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Sequence

import llguidance

from engine.grammar.compile_thread import compile_thread
from shared.grammar_errors import brief
from shared.text.tokenizer import Tokenizer

CACHE_SIZE = 128  # compiled grammars kept
# llguidance recurses over a grammar's nesting; the frontend's checker passes only what compiles
# on an 8 MiB stack, and this thread has eight times that.
STACK_BYTES = 64 << 20


class GrammarError(ValueError):
    """The grammar does not compile, or the tokens a replay brings do not keep to it."""


class GrammarCompiler:
    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: frozenset[int]) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size  # the model's (logits width), which may pad the tokenizer's
        self._eos_token_ids = sorted(eos_token_ids)
        self._thread = compile_thread(STACK_BYTES)
        self._vocabulary: llguidance.LLTokenizer | None = None  # built at the first grammar (~0.2-1 s)
        self._compiled: collections.OrderedDict[str, llguidance.LLMatcher] = collections.OrderedDict()

    def submit(self, grammar: str, output_ids: Sequence[int] = ()) -> concurrent.futures.Future:
        """A future of a fresh matcher for `grammar` that has consumed `output_ids` (a replay's
        tokens so far); it raises GrammarError when either fails."""
        return self._thread.submit(self._matcher, grammar, list(output_ids))

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    def _matcher(self, grammar: str, output_ids: list[int]) -> llguidance.LLMatcher:
        """On the compiler thread only (the cache is not locked)."""
        compiled = self._compiled.get(grammar)
        if compiled is None:
            compiled = llguidance.LLMatcher(self._llg_tokenizer(), grammar, log_level=0)
            if not compiled.is_error():
                compiled.compute_bitmask()  # the first mask builds lexer states every copy shares: here, not in a step
            if compiled.is_error():
                raise GrammarError(brief(compiled.get_error()))
            self._compiled[grammar] = compiled
            if len(self._compiled) > CACHE_SIZE:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(grammar)
        matcher = compiled.deep_copy()
        if output_ids and not matcher.consume_tokens(output_ids):
            raise GrammarError(f"the tokens generated so far do not keep to the grammar: {brief(matcher.get_error())}")
        return matcher

    def _llg_tokenizer(self) -> llguidance.LLTokenizer:
        if self._vocabulary is None:
            self._vocabulary = llguidance.LLTokenizer(self._tokenizer.backend.to_str(), n_vocab=self._vocab_size,
                                                      eos_token=self._eos_token_ids)
        return self._vocabulary
