"""A quiz game's rules, without Discord: which items are asked, how answers are graded, what the
teacher says at the reveal, and who won.

The student answers without seeing the members' answers and members can't see the
student's: its answer is shown when the round closes, together with the reference.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backends.base import BackendError, ChatBackend, GenParams, Message
from lessons import prompts
from lessons.guards import clean_reply
from quiz.grading import Grade, grade_reference, grade_with_judge

log = logging.getLogger(__name__)

DEFAULT_QUESTIONS = 3
MAX_QUESTIONS = 10
DEFAULT_SECONDS = 30
"""How long members may answer each question."""
MAX_ANSWER_CHARS = 300


def pick(items: list[dict[str, Any]], n: int, rng: random.Random | None = None) -> list[dict[str, Any]]:
    """`n` items drawn at random (all of them when there are fewer), asked in the order they were written."""
    chosen = items if len(items) <= n else (rng or random.Random()).sample(items, n)
    return sorted(chosen, key=lambda i: i["id"])


def reference_text(item: dict[str, Any]) -> str | None:
    """What counts as right, in words: the reference answer, else the keywords; None when neither."""
    if item.get("answer"):
        return str(item["answer"])
    keywords = item.get("keywords") or []
    if keywords:
        return ", ".join(k.replace("|", " or ") for k in keywords)
    return None


async def grade(answer: str, item: dict[str, Any], judge: ChatBackend | None = None) -> Grade:
    """Grade one answer: by a capable teacher (`judge`) when given and there is a reference, else by keywords.

    A judge that fails falls back to the reference grader, so a flaky API never loses a round.
    """
    if not answer.strip():
        return Grade(correct=False if item.get("answer") or item.get("keywords") else None, score=0.0, grader="empty")
    if judge is not None and item.get("answer"):
        try:
            return await grade_with_judge(judge, item["question"], answer, item["answer"])
        except BackendError as e:
            log.warning("judge %s failed on item %s; grading by reference instead: %s", judge.name, item.get("id"), e)
    return grade_reference(answer, item.get("answer"), item.get("keywords"))


def correction_messages(teacher_name: str, topic: str, question: str, reference: str) -> list[Message]:
    """Ask the teacher to state the right answer as it would to a student who got it wrong."""
    return [
        {"role": "system", "content": prompts.teacher_system(teacher_name, topic, f"Q: {question}\nA: {reference}")},
        {"role": "user", "content": f"{question}\n\n(Answer in one or two sentences, stating the answer "
                                    f"\"{reference}\" plainly.)"},
    ]


async def teacher_correction(teacher: ChatBackend, teacher_name: str, topic: str, item: dict[str, Any]) -> str:
    """The teacher's phrasing of the right answer; the reference itself when the phrasing misses it.

    This text becomes a training example once a curator approves a correction, so it must
    state the reference: a phrasing the grader doesn't find the reference in is not used.
    """
    reference = reference_text(item)
    if reference is None:
        return ""
    try:
        text = await teacher.chat(correction_messages(teacher_name, topic, item["question"], reference),
                                  GenParams(max_new_tokens=120, temperature=0.0))
    except BackendError as e:
        log.warning("teacher %s could not phrase the answer to item %s: %s", teacher.name, item.get("id"), e)
        return reference
    text = clean_reply(text, own_labels=[teacher.name, teacher_name, "assistant", "teacher"],
                       other_labels=["user", "student"]) or text.strip()
    if text and grade_reference(text, item.get("answer"), item.get("keywords")).correct:
        return text
    return reference


@dataclass(frozen=True)
class Standing:
    """One player's result in a game."""

    answerer: str
    kind: str  # model | member
    correct: int
    answered: int


def standings(rows: list[dict[str, Any]]) -> list[Standing]:
    """Scoreboard rows (storage.quiz.scoreboard) as standings, best first."""
    return [Standing(r["answerer"], r["kind"], int(r["correct"]), int(r["answered"])) for r in rows]


def scoreboard_lines(results: list[Standing], questions: int, student_name: str, name_of: Callable[[str], str]) -> list[str]:
    """The closing scoreboard: the student, each member, and who won, in a member's words."""
    student = next((s for s in results if s.kind == "model"), None)
    members = [s for s in results if s.kind == "member"]
    student_right = student.correct if student else 0
    lines = [f"🤖 **{student_name}**: {student_right}/{questions}"]
    if not members:
        lines.append("👥 No member answered this time.")
        return lines
    medals = ["🥇", "🥈", "🥉"]
    for i, s in enumerate(members[:20]):
        lines.append(f"{medals[i] if i < len(medals) else '•'} {name_of(s.answerer)}: {s.correct}/{questions}")
    if len(members) > 20:
        lines.append(f"… and {len(members) - 20} more")
    best = max(s.correct for s in members)
    if best > student_right:
        lines.append(f"🏆 The class beat {student_name}.")
    elif best < student_right:
        lines.append(f"🏆 {student_name} beat the class.")
    else:
        lines.append(f"🤝 {student_name} and the best of the class tied.")
    return lines
