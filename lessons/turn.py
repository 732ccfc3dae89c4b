"""Writing one turn: prompt the speaker, stream its reply, clean it, and retry what the guards reject.

The engine decides whose turn it is and stores what comes back; this module decides what a
usable turn is. A reply is tried again (up to RETRIES more times, warmer each time) when it is
empty, echoes the last turns, or, for a teacher, copies its prompt's wording, invents names or
numbers its notes lack, strays from them, leaves out their facts (an explanation: most of the
section's; an answer to the student's question, or a correction: any of the notes' sentence that
answers it) or mixes in another sentence's. If every attempt falls short, the attempt with the
fewest problems is kept; for a grounded answer or correction, the notes' own sentence is quoted
instead, since a wrong answer to a direct question is exactly what the student would learn to
give.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from backends.base import ChatBackend, GenParams, Message, Usage
from backends.registry import ModelRegistry
from lessons import panel, prompts, steps
from lessons.errors import LessonError
from lessons.events import Listener, TokenStreamed, TurnStarted
from lessons.guards import (
    MIN_ANSWER_SUPPORT,
    MIN_SUPPORT,
    answering_sentence,
    asks_about_notes,
    clean_reply,
    copied_phrases,
    end_at_question,
    gives_away,
    is_echo,
    key_terms,
    missing_key_terms,
    names_all,
    names_other_speaker,
    note_labels,
    notes_support,
    other_facts,
    sentence_names,
    unanswered_terms,
    ungrounded_terms,
)
from lessons.steps import Step
from lessons.syllabus import Section

log = logging.getLogger(__name__)

RETRIES = 2  # re-generations allowed for an empty, role-swapped or echoing reply
STUDENT_FALLBACK = "Could you explain that once more, with an example?"


@dataclass(frozen=True)
class Draft:
    """A turn ready to store: its text, its kind ('fallback' when the student's canned line stood in)
    and what the call cost."""

    text: str
    kind: str
    usage: Usage


@dataclass(frozen=True)
class Cast:
    """Who is in the lesson (model names), for telling a speaker's own lines from the others'."""

    teachers: list[str]
    students: list[str]


Spent = Callable[[str, Usage], Awaitable[None]]
"""Counts a call's tokens against the server's budget (model name, usage)."""


async def write_turn(
    models: ModelRegistry,
    lesson: dict[str, Any],
    step: Step,
    section: Section,
    done: list[dict[str, Any]],
    cast: Cast,
    emit: Listener,
    stop: asyncio.Event,
    spent: Spent,
) -> Draft | None:
    """The speaker's turn for `step`, or None when the lesson was stopped mid-turn. Raises LessonError
    when a teacher gives nothing usable; a student falls back to a canned line instead."""
    spec = models.spec(step.speaker)
    messages = _messages(lesson["topic"], step, section, spec.display_name, done)
    own = [spec.name, spec.display_name, step.role, "assistant"]
    others = [models.spec(n).display_name for n in cast.teachers + cast.students if n != step.speaker]
    others += [n for n in cast.teachers + cast.students if n != step.speaker]
    others += ["student" if step.role == "teacher" else "teacher", "user"]
    recent = panel.recent_turns(step.kind, done)
    # the section's questions so far: a sentence's second round must ask in other words than its first
    asked = [t["content"] for t in done if t["section"] == step.section and t["kind"] == "ask"]
    if step.kind == "ask":
        recent += asked
    backend = await models.backend(step.speaker)
    params = lesson_params(models.params(step.speaker), lesson["id"])
    await emit(TurnStarted(lesson["id"], step.speaker, step.role, step.kind, step.section))
    grounding = f"{lesson['topic']}\n{section.text}" if step.role == "teacher" and section.text else None
    question = _question_answered(step, done)
    known = f"{lesson['topic']} {section.title}"
    source = _answer_source(question, step, section, known) if grounding else None
    best: tuple[list[str], str, Usage] | None = None
    confirmation: tuple[list[str], str, Usage] | None = None
    for attempt in range(RETRIES + 1):
        if attempt:
            params = replace(params, temperature=max(params.temperature, 0.7), seed=(params.seed or 0) + attempt)
        usage = Usage()
        raw = await _stream(backend, messages, params, usage, lesson["id"], step, others, emit, stop)
        await spent(step.speaker, usage)
        if raw is None:
            return None
        text = clean_reply(raw, own_labels=own, other_labels=others)
        if step.kind == "explain":
            text = end_at_question(text)
        elif step.kind == "ask":
            text = prompts.asked_question(text) or ""  # only the question, without the student's preamble
            about = _focus(section, step) or section.text
            if text and section.text and not asks_about_notes(text, about, known):
                log.info("lesson %s: %s asked about nothing in the section: %r", lesson["id"], step.speaker, text)
                text = ""  # tried again, and in the end replaced by a question about the section
            elif text and gives_away(text, about, known):
                log.info("lesson %s: %s put the answer in its question: %r", lesson["id"], step.speaker, text)
                text = ""  # "How many people live in 2,300?": its answer could not be checked, nor learnt
        if text and step.kind in ("correct", "answer") and is_echo(text, recent) and confirmation is None:
            # restating a right answer is still an answer, if no attempt says something new
            confirmation = (problems(text, step, section, grounding, question, source, known), text, usage)
        if not text or is_echo(text, recent):
            log.info("lesson %s: %s gave an unusable reply (attempt %d)", lesson["id"], step.speaker, attempt + 1)
            continue
        found = problems(text, step, section, grounding, question, source, known)
        if best is None or len(found) < len(best[0]):
            best = (found, text, usage)
        if not found:
            break
        log.info("lesson %s: %s: %s (attempt %d)", lesson["id"], step.speaker, "; ".join(found), attempt + 1)
    best = best or confirmation
    if best is not None:
        if best[0] and source is not None:  # every attempt invented, strayed or missed the answer: quote the notes
            log.info("lesson %s: %s answers with its notes' own sentence", lesson["id"], step.speaker)
            return Draft(source, step.kind, best[2])
        return Draft(best[1], step.kind, best[2])
    if step.role == "teacher":
        raise LessonError(f"teacher '{step.speaker}' gave no usable reply (empty or repeating)")
    if step.kind == "ask":
        # a question about the round's sentence by name, so two rounds don't ask the same thing
        subject = _fallback_subject(_focus(section, step) or "", known, asked)
        return Draft(prompts.fallback_question(section, step.question_round, subject, asked), step.kind, Usage())
    return Draft(STUDENT_FALLBACK, "fallback", Usage())


LESSON_SEED_STRIDE = 1000  # retries add 1, 2 to a turn's seed; lessons are this far apart


def lesson_params(params: GenParams, lesson_id: int) -> GenParams:
    """A model's settings for one lesson. With a fixed seed (the default, for reproducible runs) each
    lesson samples with its own, so a second lesson on the same notes explains and asks in other
    words instead of repeating the first word for word (its pairs would add nothing to training);
    the same lesson resumed or run again from the same database still says the same."""
    if params.seed is None:
        return params
    return replace(params, seed=params.seed + LESSON_SEED_STRIDE * (lesson_id - 1))


def problems(text: str, step: Step, section: Section, grounding: str | None, question: str | None = None,
             source: str | None = None, known: str = "") -> list[str]:
    """Why a teacher's turn should be tried again: it copied its prompt's wording; grounded, it names
    names or numbers its notes don't have, or (an explanation) no more than half of the notes' ones,
    or (an answer to the student's `question`, or a correction of the check question's exchange) any
    of those of `source`, the notes' sentence that answers it, that neither the question nor `known`
    (the topic and the section's title: "Vellmoor" is not a fact to tell) names, or it mixes in
    the facts of other sentences of the notes (`guards.other_facts`), or it is written as labelled
    notes ("Sales: Port Arlo", `guards.note_labels`).

    An answer is held to the whole sentence, not to the part the question asked about: a student
    that learns "It was founded in 1987 by Mara and Jessa Holt" as the answer to "Who founded
    it?" gives that same sentence when asked where it was founded, so the sentence's other facts
    ("in the village of Dunmere") have to be in it too. A sentence opening with "She" or "It" is
    part of the fact before it (`steps.fact_sentences`), whose names the answer must give as well:
    "She was elected in 2019" taught as the answer to "When was she elected?" leaves a student
    asked when the *mayor* was elected with nothing to go on; "Ada Quill was elected in 2019"
    does not."""
    if step.role != "teacher":
        return []
    found = [f"copied its prompt ({p})" for p in copied_phrases(text, prompts.SCAFFOLD)]
    if grounding is None:
        return found
    found += [f"made up {t}" for t in ungrounded_terms(text, grounding)]
    answers = question is not None and source is not None
    support = notes_support(text, f"{grounding}\n{question}" if answers else grounding)
    if support < (MIN_ANSWER_SUPPORT if answers else MIN_SUPPORT):
        found.append(f"strays from its notes (only {support:.0%} of its words are in them)")
    if step.kind == "explain":
        keys = key_terms(section.text)
        missing = missing_key_terms(text, section.text)
        if keys and len(missing) * 2 >= len(keys):
            found += [f"left out {t}" for t in missing]
    if answers:
        asked = f"{question} {known}"
        found += [f"left out {t}" for t in unanswered_terms(text, asked, source)]
        mixed = other_facts(text, asked, source, section.text)
        if mixed:
            found.append(f"mixes in other facts ({', '.join(mixed)})")
        labels = [label for label in note_labels(text) if f"{label}:" not in section.text]
        if labels:
            found.append(f"writes notes, not sentences ({', '.join(f'{label}:' for label in labels)})")
    return found


def _messages(topic: str, step: Step, section: Section, name: str, done: list[dict[str, Any]]) -> list[Message]:
    if step.kind == "explain":
        return prompts.explain(name, topic, section)
    in_section = [t for t in done if t["section"] == step.section]
    teacher_turn = next((t["content"] for t in in_section if t["role"] == "teacher"), "")
    if step.kind == "reply":
        return prompts.student_reply(name, topic, teacher_turn)
    if step.kind == "ask":
        focus = _focus(section, step)
        return prompts.student_question(name, topic, focus or teacher_turn)
    if step.kind == "answer":
        return prompts.answer(name, topic, section, in_section[-1]["content"])
    student_turn = next((t["content"] for t in in_section if t["role"] == "student"), "")
    return prompts.correct(name, topic, section, teacher_turn, student_turn)


def _question_answered(step: Step, done: list[dict[str, Any]]) -> str | None:
    """The question a teacher's turn answers: the student's (an answer), or for a correction its own
    check question with what the student said to it. A correction corrects that exchange, and a
    small teacher's check question often names nothing ("What does the sentence mean?"): the
    student's "Moth, a tiny kite for children" says the correction is about the Moth's sentence."""
    in_section = [t for t in done if t["section"] == step.section]
    if step.kind == "answer" and in_section:
        return in_section[-1]["content"]
    if step.kind == "correct" and in_section:
        return f"{prompts.check_question(in_section[0]['content']) or ''} {in_section[-1]['content']}".strip()
    return None


def _answer_source(question: str | None, step: Step, section: Section, known: str) -> str | None:
    """The notes' sentence that answers `question`: the one sharing the most words with it besides
    those of `known` (the topic and title), and in a question round, on a tie or when none shares
    any (the canned "What else should I remember about …?"), the sentence the round is about."""
    if question is None:
        return None
    focus = _focus(section, step) if step.kind == "answer" else None
    return answering_sentence(question, section.text, known, prefer=focus)


def _fallback_subject(focus: str, known: str, asked: list[str]) -> str | None:
    """What a student with no question of its own asks about: the first name of the round's
    sentence that no earlier question of the section named, else its first name. A second pass
    asks about a fact from another of its names ("What should I remember about Jessa Holt?" after
    "…about Mara?"): members ask from any side."""
    names = sentence_names(focus, known)
    said = " ".join(asked)
    return next((n for n in names if not names_all(said, n)), names[0] if names else None)


def _focus(section: Section, step: Step) -> str | None:
    """The notes' sentence a question round asks about (lessons/steps.py), if the section has one."""
    focus = steps.round_sentences(section)
    return focus[step.question_round] if step.question_round < len(focus) else None


async def _stream(
    backend: ChatBackend,
    messages: list[Message],
    params: GenParams,
    usage: Usage,
    lesson_id: int,
    step: Step,
    others: list[str],
    emit: Listener,
    stop: asyncio.Event,
) -> str | None:
    """Stream one reply, emitting tokens; None if stopped mid-turn. Stops early once the model
    starts writing another participant's lines, which would be cut anyway."""
    text = ""
    stream = backend.stream(messages, params, usage)
    try:
        async for delta in stream:
            if stop.is_set():
                return None
            text += delta
            await emit(TokenStreamed(lesson_id, step.speaker, step.role, text, delta))
            if "\n" in text and names_other_speaker(text, others):
                break
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()
    return text
