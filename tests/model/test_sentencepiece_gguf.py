"""A SentencePiece vocabulary written into GGUF metadata encodes exactly as sentencepiece itself."""

from __future__ import annotations

import io

import pytest

from shared.text.tokenizer import Tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.", "Tokenizers split text into pieces.",
    "def main():\n    return 42", "Numbers like 1234 and 3.14 appear too.", "naïve café résumé",
    "Sentencepiece treats whitespace as a symbol.", "Hello hello HELLO, world!",
] * 40
TEXTS = ["Hello world", "The lazy dog jumps.", "  leading and   inner   spaces", "tabs\tand\nnewlines\n\n",
         "unseen characters: 東京 🎉 ß", "1234567890", "", "café", "trailing space "]


@pytest.fixture(scope="module")
def spm():
    sentencepiece = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=400, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, character_coverage=1.0, split_digits=True)
    return sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())


def _gguf_metadata(spm, **flags) -> dict:
    def kind(i: int) -> int:
        return 2 if spm.is_unknown(i) else 3 if spm.is_control(i) else 6 if spm.is_byte(i) else 1

    n = spm.get_piece_size()
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [spm.id_to_piece(i) for i in range(n)],
            "tokenizer.ggml.scores": [spm.get_score(i) for i in range(n)],
            "tokenizer.ggml.token_type": [kind(i) for i in range(n)],
            "tokenizer.ggml.bos_token_id": spm.bos_id(), "tokenizer.ggml.eos_token_id": spm.eos_id(),
            "tokenizer.ggml.unknown_token_id": spm.unk_id(), **flags}


@pytest.mark.parametrize("text", TEXTS)
def test_encodes_like_sentencepiece(spm, text):
    tokenizer = Tokenizer.from_gguf_metadata(_gguf_metadata(spm))
    assert tokenizer.encode(text, add_special_tokens=False) == spm.encode(text)
    assert tokenizer.encode(text) == [spm.bos_id()] + spm.encode(text)  # llama.cpp adds BOS by default
    assert tokenizer.decode(spm.encode(text)) == spm.decode(spm.encode(text))


def test_special_tokens_written_in_text_are_recognized(spm):
    """Unlike sentencepiece, and like transformers: chat templates write BOS/EOS as text."""
    tokenizer = Tokenizer.from_gguf_metadata(_gguf_metadata(spm))
    ids = tokenizer.encode("<s>Hi</s>", add_special_tokens=False)
    assert ids[0] == spm.bos_id() and ids[-1] == spm.eos_id()


def test_bos_and_eos_flags_are_honoured(spm):
    tokenizer = Tokenizer.from_gguf_metadata(_gguf_metadata(spm, **{"tokenizer.ggml.add_bos_token": False,
                                                                    "tokenizer.ggml.add_eos_token": True}))
    assert tokenizer.encode("Hello") == spm.encode("Hello") + [spm.eos_id()]


def test_unknown_vocabulary_types_are_refused(spm):
    with pytest.raises(ValueError, match="unsupported GGUF vocabulary type 'bert'.*llama"):
        Tokenizer.from_gguf_metadata(_gguf_metadata(spm, **{"tokenizer.ggml.model": "bert"}))
