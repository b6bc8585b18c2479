"""Build a `tokenizers.Tokenizer` from a GGUF file's vocabulary metadata (llama.cpp key names).

Byte-level BPE ("gpt2") and SentencePiece BPE ("llama") vocabularies are supported; the split regex
of byte-level ones follows `tokenizer.ggml.pre` as llama.cpp and transformers do.
"""

from __future__ import annotations

from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
           "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}


def byte_alphabet() -> dict[int, str]:
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
    if kind == "llama":
        return _sentencepiece_tokenizer(meta)
    if kind != "gpt2":
        raise ValueError(f"unsupported GGUF vocabulary type {kind!r}; supported: gpt2 (byte-level BPE), "
                         "llama (SentencePiece BPE)")
    tokens: list[str] = list(meta.get("tokenizer.ggml.tokens") or [])
    merges: list[str] = list(meta.get("tokenizer.ggml.merges") or [])
    token_types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [])
    if not tokens or not merges:
        raise ValueError("GGUF vocabulary lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
    spelling = byte_alphabet()
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


def _sentencepiece_tokenizer(meta: dict[str, Any]) -> Tokenizer:
    """A SentencePiece BPE vocabulary: merges recovered from the scores (as transformers does),
    byte fallback, and the space prefix unless tokenizer.ggml.add_space_prefix is false."""
    tokens: list[str] = list(meta.get("tokenizer.ggml.tokens") or [])
    scores: list[float] = list(meta.get("tokenizer.ggml.scores") or [])
    token_types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [])
    if not tokens or len(scores) != len(tokens):
        raise ValueError("GGUF SentencePiece vocabulary needs tokenizer.ggml.tokens and one score per token")
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=_merges_from_scores(vocab, dict(zip(tokens, scores))),
                                     fuse_unk=True, byte_fallback=True, dropout=None))
    prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
    # Spaces become "▁" and, like sentencepiece and llama.cpp, one "▁" is always prepended (tokenizers'
    # Metaspace skips it when the text already starts with a space). The text is not pre-split.
    spaces = [normalizers.Prepend("▁")] if prefix else []
    tokenizer.normalizer = normalizers.Sequence(spaces + [normalizers.Replace(" ", "▁")])
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tokenizer.decoder = decoders.Sequence(steps + ([decoders.Strip(content=" ", left=1)] if prefix else []))
    _add_marked_tokens(tokenizer, tokens, token_types, None)
    _add_bos_eos(tokenizer, {"tokenizer.ggml.add_bos_token": True, **meta}, tokens)  # llama.cpp's default
    return tokenizer


def _merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """Every split of every token into two known tokens, best-scored merge first (ties: shorter
    left part, then shorter right part, the order transformers' generate_merges gives)."""
    merges = []
    for merged, score in scores.items():
        local = [(merged[:i], merged[i:], score) for i in range(1, len(merged))
                 if merged[:i] in vocab and merged[i:] in vocab]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def _add_marked_tokens(tokenizer: Tokenizer, tokens: list[str], token_types: list[int],
                       alphabet: set[str] | None) -> None:
    """Control tokens become special (kept whole, skipped on decode); user-defined ones plain
    added tokens. In a byte-level vocabulary (`alphabet` given) a control token outside the byte
    alphabet is a llama.cpp mislabel and skipped."""
    control = [AddedToken(t, normalized=False, special=True) for t, kind in zip(tokens, token_types)
               if kind == _CONTROL and (alphabet is None or set(t) <= alphabet)]
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
