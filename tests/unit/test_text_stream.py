"""TextStream: stop strings are never partly emitted, whatever the token boundaries."""

from __future__ import annotations

import pytest

from shared.text.text_stream import TextStream
from shared.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers

    chars = sorted(set("abcdefghijklmnopqrstuvwxyz .,!END\n"))
    backend = Backend(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    return Tokenizer(backend, None, None, None)


def run(tokenizer, text: str, stop: list[str], chunk: int = 1) -> tuple[list[str], str, bool]:
    ids = tokenizer.encode(text)
    stream = TextStream(tokenizer, stop)
    pieces = [stream.push(ids[i:i + chunk]) for i in range(0, len(ids), chunk)]
    return pieces, "".join(pieces) + stream.finish(), stream.stopped


@pytest.mark.parametrize("chunk", [1, 2, 5, 100])
def test_stop_string_cuts_the_text_and_is_never_emitted(tokenizer, chunk):
    pieces, text, stopped = run(tokenizer, "hello world. END of story", ["END"], chunk)
    assert stopped and text == "hello world. "
    assert not any("E" in p for p in pieces)


def test_earliest_of_several_stop_strings_wins(tokenizer):
    _, text, stopped = run(tokenizer, "abc, def. ghi", [".", ","])
    assert stopped and text == "abc"


def test_no_stop_releases_everything_at_finish(tokenizer):
    pieces, text, stopped = run(tokenizer, "plain text here", ["xyz"])
    assert not stopped and text == "plain text here"
    assert "".join(pieces) == "plain text he"  # two characters held back until the end


def test_without_stop_strings_nothing_is_held_back(tokenizer):
    pieces, text, _ = run(tokenizer, "abc", [])
    assert pieces == ["a", "b", "c"] and text == "abc"


def test_a_near_miss_is_released(tokenizer):
    _, text, stopped = run(tokenizer, "the EN is not END", ["END"])
    assert stopped and text == "the EN is not "
