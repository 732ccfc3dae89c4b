"""Teacher panels: every teacher answers the student's question, members pick the best answer.

A panel section takes 2 + (number of teachers) turns:
  1. one teacher explains the point and asks a check question ("explain"; teachers take
     sections in turn, as in rotate mode),
  2. the student answers or asks ("reply"),
  3. every teacher in turn answers the student ("panel"), without seeing the others' answers.
Members then vote for the best answer. By default only the winner (strictly the most ballots)
trains the student; the others, ranked below it, become the rejected side of preference pairs.
"""

from __future__ import annotations

from typing import Any

from lessons import steps
from lessons.steps import Step
from lessons.syllabus import Section

PANEL = "panel"
"""The `kind` of a panel answer turn (and the lesson mode)."""


def check_request(mode: str, teachers: list[str], students: list[str]) -> str | None:
    """Why a lesson with these participants can't run in `mode`, or None when it can."""
    if mode not in ("single", "rotate", PANEL):
        return f"unknown lesson mode '{mode}' (use single, rotate or panel)"
    for role, names in (("teacher", teachers), ("student", students)):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            return f"{', '.join(twice)} is named twice as {role}"
    if mode == PANEL and len(teachers) < 2:
        return "a panel needs at least two teachers (teachers:a,b)"
    return None


def turns_per_section(teachers: list[str]) -> int:
    """How many turns one syllabus section of a panel lesson takes."""
    return 2 + len(teachers)


def lesson_turns(mode: str, sections: list[Section], teachers: list[str], grounded: bool) -> int:
    """How many turns cover a lesson's whole syllabus in its mode (single and rotate: lessons/steps.py)."""
    if mode == PANEL:
        return len(sections) * turns_per_section(teachers)
    return steps.lesson_turns(sections, grounded)


def next_step(n_sections: int, done_turns: int, teachers: list[str], students: list[str], max_turns: int) -> Step | None:
    """The panel turn after `done_turns` turns, or None when the syllabus is covered or the limit reached."""
    if done_turns >= max_turns:
        return None
    section, phase = divmod(done_turns, turns_per_section(teachers))
    if section >= n_sections:
        return None
    if phase == 0:
        return Step(role="teacher", speaker=teachers[section % len(teachers)], kind="explain", section=section)
    if phase == 1:
        return Step(role="student", speaker=students[section % len(students)], kind="reply", section=section)
    # who answers first moves with the section, so no teacher always has the first word
    return Step(role="teacher", speaker=teachers[(section + phase - 2) % len(teachers)], kind=PANEL, section=section)


def recent_turns(kind: str, done: list[dict[str, Any]]) -> list[str]:
    """The turns a new reply must not echo. Panel answers don't see each other, so two teachers
    agreeing is not an echo; only the student's question and the explanation count."""
    recent = done[-2:]
    if kind == PANEL:
        recent = [t for t in recent if t["kind"] != PANEL]
    return [t["content"] for t in recent]


def winner(answers: list[int], ballots: dict[int, int]) -> int | None:
    """The answer (turn id) with strictly the most ballots, or None on a tie or with no ballots."""
    ranked = sorted(answers, key=lambda a: -ballots.get(a, 0))
    if not ranked or ballots.get(ranked[0], 0) == 0:
        return None
    if len(ranked) > 1 and ballots.get(ranked[1], 0) == ballots.get(ranked[0], 0):
        return None
    return ranked[0]


def preference_pairs(answers: list[int], ballots: dict[int, int], nets: dict[int, int]) -> list[tuple[int, int]]:
    """(chosen, rejected) turn ids among one question's answers.

    An answer is scored by (ballots, net 👍/👎). The best answer is chosen over every answer that
    scores strictly lower; with no strict best there are no pairs (members did not prefer one)."""
    score = {a: (ballots.get(a, 0), nets.get(a, 0)) for a in answers}
    ranked = sorted(answers, key=lambda a: score[a], reverse=True)
    if len(ranked) < 2 or score[ranked[0]] == score[ranked[1]]:
        return []
    best = ranked[0]
    return [(best, other) for other in ranked[1:] if score[other] < score[best]]
