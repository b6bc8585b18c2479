"""A varied prompt set for golden tests."""

from __future__ import annotations

CHAT = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Write a haiku about the sea."}],
]

PLAIN = [
    "The quick brown fox",
    "日本の首都は東京です。中国の首都は",
    "I love 🍕 and 🎉 because",
    "def fibonacci(n):\n    ",
]


def long_text(min_words: int = 900) -> str:
    """A document of over 1,000 tokens (several scheduler chunks)."""
    topics = ["rivers", "mountains", "libraries", "compilers", "orchards", "harbours", "telescopes"]
    sentences = []
    i = 0
    while sum(len(s.split()) for s in sentences) < min_words:
        topic = topics[i % len(topics)]
        sentences.append(f"Note {i}: the study of {topic} shows that item {i * 7 % 13} differs from "
                         f"item {i * 5 % 11} in {i % 4 + 2} ways, as the survey of {1900 + i} found.")
        i += 1
    return " ".join(sentences) + "\nSummary of the notes above:"
