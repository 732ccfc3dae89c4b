"""Anchors: the student's own answers to general questions, trained beside the new lessons.

A night's lessons are a few dozen examples about one thing. Trained on them alone, for the
epochs it takes to learn their facts, a small student learns that *every* question is about
them: asked the capital of France after a lesson on a fictional island, SmolLM2-135M answered
with the island. Replay of earlier lessons helps from the second night on, but the first night
has nothing to replay, and replay never covers general questions.

So each run adds anchors: general questions (trainer/anchors.jsonl, kept apart from the
gate's control set so the gate still measures something the student did not train on),
answered by the student as it is now (base model plus active adapter, greedy, exactly like
/ask). Training on its own answers costs the student little loss, and pulls it back to
answering general questions as it did, while the lesson examples move what they should.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from importlib import resources
from typing import Any

from backends.base import ChatBackend, GenParams
from lessons import prompts
from quiz.answering import answer_question


def questions() -> list[str]:
    """The bundled general questions."""
    text = resources.files("trainer").joinpath("anchors.jsonl").read_text(encoding="utf-8")
    return [json.loads(line)["question"] for line in text.splitlines() if line.strip()]


def how_many(new_examples: int, share: float) -> int:
    """Anchors for a run with `new_examples` new examples: `share` of them, at most all the questions."""
    return min(len(questions()), math.ceil(share * new_examples))


async def anchor_examples(
    backend: ChatBackend, student: str, display_name: str, params: GenParams, n: int, seed: int
) -> list[dict[str, Any]]:
    """`n` general questions, picked with `seed`, answered by the student as it is now, as training examples.

    The answers are produced concurrently, so a batching local host answers them in one decode loop.
    """
    if n <= 0:
        return []
    picked = random.Random(seed).sample(questions(), min(n, len(questions())))
    answers = await asyncio.gather(*(answer_question(backend, student, display_name, q, params) for q in picked))
    return [
        {"id": f"anchor-{i}", "anchor": True, "messages": [
            *prompts.ask(display_name), {"role": "user", "content": q},
            {"role": "assistant", "content": a, "train": True, "speaker": f"{student} (anchor)"}]}
        for i, (q, a) in enumerate(zip(picked, answers, strict=True))
        if a.strip()
    ]
