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
from lessons import prompts

_QA = re.compile(r"Q\s*\d*\s*[:.)]\s*(?P<q>.+?)\s*\n+\s*A\s*\d*\s*[:.)]\s*(?P<a>.+?)\s*(?=\n\s*Q\s*\d*\s*[:.)]|\Z)", re.S | re.I)


def parse_items(text: str) -> list[dict[str, str]]:
    """`Q: … / A: …` pairs from a teacher's reply; malformed pairs are skipped."""
    items = []
    for m in _QA.finditer(text.strip()):
        q, a = " ".join(m.group("q").split()), " ".join(m.group("a").split())
        if 8 <= len(q) <= 300 and 1 <= len(a) <= 300 and q.endswith("?"):
            items.append({"question": q, "answer": a})
    return items


async def write_items(
    teacher: ChatBackend, teacher_name: str, topic: str, material: list[tuple[str, str]], per_section: int = 2
) -> list[dict[str, str]]:
    """Ask the teacher for `per_section` question/answer pairs per (title, notes) section."""
    items: list[dict[str, str]] = []
    for title, notes in material:
        if not notes.strip():
            continue
        messages = [
            {"role": "system", "content": prompts.teacher_system(teacher_name, topic, notes)},
            {"role": "user", "content": f"Write {per_section} quiz questions about '{title}', each with a short answer "
             "taken from the notes. Word the questions differently from the notes.\nFormat:\nQ: ...?\nA: ..."},
        ]
        reply = await teacher.chat(messages, GenParams(max_new_tokens=160, temperature=0.0))
        items += parse_items(reply)[:per_section]
    seen: set[str] = set()
    return [i for i in items if not (i["question"].lower() in seen or seen.add(i["question"].lower()))]


def control_set() -> list[dict[str, Any]]:
    """A small fixed set of general questions that guards against forgetting."""
    text = resources.files("quiz").joinpath("control.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]
