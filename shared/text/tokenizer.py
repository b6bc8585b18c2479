"""Text <-> token ids for one model, plus its chat template and special tokens."""

from __future__ import annotations

import json
import os
from typing import Any

import tokenizers

from shared.text.chat_template import render_chat_template
from shared.text.gguf_vocab import build_gguf_tokenizer


class Tokenizer:
    def __init__(self, backend: tokenizers.Tokenizer, chat_template: str | None, bos_token: str | None,
                 eos_token: str | None) -> None:
        self.backend = backend
        self.chat_template = chat_template  # None: the model has no template; chat is refused
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.eos_token_id = None if eos_token is None else backend.token_to_id(eos_token)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            tools: list[dict[str, Any]] | None = None) -> str:
        """`tools`: OpenAI-shaped tool definitions, shown to the model as transformers shows them."""
        if self.chat_template is None:
            raise ValueError("this model has no chat template; send a plain prompt instead")
        return render_chat_template(self.chat_template, messages, add_generation_prompt,
                                    bos_token=self.bos_token or "", eos_token=self.eos_token or "", tools=tools)

    @classmethod
    def from_json(cls, tokenizer_json: str, chat_template: str | None, bos_token: str | None,
                  eos_token: str | None) -> Tokenizer:
        """Rebuild a tokenizer sent over the wire (see EngineReady)."""
        return cls(tokenizers.Tokenizer.from_str(tokenizer_json), chat_template, bos_token, eos_token)

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any]) -> Tokenizer:
        try:
            backend = build_gguf_tokenizer(meta)
        except ValueError:
            raise
        except Exception as exc:  # tokenizers' own refusals (a merge of unknown tokens...) are bare Exceptions
            raise ValueError(f"the tokenizer in the GGUF metadata is invalid: {exc}") from exc
        tokens = meta["tokenizer.ggml.tokens"]

        def token(key: str) -> str | None:
            index = meta.get(f"tokenizer.ggml.{key}")
            return tokens[index] if index is not None and 0 <= index < len(tokens) else None

        return cls(backend, meta.get("tokenizer.chat_template"), token("bos_token_id"), token("eos_token_id"))

    @classmethod
    def from_hf_dir(cls, path: str) -> Tokenizer:
        backend = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        config: dict[str, Any] = {}
        config_path = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        template = config.get("chat_template")
        template_path = os.path.join(path, "chat_template.jinja")
        if os.path.isfile(template_path):
            with open(template_path, encoding="utf-8") as f:
                template = f.read()
        return cls(backend, template, _token_text(config.get("bos_token")), _token_text(config.get("eos_token")))


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json spells special tokens as strings or as {"content": ...} dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value
