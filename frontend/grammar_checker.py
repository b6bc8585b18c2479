"""Compiles and checks grammars in a child process at the lowest CPU priority.

llguidance is native code, and a grammar nested deeply enough (a chain of a few thousand rules)
overflows its stack and kills the process that compiles it: a client must not be able to take the
frontend down that way. The child compiles; if it dies, that grammar is a 400 and a new child
takes the next one. Results are cached by the constraint, here, so a repeated one costs nothing.
The engine compiles only grammars this has passed, on a thread with eight times the stack
(engine/grammar/compiler.py).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import concurrent.futures.process
import multiprocessing
import os

import llguidance

from shared.grammar_errors import brief

CACHE_SIZE = 256
LOWEST_PRIORITY = 19


class GrammarChecker:
    def __init__(self) -> None:
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._cache: collections.OrderedDict[tuple[str, str, bool], tuple[str, str]] = collections.OrderedDict()

    async def compile(self, kind: str, text: str, whitespace_flexible: bool) -> tuple[str, str]:
        """(llguidance grammar, "") or ("", why it does not compile) for `text` in llguidance's
        format `kind` (json, regex, choice, grammar, lark)."""
        key = (kind, text, whitespace_flexible)
        result = self._cache.get(key)
        if result is None:
            result = await self._in_child(key)
            self._cache[key] = result
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _in_child(self, key: tuple[str, str, bool]) -> tuple[str, str]:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"), initializer=os.nice, initargs=(LOWEST_PRIORITY,))
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, compile_grammar, *key)
        except concurrent.futures.process.BrokenProcessPool:
            self._pool = None  # the next grammar gets a new child
            return "", "the grammar compiler crashed on it (is it nested thousands of levels deep?)"


def compile_grammar(kind: str, text: str, whitespace_flexible: bool) -> tuple[str, str]:
    """In the child: (grammar, "") or ("", why not)."""
    try:
        if kind == "json":
            compiled = llguidance.LLMatcher.grammar_from_json_schema(
                text, defaults={"whitespace_flexible": whitespace_flexible})
        elif kind == "regex":  # \d and \w as in JavaScript and xgrammar (vLLM): ASCII, not every script's digits
            compiled = llguidance.grammar_from("regex", llguidance.regex_to_lark(text, "dw"))
        else:
            compiled = llguidance.grammar_from(kind, text)
    except Exception as exc:  # noqa: BLE001 (whatever llguidance raises on a grammar is that grammar's 400)
        return "", brief(str(exc))
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(compiled)
    return ("", brief(messages[0])) if is_error else (compiled, "")
