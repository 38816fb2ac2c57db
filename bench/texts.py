"""The texts of the benchmark: what the clients send, what the fake LLM answers, and what the
pre-filled conversation histories hold (same sizes as a real chat of the benchmark)."""

from __future__ import annotations


def expected_text(tokens: int) -> str:
    """What the fake LLM streams with --tokens N (fake_llm.Script.numbered)."""
    return "".join(f"token{i}" if i == 1 else f" token{i}" for i in range(1, tokens + 1))


def message_content(index: int) -> str:
    # Same length every time, different text: token counts are memoised per text.
    return f"Benchmark message {index:07d}: please answer in a few words."


def history_content(position: int) -> str:
    """A pre-filled user turn at `position` of a branch: as long as message_content(), and the
    same text at that position in every conversation (as the worker's token-count memo would
    hold a real conversation's older turns from its previous prompts)."""
    return f"Benchmark history {position:07d}: please answer in a few words."
