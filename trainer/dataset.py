"""From stored lessons to chat examples: the student's turns are `user`, the teacher's are `assistant`.

Each syllabus section becomes one conversation:
    user:      "Teach me about <section title> (<topic>)."   (the section's opening request)
    assistant: the teacher's explanation                    (trained on)
    user:      the student's reply or question
    assistant: the teacher's correction                     (trained on)
The source document is never in the prompt, so the knowledge has to move into the weights.
A teacher turn with a net negative score, from a model whose outputs may not be trained on,
or (grounded) that strays from its notes, stays in the conversation as context but carries
`train: false`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from sqlite_utils import Database

from lessons import panel, prompts
from lessons.guards import MIN_SUPPORT, mentions, notes_support, ungrounded_terms
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
    """Chat examples for one lesson, one per taught section, in the trainer's JSONL shape.

    In a panel section only the winning answer (the one members gave strictly the most ballots)
    follows the student's question; the other answers are left out. With no winner yet, the
    section ends at the explanation.
    """
    lesson = q.get_lesson(db, lesson_id)
    if lesson is None:
        return []
    blocked = set(no_train_teachers)
    sections = _sections(db, lesson_id)
    excluded = v.excluded_turn_ids(db, lesson_id) | _unfaithful_turn_ids(lesson, sections)
    titles = [s.get("title", "") for s in lesson["syllabus"]]
    ballots = v.ballot_counts(db, lesson_id)
    examples = []
    for section, turns in sections:
        answers = [t for t in turns if t["kind"] == panel.PANEL]
        if answers:
            best = panel.winner([t["id"] for t in answers], ballots)
            turns = [t for t in turns if t["kind"] != panel.PANEL or t["id"] == best]
        title = titles[section] if 0 <= section < len(titles) else lesson["topic"]
        messages = _conversation(turns, student_name, opening_request(title, lesson["topic"]), excluded, blocked)
        while messages[-1]["role"] == "user" and len(messages) > 2:  # a question nobody's answer won
            messages.pop()
        if any(m["role"] == "assistant" for m in messages):
            examples.append({"id": f"lesson{lesson_id}-s{section}", "lesson_id": lesson_id, "messages": messages})
        for i, qa in enumerate(question_examples(turns, student_name, excluded, blocked, lesson["topic"])):
            examples.append({"id": f"lesson{lesson_id}-s{section}-qa{i or ''}", "lesson_id": lesson_id, "messages": qa})
    return examples


def _unfaithful_turn_ids(lesson: dict[str, Any], sections: list[tuple[int, list[dict[str, Any]]]]) -> set[int]:
    """A grounded lesson's teacher turns that kept too little to their notes (`guards.notes_support`)
    or name names or numbers the notes don't have (`guards.ungrounded_terms`).

    The engine retries such a turn, but keeps the best attempt when none is good enough; that
    turn stays in the lesson as context and is not trained on, like a turn members voted down:
    a correction that says "built in 1642, and the Main Hall in 3957" would teach an invented fact.
    """
    notes = [s.get("text") or "" for s in lesson["syllabus"]]
    unfaithful = set()
    for section, turns in sections:
        if not 0 <= section < len(notes) or not notes[section]:
            continue
        grounding = f"{lesson['topic']}\n{notes[section]}"
        for t in turns:
            if t["role"] == "teacher" and (notes_support(t["content"], grounding) < MIN_SUPPORT
                                           or ungrounded_terms(t["content"], grounding)):
                unfaithful.add(t["id"])
    return unfaithful


_VERDICT = re.compile(r"^(?:(?:yes|no|correct|incorrect|right|wrong|exactly|not quite|almost|great|good|well done|"
                      r"that'?s (?:right|correct|not (?:quite )?right|wrong|incorrect))\b[^.!]{0,40}[.!,]+\s*)+", re.I)


def question_examples(
    turns: list[dict[str, Any]], student_name: str, excluded: set[int], blocked: set[str], topic: str = "",
) -> list[list[dict[str, Any]]]:
    """A section's questions and their answers as plain /ask-shaped conversations.

    The pairs of a section: the teacher's check question (the one its explanation ends on),
    answered by its correction with the verdict on the student's attempt ("Not quite.")
    dropped; and, in a grounded lesson, each of the student's own questions (one per question
    round, lessons/steps.py) with the teacher's answer to it.
    Asked directly, without the lesson around them, they are the shape of every /ask and quiz
    question: facts learnt only as a lecture are often not recalled when asked. Only answers
    that may be trained on count: not voted down (`excluded` turn ids) and not from a model
    whose outputs may not be trained on (`blocked` speakers).

    A question that doesn't name the lesson's `topic` is asked about it ("About Vellmoor: What's
    the town's famous dish?"): in the lesson the topic was plain, but asked alone the pair would
    teach the student to answer any "What's the town's famous dish?" with this town's, and a
    student taught two towns mixes them up.
    """
    def first(role: str, kind: str) -> dict[str, Any] | None:
        return next((t for t in turns if t["role"] == role and t["kind"] == kind), None)

    explain, correction = first("teacher", "explain"), first("teacher", "correct")
    pairs = []
    if explain is not None and correction is not None:
        question = prompts.check_question(explain["content"])
        if question is not None:
            pairs.append((question, correction, _VERDICT.sub("", correction["content"]).strip()))
    asked = None
    for turn in turns:
        if turn["role"] == "student" and turn["kind"] == "ask":
            asked = turn
        elif turn["role"] == "teacher" and turn["kind"] == "answer" and asked is not None:
            pairs.append((asked["content"], turn, turn["content"].strip()))
            asked = None
    return [
        [*prompts.ask(student_name), {"role": "user", "content": about(question, topic)},
         {"role": "assistant", "content": text or turn["content"], "train": True, "turn_id": turn["id"],
          "speaker": turn["speaker"]}]
        for question, turn, text in pairs
        if turn["id"] not in excluded and turn["speaker"] not in blocked
    ]


def about(question: str, topic: str) -> str:
    """`question`, asked about `topic` when it names nothing of it."""
    if not topic.strip() or mentions(question, topic):
        return question
    return f"About {topic.strip().rstrip(' .?!')}: {question}"


def _sections(db: Database, lesson_id: int) -> list[tuple[int, list[dict[str, Any]]]]:
    by_section: dict[int, list[dict[str, Any]]] = {}
    for turn in q.turns(db, lesson_id):
        by_section.setdefault(turn["section"] if turn["section"] is not None else -1, []).append(turn)
    return sorted(by_section.items())


def _conversation(turns: list[dict[str, Any]], student_name: str, opening: str, excluded: set[int],
                  blocked: set[str]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [*prompts.ask(student_name)]
    messages.append({"role": "user", "content": opening})
    for turn in turns:
        if turn["role"] == "teacher":
            if messages[-1]["role"] == "assistant":  # two teacher turns in a row: bridge them
                messages.append({"role": "user", "content": "Go on."})
            trainable = turn["id"] not in excluded and turn["speaker"] not in blocked
            messages.append({"role": "assistant", "content": turn["content"], "train": trainable,
                             "turn_id": turn["id"], "speaker": turn["speaker"]})
        elif messages[-1]["role"] == "user":
            messages[-1] = {**messages[-1], "content": messages[-1]["content"] + "\n" + turn["content"]}
        else:
            messages.append({"role": "user", "content": turn["content"]})
    return messages


def preference_examples(
    db: Database,
    lesson_id: int,
    *,
    student_name: str = "the student",
    no_train_teachers: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Chosen/rejected pairs from a lesson's panel questions, in TRL's conversational preference form.

    `prompt` is the conversation up to the student's question (system, the opening request, the
    explanation, the question); `chosen` and `rejected` are one assistant message each. Members'
    ballots, then net 👍/👎, rank the answers (see `lessons.panel.preference_pairs`). No pair uses
    a teacher whose outputs may not be trained on.
    """
    lesson = q.get_lesson(db, lesson_id)
    if lesson is None:
        return []
    blocked = set(no_train_teachers)
    ballots, nets = v.ballot_counts(db, lesson_id), v.turn_nets(db, lesson_id)
    titles = [s.get("title", "") for s in lesson["syllabus"]]
    out = []
    for section, turns in _sections(db, lesson_id):
        answers = {t["id"]: t for t in turns if t["kind"] == panel.PANEL and t["speaker"] not in blocked}
        if len(answers) < 2:
            continue
        title = titles[section] if 0 <= section < len(titles) else lesson["topic"]
        context = [t for t in turns if t["kind"] != panel.PANEL]
        prompt = [{"role": m["role"], "content": m["content"]}
                  for m in _conversation(context, student_name, opening_request(title, lesson["topic"]), set(), set())]
        if prompt[-1]["role"] != "user":
            continue  # no student question to answer
        for chosen, rejected in panel.preference_pairs(list(answers), ballots, nets):
            out.append({
                "id": f"lesson{lesson_id}-s{section}-{chosen}-{rejected}",
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": answers[chosen]["content"]}],
                "rejected": [{"role": "assistant", "content": answers[rejected]["content"]}],
                "chosen_teacher": answers[chosen]["speaker"],
                "rejected_teacher": answers[rejected]["speaker"],
            })
    return out


def to_dpo(pair: dict[str, Any]) -> dict[str, Any]:
    """One line of TRL's conversational preference format: prompt, chosen and rejected message lists."""
    return {"prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"]}


def for_trainer(example: dict[str, Any]) -> dict[str, Any]:
    """The trainer's JSONL shape: messages with role, content and train flags only, and the anchor mark."""
    msgs = []
    for m in example["messages"]:
        out = {"role": m["role"], "content": m["content"]}
        if m["role"] == "assistant":
            out["train"] = bool(m.get("train", True))
        msgs.append(out)
    if example.get("anchor"):
        return {"id": example["id"], "anchor": True, "messages": msgs}
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
