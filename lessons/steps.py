"""Which turn comes next: the order of turns in a syllabus section, by lesson mode.

A section of a single or rotate lesson is taught in three turns:
  1. the teacher explains one point and asks a check question ("explain"),
  2. the student answers or asks a follow-up ("reply"),
  3. the teacher confirms or corrects and restates the key fact ("correct").
A grounded lesson (one taught from a source document) adds a question round:
  4. the student asks one question about the section's facts ("ask"),
  5. the teacher answers it from the notes ("answer").
Members test a student with questions (/ask, quizzes), and facts a student met only as a
lecture are often not recalled when asked: a question with its grounded answer is the shape
the student will be tested in. Ungrounded lessons don't get the round, because an ungrounded
teacher's answer adds no facts its explanation lacked.

Panel lessons have their own order (lessons/panel.py). Which order a lesson follows depends
only on what is stored with it (mode, teachers, source), so a resumed lesson continues where
it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

PHASES = ("explain", "reply", "correct")
QUESTION_ROUND = ("ask", "answer")


@dataclass(frozen=True)
class Step:
    """The next turn to produce."""

    role: str
    speaker: str
    kind: str
    section: int


def phases(grounded: bool) -> tuple[str, ...]:
    """The turn kinds of one section of a single or rotate lesson."""
    return PHASES + QUESTION_ROUND if grounded else PHASES


def next_step(
    n_sections: int, done_turns: int, teachers: list[str], students: list[str], max_turns: int, grounded: bool = False
) -> Step | None:
    """The turn after `done_turns` turns, or None when the syllabus is covered or the limit reached.

    Teachers and students rotate by section."""
    if done_turns >= max_turns:
        return None
    kinds = phases(grounded)
    section, phase = divmod(done_turns, len(kinds))
    if section >= n_sections:
        return None
    kind = kinds[phase]
    if kind in ("reply", "ask"):
        return Step(role="student", speaker=students[section % len(students)], kind=kind, section=section)
    return Step(role="teacher", speaker=teachers[section % len(teachers)], kind=kind, section=section)
