"""Answers cut by the token limit end at their last complete sentence (models.chat.end_at_last_sentence),
and the Arena records which sides were cut."""

from __future__ import annotations

import pytest

from models.chat import end_at_last_sentence


@pytest.mark.parametrize("text, expected, trimmed", [
    ("One. Two sentences end here! And a third one that is cut", "One. Two sentences end here!", True),
    ("Here is code:\n\n```python\nprint(1)\n```\n\nThat prints one. Then more text is",
     "Here is code:\n\n```python\nprint(1)\n```\n\nThat prints one.", True),
    ("A list:\n\n1. **First** item is good.\n2. Second item is cut off mid",
     "A list:\n\n1. **First** item is good.", True),  # "2." opens a list item; it ends no sentence
    ("She said \"stop, please, now.\" Then it was cut", "She said \"stop, please, now.\"", True),
    ("Paris. It has many museums, parks and old bridges, and the Louvre is a", None, False),  # would keep < 30%
    ("no punctuation at all in this long answer that goes on", None, False),
    ("```python\nx = 1.\ny = 2\nprint(x + y) and then the loop", None, False),  # would end inside a fence
    ("Already complete.", None, False),
])
def test_cut_answers_end_at_their_last_sentence(text, expected, trimmed):
    assert end_at_last_sentence(text) == (expected if trimmed else text, trimmed)
