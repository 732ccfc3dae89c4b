"""From stored lessons to chat examples: the student's turns are `user`, the teacher's are `assistant`.

Each syllabus section becomes one conversation:
    user:      "Teach me about <section title> (<topic>)."   (the section's opening request)
    assistant: the teacher's explanation                    (trained on)
    user:      the student's reply or question
    assistant: the teacher's correction                     (trained on)
The source document is never in the prompt, so the knowledge has to move into the weights.
A teacher turn with a net negative score, or from a model whose outputs may not be trained
on, stays in the conversation as context but carries `train: false`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from sqlite_utils import Database

from lessons import prompts
from storage import lessons as q
from storage import votes as v


def opening_request(title: str, topic: str) -> str:
    """The user message that stands for "teach me this section" in training and in evaluation."""
    title = title.rstrip(" .…")
    if topic.lower() in title.lower():
        return f"Teach me about {title}."
    return f"Teach me about {title} ({topic})."


def lesson_examples(
    db: Database,
    lesson_id: int,
    *,
    student_name: str = "the student",
    no_train_teachers: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Chat examples for one lesson, one per taught section, in the trainer's JSONL shape."""
    lesson = q.get_lesson(db, lesson_id)
    if lesson is None:
        return []
    blocked = set(no_train_teachers)
    excluded = v.excluded_turn_ids(db, lesson_id)
    titles = [s.get("title", "") for s in lesson["syllabus"]]
    by_section: dict[int, list[dict[str, Any]]] = {}
    for turn in q.turns(db, lesson_id):
        by_section.setdefault(turn["section"] if turn["section"] is not None else -1, []).append(turn)
    examples = []
    for section, turns in sorted(by_section.items()):
        title = titles[section] if 0 <= section < len(titles) else lesson["topic"]
        messages: list[dict[str, Any]] = [*prompts.ask(student_name)]
        messages.append({"role": "user", "content": opening_request(title, lesson["topic"])})
        for turn in turns:
            if turn["role"] == "teacher":
                if messages[-1]["role"] == "assistant":  # two teacher turns in a row: bridge them
                    messages.append({"role": "user", "content": "Go on."})
                trainable = turn["id"] not in excluded and turn["speaker"] not in blocked
                messages.append({"role": "assistant", "content": turn["content"], "train": trainable,
                                 "turn_id": turn["id"], "speaker": turn["speaker"]})
            else:
                if messages[-1]["role"] == "user":
                    messages[-1] = {**messages[-1], "content": messages[-1]["content"] + "\n" + turn["content"]}
                else:
                    messages.append({"role": "user", "content": turn["content"]})
        if any(m["role"] == "assistant" for m in messages):
            examples.append({"id": f"lesson{lesson_id}-s{section}", "lesson_id": lesson_id, "messages": messages})
    return examples


def for_trainer(example: dict[str, Any]) -> dict[str, Any]:
    """The trainer's JSONL shape: messages with role, content and train flags only."""
    msgs = []
    for m in example["messages"]:
        out = {"role": m["role"], "content": m["content"]}
        if m["role"] == "assistant":
            out["train"] = bool(m.get("train", True))
        msgs.append(out)
    return {"id": example["id"], "messages": msgs}


def data_hash(examples: Iterable[dict[str, Any]]) -> str:
    """A stable hash of what a model is trained on, recorded with every run and adapter."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(for_trainer(ex), sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def dedupe(examples: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop examples whose trainable content is identical to an earlier one."""
    seen: set[str] = set()
    out = []
    for ex in examples:
        key = json.dumps(for_trainer(ex)["messages"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(ex)
    return out


def to_openai(example: dict[str, Any]) -> dict[str, Any]:
    """OpenAI fine-tuning chat JSONL; `weight: 0` marks assistant turns not to learn from."""
    msgs = []
    for m in example["messages"]:
        out: dict[str, Any] = {"role": m["role"], "content": m["content"]}
        if m["role"] == "assistant":
            out["weight"] = 1 if m.get("train", True) else 0
        msgs.append(out)
    return {"messages": msgs}


def to_sharegpt(example: dict[str, Any]) -> dict[str, Any]:
    """ShareGPT conversations. The format has no per-turn weights, so use openai format to keep them."""
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in example["messages"]]}
