"""Rows of the worker's columnar TextDeltas message, one request each."""

from __future__ import annotations

import math

from frontend.in_flight import InFlight
from shared.messages import TextDeltas, TextLogprob, TokenDeltas
from shared.sampling import FinishReason, TokenLogprob
from shared.text.tokenizer import Tokenizer


def add_entry(out: TextDeltas, rid: int, text: str, finish: FinishReason, num_prompt_tokens: int = 0,
              num_output_tokens: int = 0, num_cached_tokens: int = 0, error: str = "", error_code: int = 0,
              logprobs: list[TextLogprob] | None = None, new_ids: list[int] | None = None,
              prompt_logprobs: list[TextLogprob] | None = None) -> None:
    """Append one request's row to the columnar TextDeltas `out` (the lists are taken, not copied:
    this runs for every request every step)."""
    out.rids.append(rid)
    out.texts.append(text)
    out.finish.append(int(finish))
    out.num_prompt_tokens.append(num_prompt_tokens)
    out.num_output_tokens.append(num_output_tokens)
    out.num_cached_tokens.append(num_cached_tokens)
    out.errors.append(error)
    out.error_codes.append(error_code)
    out.logprobs.append([] if logprobs is None else logprobs)
    out.new_ids.append([] if new_ids is None else new_ids)
    out.prompt_logprobs.append([] if prompt_logprobs is None else prompt_logprobs)


def text_logprob(tokenizer: Tokenizer, entry: TokenLogprob) -> TextLogprob:
    """A token's logprobs with its text and its top alternatives' texts."""
    decode = tokenizer.decode
    return TextLogprob(decode([entry.token_id], skip_special_tokens=False), entry.logprob,
                       [decode([t], skip_special_tokens=False) for t in entry.top_ids], entry.top_logprobs)


def prompt_text_logprobs(tokenizer: Tokenizer, prompt_ids: list[int], entries: list[TokenLogprob]) -> list[TextLogprob]:
    """Every prompt token's logprob as text: the first has none (NaN: nothing comes before it), the
    others the engine's `entries`."""
    first = TextLogprob(tokenizer.decode(prompt_ids[:1], skip_special_tokens=False), math.nan, [], [])
    return [first, *(text_logprob(tokenizer, entry) for entry in entries)]


def row_logprobs(tokenizer: Tokenizer, state: InFlight, deltas: TokenDeltas, row: int
                 ) -> tuple[list[TextLogprob], list[TextLogprob] | None]:
    """Row `row` of `deltas` (request `state`) as text: its tokens' logprobs, if asked for, and with
    its first token its prompt's, if asked for (None otherwise)."""
    wants_logprobs = state.wants_logprobs and not state.score_only
    logprobs = [text_logprob(tokenizer, e) for e in deltas.logprobs[row]] if wants_logprobs else []
    if state.params.prompt_logprobs is None or state.prompt_scored or not deltas.new_ids[row]:
        return logprobs, None
    state.prompt_scored = True
    return logprobs, prompt_text_logprobs(tokenizer, state.prompt_ids, deltas.prompt_logprobs[row])
