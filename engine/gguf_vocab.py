"""Build a `tokenizers.Tokenizer` from a GGUF file's vocabulary metadata (llama.cpp key names).

Byte-level BPE ("gpt2") vocabularies are supported; the split regex follows `tokenizer.ggml.pre`
as llama.cpp and transformers do.
"""

from __future__ import annotations

from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
           "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(c) for byte, c in zip(printable, chars)}


def build_gguf_tokenizer(meta: dict[str, Any]) -> Tokenizer:
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"unsupported GGUF vocabulary type {kind!r}; supported: gpt2 (byte-level BPE)")
    tokens: list[str] = list(meta.get("tokenizer.ggml.tokens") or [])
    merges: list[str] = list(meta.get("tokenizer.ggml.merges") or [])
    token_types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [])
    if not tokens or not merges:
        raise ValueError("GGUF vocabulary lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
    spelling = _byte_alphabet()
    alphabet = set(spelling.values())

    def respell(token: str) -> str:  # a token outside the byte alphabet is spelled byte by byte
        return token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8"))

    vocab = {respell(token): index for index, token in enumerate(tokens)}
    pairs = [tuple(merge.split(" ")) for merge in merges]
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError("GGUF vocabulary has a malformed merge (expected 'left right')")
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, dropout=None, unk_token=None,
                                     continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                                     byte_fallback=False))
    split = _SPLITS.get(meta.get("tokenizer.ggml.pre"))
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    _add_marked_tokens(tokenizer, tokens, token_types, alphabet)
    _add_bos_eos(tokenizer, meta, tokens)
    return tokenizer


def _add_marked_tokens(tokenizer: Tokenizer, tokens: list[str], token_types: list[int],
                       alphabet: set[str]) -> None:
    """Control tokens become special (kept whole, skipped on decode); user-defined ones plain
    added tokens. A control token outside the byte alphabet is a llama.cpp mislabel and skipped."""
    control = [AddedToken(t, normalized=False, special=True)
               for t, kind in zip(tokens, token_types) if kind == _CONTROL and set(t) <= alphabet]
    tokenizer.add_special_tokens(control)
    vocab = tokenizer.get_vocab()
    user = [AddedToken(t, normalized=False, special=False)
            for t, kind in zip(tokens, token_types) if kind == _USER_DEFINED and t in vocab]
    tokenizer.add_tokens(user)


def _add_bos_eos(tokenizer: Tokenizer, meta: dict[str, Any], tokens: list[str]) -> None:
    """Honour tokenizer.ggml.add_bos_token / add_eos_token with a template post-processor."""
    pieces_before, pieces_after, special = [], [], []
    for flag, key, where in (("add_bos_token", "bos_token_id", pieces_before),
                             ("add_eos_token", "eos_token_id", pieces_after)):
        token_id = meta.get(f"tokenizer.ggml.{key}")
        if meta.get(f"tokenizer.ggml.{flag}") and token_id is not None and 0 <= token_id < len(tokens):
            where.append(tokens[token_id])
            special.append((tokens[token_id], int(token_id)))
    if special:
        single = " ".join([*pieces_before, "$A", *pieces_after])
        tokenizer.post_processor = processors.TemplateProcessing(single=single, special_tokens=special)
