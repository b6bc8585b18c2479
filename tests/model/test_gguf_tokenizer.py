"""The tokenizer Forge builds from GGUF metadata against transformers' for the same file."""

from __future__ import annotations

import pytest

from shared.text.detokenizer import IncrementalDetokenizer
from tests.model.prompts import CHAT

TEXTS = [
    "Hello, world!",
    "def add(a, b):\n\treturn a + b  # sum\n\n\nclass X:\n    pass\n",
    "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.",
    "Emoji: 🎉🍕👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
    "   leading spaces,\t\ttabs,\n\n\nnewlines   and trailing   ",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "Numbers 1234567890 3.14159 -42 1e-9 0x1F",
    "naïve café résumé Ångström ß straße",
    "<|endoftext|>text after a special token<file_sep>",
    "",
    " ",
    "a" * 300,
]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(smollm2, hf_smollm2, text):
    _, hf_tokenizer = hf_smollm2
    assert smollm2.tokenizer.encode(text) == hf_tokenizer.encode(text)


def test_decode_matches_transformers(smollm2, hf_smollm2):
    _, hf_tokenizer = hf_smollm2
    for text in TEXTS:
        ids = hf_tokenizer.encode(text)
        assert smollm2.tokenizer.decode(ids, skip_special_tokens=False) == \
            hf_tokenizer.decode(ids, skip_special_tokens=False)
        assert smollm2.tokenizer.decode(ids) == hf_tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("messages", CHAT)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_renders_identically(smollm2, hf_smollm2, messages, add_generation_prompt):
    _, hf_tokenizer = hf_smollm2
    ours = smollm2.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    theirs = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                              tokenize=False)
    assert ours == theirs
    assert ours.startswith("<|im_start|>")


def test_special_tokens(smollm2):
    tokenizer = smollm2.tokenizer
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.encode("<|im_end|>") == [2]  # kept whole, not split into pieces


@pytest.mark.parametrize("text", [t for t in TEXTS if t.strip()])
def test_incremental_detokenizer_reassembles_text(smollm2, text):
    ids = smollm2.tokenizer.encode(text)
    detokenizer = IncrementalDetokenizer(smollm2.tokenizer, skip_special_tokens=False)
    pieces = [detokenizer.push([token_id]) for token_id in ids]
    assert "".join(pieces) == smollm2.tokenizer.decode(ids, skip_special_tokens=False)
    assert all("\ufffd" not in piece for piece in pieces), "a split UTF-8 character leaked out"


def test_detokenizer_holds_back_split_characters(smollm2):
    ids = smollm2.tokenizer.encode("🎉")
    assert len(ids) > 1, "the emoji must span several byte-level tokens for this test"
    detokenizer = IncrementalDetokenizer(smollm2.tokenizer)
    assert [detokenizer.push([t]) for t in ids] == [""] * (len(ids) - 1) + ["🎉"]
