"""Rows of the worker's columnar TextDeltas message, one request each."""

from __future__ import annotations

from shared.messages import FinishReason, TextDeltas, TextLogprob, TokenLogprob
from shared.text.tokenizer import Tokenizer


def add_entry(out: TextDeltas, rid: int, text: str, finish: FinishReason, num_prompt_tokens: int = 0,
              num_output_tokens: int = 0, num_cached_tokens: int = 0, error: str = "", error_code: int = 0,
              logprobs: list[TextLogprob] | None = None, new_ids: list[int] | None = None) -> None:
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


def text_logprob(tokenizer: Tokenizer, entry: TokenLogprob) -> TextLogprob:
    """A token's logprobs with its text and its top alternatives' texts."""
    decode = tokenizer.decode
    return TextLogprob(decode([entry.token_id], skip_special_tokens=False), entry.logprob,
                       [decode([t], skip_special_tokens=False) for t in entry.top_ids], entry.top_logprobs)
