"""Held-out quiz items: the teacher writes questions with reference answers from a lesson's material.

They are stored apart from the dialogue and never trained on, so they measure whether the
knowledge moved into the student's weights rather than whether it memorised the lesson.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

from backends.base import ChatBackend, GenParams
from quiz.grading import STOPWORDS, key_tokens, normalise

_QA = re.compile(r"Q\s*\d*\s*[:.)]\s*(?P<q>.+?)\s*\n+\s*A\s*\d*\s*[:.)]\s*(?P<a>.+?)\s*(?=\n\s*Q\s*\d*\s*[:.)]|\Z)", re.S | re.I)


def parse_items(text: str) -> list[dict[str, str]]:
    """`Q: … / A: …` pairs from a teacher's reply; malformed pairs are skipped."""
    items = []
    for m in _QA.finditer(text.strip()):
        q, a = " ".join(m.group("q").split()), " ".join(m.group("a").split())
        if 8 <= len(q) <= 300 and 1 <= len(a) <= 300 and q.endswith("?"):
            items.append({"question": q, "answer": a})
    return items


EXAMPLE_NOTES = "The library of Brindle opens at 9 in the morning. Its oldest book is the Red Ledger."
EXAMPLE_ITEMS = (
    "Q: At what time can you first enter the Brindle library?\nA: 9 in the morning\n"
    "Q: Which book in the Brindle library is the oldest?\nA: The Red Ledger"
)


async def write_items(
    teacher: ChatBackend, teacher_name: str, topic: str, material: list[tuple[str, str]], per_section: int = 2
) -> list[dict[str, str]]:
    """`per_section` question/answer pairs per (title, notes) section, written by the teacher.

    The prompt shows one worked example as a previous turn, which even 135M models imitate.
    An item whose answer is not in the notes is a hallucination and is dropped; where the
    teacher wrote too few usable items, fill-in-the-blank items cut from the notes make up
    the rest, so every taught section is examined.
    """
    items: list[dict[str, str]] = []
    for _title, notes in material:
        if not notes.strip():
            continue
        messages = [
            {"role": "system", "content": f"You are {teacher_name}. You write quiz questions with short answers "
             f"about {topic}, taken from the notes. Word the questions differently from the notes."},
            {"role": "user", "content": f"Notes: {EXAMPLE_NOTES}"},
            {"role": "assistant", "content": EXAMPLE_ITEMS},
            {"role": "user", "content": f"Notes: {notes}"},
        ]
        reply = await teacher.chat(messages, GenParams(max_new_tokens=40 * per_section + 40, temperature=0.0))
        written = [i for i in parse_items(reply) if is_grounded(i["answer"], notes)][:per_section]
        items += written + cloze_items(notes, topic)[: per_section - len(written)]
    seen: set[str] = set()
    return [i for i in items if not (i["question"].lower() in seen or seen.add(i["question"].lower()))]


def is_grounded(answer: str, notes: str) -> bool:
    """Whether an answer's numbers and most of its content words occur in the notes."""
    keys = key_tokens(answer)
    if not keys:
        return False
    have = set(normalise(notes))
    numbers = [k for k in keys if k.replace(".", "").isdigit()]
    words = [k for k in keys if k not in numbers]
    if not all(n in have for n in numbers):
        return False
    return not words or sum(w in have for w in words) / len(words) >= 0.5


_SPAN = re.compile(r"\b(\d+(?:[,.:]\d+)*(?:\s+(?:o'clock|minutes|hours|days|years|people|percent|km|metres|meters))?"
                   r"|(?:[A-Z][\w'-]+)(?:\s+(?:of\s+|the\s+)?[A-Z][\w'-]+)*)")


def cloze_items(notes: str, topic: str) -> list[dict[str, str]]:
    """Fill-in-the-blank items: a name or number cut from a sentence of the notes becomes the answer."""
    items = []
    for sentence in re.split(r"(?<=[.!?])\s+", " ".join(notes.split())):
        spans = [m for m in _SPAN.finditer(sentence) if m.start() > 0 and m.group(0).lower() not in STOPWORDS]
        if not spans or len(sentence) < 20:
            continue
        span = spans[-1]  # "X is Y": the fact usually comes last
        blanked = sentence[: span.start()] + "___" + sentence[span.end() :]
        items.append({"question": f"About {topic}, fill in the blank: {blanked.rstrip('.')}?", "answer": span.group(0)})
    return items


def control_set() -> list[dict[str, Any]]:
    """A small fixed set of general questions that guards against forgetting."""
    text = resources.files("quiz").joinpath("control.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]
