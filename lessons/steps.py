"""Which turn comes next: the order of turns in a syllabus section, by lesson mode.

A section of a single or rotate lesson is taught in three turns:
  1. the teacher explains one point and asks a check question ("explain"),
  2. the student answers or asks a follow-up ("reply"),
  3. the teacher confirms or corrects and restates the key fact ("correct").
A grounded lesson (one taught from a source document) adds question rounds, ASKS_PER_SENTENCE
per fact sentence of the section's notes (up to MAX_ASKED_SENTENCES sentences), a pass over the
sentences and then another:
  4. the student asks one question about that sentence's facts ("ask"),
  5. the teacher answers it from the notes ("answer").
Members test a student with questions (/ask, quizzes), and facts a student met only as a
lecture are often not recalled when asked: a question with its grounded answer is the shape
the student will be tested in. One round per sentence means every fact of a short section is
asked about, not just the first one a student happens to pick; asking each twice, in other
words the second time, gives the student two ways into a fact instead of one question it learns
by heart (bench/README.md has what it measured). Ungrounded lessons don't get
the rounds, because an ungrounded teacher's answer adds no facts its explanation lacked.

Panel lessons have their own order (lessons/panel.py). Which order a lesson follows depends
only on what is stored with it (mode, teachers, source), so a resumed lesson continues where
it stopped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from lessons.syllabus import Section

PHASES = ("explain", "reply", "correct")
QUESTION_ROUND = ("ask", "answer")
MAX_ASKED_SENTENCES = 3  # sentences asked about per section
ASKS_PER_SENTENCE = 2


@dataclass(frozen=True)
class Step:
    """The next turn to produce."""

    role: str
    speaker: str
    kind: str
    section: int
    question_round: int = 0  # which question round of its section an "ask" or "answer" belongs to


_SENTENCE = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]*[A-Z0-9])|\n\s*\n")
_WORD = re.compile(r"[A-Za-z]{3,}|\d+")


_PRONOUN = re.compile(r"^(?:she|he|it|its|they|their|his|her|this|these)\b", re.I)


def fact_sentences(notes: str) -> list[str]:
    """A section's notes as facts: its sentences, leaving out those too short to hold a fact
    ("Yes."), each with the ones after it that open with a pronoun.

    "The mayor of Vellmoor is Ada Quill. She was elected in 2019." is one fact: "She was elected
    in 2019" alone says nothing of whose election, and "The mayor of Vellmoor is Ada Quill" alone,
    taught as the answer to every question about the mayor, is what a student then says when
    asked when she was elected. A question round asks about the whole, and an answer tells it."""
    facts: list[str] = []
    for part in (" ".join(p.split()) for p in _SENTENCE.split(notes.strip())):
        if len(_WORD.findall(part)) < 3:
            continue
        if facts and _PRONOUN.match(part):
            facts[-1] = f"{facts[-1]} {part}"
        else:
            facts.append(part)
    return facts


def focus_sentences(section: Section) -> list[str]:
    """The sentences a grounded section's question rounds ask about (`round_sentences` asks each
    ASKS_PER_SENTENCE times): every one, or for a long section MAX_ASKED_SENTENCES spread over it."""
    facts = fact_sentences(section.text)
    if len(facts) <= MAX_ASKED_SENTENCES:
        return facts
    return [facts[k * len(facts) // MAX_ASKED_SENTENCES] for k in range(MAX_ASKED_SENTENCES)]


def round_sentences(section: Section) -> list[str]:
    """The sentence each question round of a grounded section is about, in order: every focus
    sentence, then every one again (asked the second time in other words)."""
    return focus_sentences(section) * ASKS_PER_SENTENCE


def section_kinds(section: Section, grounded: bool) -> tuple[str, ...]:
    """The turn kinds of one section of a single or rotate lesson, in order."""
    if not grounded:
        return PHASES
    return PHASES + QUESTION_ROUND * max(1, len(round_sentences(section)))


def lesson_turns(sections: Sequence[Section], grounded: bool) -> int:
    """How many turns cover the whole syllabus."""
    return sum(len(section_kinds(s, grounded)) for s in sections)


def next_step(
    sections: Sequence[Section], done_turns: int, teachers: list[str], students: list[str], max_turns: int,
    grounded: bool = False,
) -> Step | None:
    """The turn after `done_turns` turns, or None when the syllabus is covered or the limit reached.

    Teachers and students rotate by section."""
    if done_turns >= max_turns:
        return None
    phase = done_turns
    for section, notes in enumerate(sections):
        kinds = section_kinds(notes, grounded)
        if phase < len(kinds):
            kind = kinds[phase]
            role, cast = ("student", students) if kind in ("reply", "ask") else ("teacher", teachers)
            return Step(role=role, speaker=cast[section % len(cast)], kind=kind, section=section,
                        question_round=max(0, phase - len(PHASES)) // len(QUESTION_ROUND))
        phase -= len(kinds)
    return None
