"""PromptEncoder: a worker's requests turned into prompt token ids, and checked against the model.

Chat messages render through the model's chat template (with the request's tools); token-id
prompts are checked against the vocabulary; every prompt is checked against the context length.
Failures are ValueErrors whose text the client reads (a 400).
"""

from __future__ import annotations

import msgspec

from shared.messages import GenerateRequest, TokenizeRequest, TokenizeResult
from shared.sampling import SamplingParams
from shared.text.chat_template import template_message
from shared.text.tokenizer import Tokenizer


class PromptEncoder:
    def __init__(self, tokenizer: Tokenizer, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len

    def encode(self, request: GenerateRequest) -> tuple[list[int], str]:
        """(prompt ids, prompt text) of a generate request; its tokens so far (a handed-over
        request's) must lie in the vocabulary as prompt ids must."""
        self.checked_ids(request.resume_ids)
        if request.messages is not None:
            text = self.tokenizer.apply_chat_template([template_message(m) for m in request.messages],
                                                      add_generation_prompt=True, tools=request.tools or None)
            return self.tokenizer.encode(text, add_special_tokens=False), text
        if request.prompt is not None:
            return self.tokenizer.encode(request.prompt), request.prompt
        ids = self.checked_ids(list(request.prompt_ids or []))
        return ids, self.tokenizer.decode(ids, skip_special_tokens=False)

    def fitted_params(self, request: GenerateRequest, prompt_ids: list[int]) -> SamplingParams:
        """The request's params, its max_tokens defaulting (as vLLM's) to the rest of the context;
        raises if the prompt and max_tokens do not fit."""
        params = request.params
        if request.max_tokens_is_default:
            room = self.max_model_len - len(prompt_ids)
            params = msgspec.structs.replace(params, max_tokens=max(1, min(params.max_tokens, room)),
                                             min_tokens=min(params.min_tokens, max(1, room)))
        self._check_limits(prompt_ids, params.max_tokens)
        return params

    def tokenize_only(self, request: TokenizeRequest) -> TokenizeResult:
        """/tokenize and /detokenize: the ids and text, or the error."""
        try:
            if request.token_ids is not None:
                ids = self.checked_ids(request.token_ids)
                return TokenizeResult(request.rid, ids, self.tokenizer.decode(ids), "")
            if request.messages is not None:
                ids, text = self.encode(GenerateRequest(request.rid, SamplingParams(), messages=request.messages))
            else:
                text = request.prompt or ""
                ids = self.tokenizer.encode(text, add_special_tokens=request.add_special_tokens)
            return TokenizeResult(request.rid, ids, text, "")
        except ValueError as exc:
            return TokenizeResult(request.rid, [], "", str(exc))

    def checked_ids(self, ids: list[int]) -> list[int]:
        vocab_size = self.tokenizer.vocab_size
        if any(not 0 <= t < vocab_size for t in ids):
            raise ValueError(f"token ids must lie in the vocabulary [0, {vocab_size})")
        return ids

    def _check_limits(self, prompt_ids: list[int], max_tokens: int) -> None:
        limit = self.max_model_len
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) + max_tokens > limit:
            raise ValueError(f"this model's maximum context length is {limit} tokens; the request asks for "
                             f"{len(prompt_ids) + max_tokens} ({len(prompt_ids)} in the prompt, {max_tokens} "
                             "to generate)")
