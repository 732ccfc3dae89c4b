"""Splitting model text into Discord messages: within the limit, nothing lost, code fences balanced."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.common.text import FENCE, split_message

pieces = st.one_of(
    st.text(alphabet="abcdefghij", min_size=1, max_size=30),
    st.sampled_from([" ", " ", ". ", "! ", "\n", "\n\n", "```python\n", "\n```\n", "x" * 120]),
)
texts = st.lists(pieces, max_size=300).map("".join)


def fence_lines(chunk: str) -> int:
    return sum(1 for line in chunk.split("\n") if line.strip().startswith(FENCE))


def content(text: str) -> str:
    """The text without fence lines and whitespace: what a reader must find again."""
    kept = [line for line in text.split("\n") if not line.strip().startswith(FENCE)]
    return re.sub(r"\s+", "", "".join(kept))


@settings(max_examples=300, deadline=None)
@given(text=texts, limit=st.integers(min_value=60, max_value=400))
def test_chunks_fit_keep_every_character_and_balance_fences(text, limit):
    chunks = split_message(text, limit)

    assert all(0 < len(c) <= limit for c in chunks)
    assert all(fence_lines(c) % 2 == 0 for c in chunks)
    assert content("\n".join(chunks)) == content(text)


def test_short_text_is_one_message_untouched():
    assert split_message("Hello there.\n\nBye.") == ["Hello there.\n\nBye."]
    assert split_message("  \n ") == []


def test_prefers_paragraphs_then_sentences_over_cutting_words():
    para = "First sentence here. " * 40  # ~840 characters
    chunks = split_message(f"{para.strip()}\n\n{para.strip()}\n\n{para.strip()}", 2000)
    assert len(chunks) == 2 and chunks[0].endswith("here.") and chunks[1].startswith("First")

    one_paragraph = "Words go on and on. " * 150
    chunks = split_message(one_paragraph, 2000)
    assert all(c.endswith(".") for c in chunks[:-1])  # cut after a sentence, never inside a word


def test_a_code_block_cut_in_two_is_closed_and_reopened_with_its_language():
    code = "```python\n" + "\n".join(f"value_{i} = {i}" for i in range(300)) + "\n```"
    chunks = split_message(code, 2000)
    assert len(chunks) >= 2
    assert chunks[0].startswith("```python\n") and chunks[0].endswith("\n```")
    assert all(c.startswith("```python\n") for c in chunks[1:])
    assert chunks[-1].endswith("```")


def test_an_unclosed_fence_is_closed():
    assert split_message("```\nprint(1)") == ["```\nprint(1)\n```"]
