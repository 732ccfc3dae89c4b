"""Running a lesson: plan a syllabus, then teacher and student take turns until it is covered.

The order of turns in a section (explain, reply, correct, and for a grounded lesson a question
round) is in lessons/steps.py; panels in lessons/panel.py. Several teachers or students rotate
by section. Every turn is committed the moment it is
produced, so a crash loses at most the turn in flight, and a lesson can resume from its
stored turns.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from backends.base import BackendError, ChatBackend, GenParams, Message, Usage
from backends.registry import ModelRegistry
from lessons import panel, prompts
from lessons.events import (
    LessonEvent,
    LessonFinished,
    LessonStarted,
    Listener,
    TokenStreamed,
    TurnFinished,
    TurnStarted,
)
from lessons.guards import (
    MIN_SUPPORT,
    clean_reply,
    copied_phrases,
    end_at_question,
    is_echo,
    key_terms,
    missing_key_terms,
    names_other_speaker,
    notes_support,
    ungrounded_terms,
)
from lessons.steps import Step, next_step
from lessons.syllabus import Section, sections_from_plan, sections_from_source
from storage import AsyncStore
from storage import lessons as q

if TYPE_CHECKING:
    from lessons.budget import TokenBudget

log = logging.getLogger(__name__)

MAX_TOPIC_CHARS = 200
RETRIES = 2  # re-generations allowed for an empty, role-swapped or echoing reply
STUDENT_FALLBACK = "Could you explain that once more, with an example?"


class LessonError(Exception):
    """A lesson cannot start or go on; the message is fit to show a member."""

    status = "failed"  # how a running lesson ends when this is raised


@dataclass(frozen=True)
class LessonRequest:
    """What a member (or the CLI) asked for."""

    topic: str
    teachers: list[str]
    students: list[str]
    max_turns: int
    source_name: str | None = None
    source_text: str | None = None
    mode: str = "single"
    started_by: str | None = None
    guild_id: int | None = None
    channel_id: int | None = None


@dataclass(frozen=True)
class LessonOutcome:
    """How a run ended."""

    lesson_id: int
    status: str
    reason: str | None
    turns: int


class LessonEngine:
    """Creates and runs lessons against the model registry, persisting every turn."""

    def __init__(self, store: AsyncStore, models: ModelRegistry, budget: TokenBudget | None = None):
        self.store = store
        self.models = models
        self.budget = budget  # daily token budgets of paid models, per server; None: no budgets

    async def open(self, req: LessonRequest) -> int:
        """Validate a request and store the lesson; returns its id. Raises LessonError with a clear message."""
        topic = " ".join(req.topic.split())
        if not topic:
            raise LessonError("the topic is empty")
        if len(topic) > MAX_TOPIC_CHARS:
            raise LessonError(f"the topic is {len(topic)} characters; keep it under {MAX_TOPIC_CHARS}")
        if not req.teachers or not req.students:
            raise LessonError("a lesson needs at least one teacher and one student")
        for name in [*req.teachers, *req.students]:
            if name not in self.models.specs:
                raise LessonError(f"unknown model '{name}' (known: {', '.join(self.models.names())})")
        problem = panel.check_request(req.mode, req.teachers, req.students)
        if problem:
            raise LessonError(problem)
        if req.max_turns < 1:
            raise LessonError("a lesson needs at least one turn")
        if self.budget is not None:
            await self.budget.check(req.guild_id, [*req.teachers, *req.students])
        source_id = None
        if req.source_text is not None:
            if not req.source_text.strip():
                raise LessonError("the source document is empty")
            source_id = await self.store.call(q.add_source, req.source_name or "source", req.source_text)
        return await self.store.call(
            q.create_lesson,
            topic=topic,
            teachers=list(req.teachers),
            students=list(req.students),
            max_turns=req.max_turns,
            mode=req.mode,
            source_id=source_id,
            started_by=req.started_by,
            guild_id=req.guild_id,
            channel_id=req.channel_id,
        )

    async def run(self, lesson_id: int, listener: Listener | None = None, stop: asyncio.Event | None = None) -> LessonOutcome:
        """Run (or resume) a lesson to its end and return how it ended. Never raises for model failures."""
        stop = stop or asyncio.Event()
        emit = _safe(listener)
        lesson = await self.store.call(q.get_lesson, lesson_id)
        if lesson is None:
            raise LessonError(f"no lesson {lesson_id}")
        people = await self.store.call(q.participants, lesson_id)
        teachers = [p.model for p in people if p.role == "teacher"]
        students = [p.model for p in people if p.role == "student"]
        done = await self.store.call(q.turns, lesson_id)
        try:
            sections = await self._syllabus(lesson, teachers[0])
            await emit(LessonStarted(lesson_id, lesson["topic"], teachers, students, [s.as_dict() for s in sections], bool(done)))
            grounded = lesson["source_id"] is not None
            while True:
                if lesson["mode"] == panel.PANEL:
                    step = panel.next_step(len(sections), len(done), teachers, students, lesson["max_turns"])
                else:
                    step = next_step(len(sections), len(done), teachers, students, lesson["max_turns"], grounded)
                if step is None:
                    covered = len(done) >= len(sections) * panel.turns_per_section(lesson["mode"], teachers, grounded)
                    reason = "syllabus covered" if covered else "turn limit reached"
                    return await self._finish(lesson_id, "finished", reason, len(done), emit)
                if stop.is_set():
                    return await self._finish(lesson_id, "stopped", "stopped by request", len(done), emit)
                if self.budget is not None:
                    await self.budget.check(lesson["guild_id"], teachers + students)
                turn = await self._turn(lesson, step, sections, done, teachers, students, emit, stop)
                if turn is None:
                    return await self._finish(lesson_id, "stopped", "stopped by request", len(done), emit)
                done.append(turn)
                await emit(TurnFinished(lesson_id, turn))
        except BackendError as e:
            return await self._finish(lesson_id, "failed", str(e), len(done), emit)
        except LessonError as e:
            return await self._finish(lesson_id, e.status, str(e), len(done), emit)
        except asyncio.CancelledError:
            await asyncio.shield(self.store.call(q.finish_lesson, lesson_id, "interrupted", "the lesson was cancelled"))
            raise
        except Exception as e:  # an unexpected bug must not leave the lesson 'running' forever
            log.exception("lesson %s crashed", lesson_id)
            return await self._finish(lesson_id, "failed", f"internal error: {type(e).__name__}: {e}", len(done), emit)

    async def _finish(self, lesson_id: int, status: str, reason: str, turns: int, emit: Listener) -> LessonOutcome:
        await self.store.call(q.finish_lesson, lesson_id, status, reason)
        await emit(LessonFinished(lesson_id, status, reason, turns))
        return LessonOutcome(lesson_id, status, reason, turns)

    async def _syllabus(self, lesson: dict[str, Any], teacher: str) -> list[Section]:
        if lesson["syllabus"]:
            return [Section(**s) for s in lesson["syllabus"]]
        if lesson["source_id"] is not None:
            source = await self.store.call(q.get_source, lesson["source_id"])
            sections = sections_from_source(source["text"] if source else "")
        else:
            backend = await self.models.backend(teacher)
            params = replace(self.models.params(teacher), max_new_tokens=120)
            usage = Usage()
            plan = await backend.chat(prompts.plan(lesson["topic"]), params, usage)
            await self._spent(lesson, teacher, usage)
            sections = sections_from_plan(plan, lesson["topic"])
        if not sections:
            raise LessonError("the source document has no text to teach")
        await self.store.call(q.set_syllabus, lesson["id"], [s.as_dict() for s in sections])
        return sections

    async def _turn(
        self,
        lesson: dict[str, Any],
        step: Step,
        sections: list[Section],
        done: list[dict[str, Any]],
        teachers: list[str],
        students: list[str],
        emit: Listener,
        stop: asyncio.Event,
    ) -> dict[str, Any] | None:
        spec = self.models.spec(step.speaker)
        section = sections[step.section]
        messages = self._messages(lesson["topic"], step, section, spec.display_name, done)
        own = [spec.name, spec.display_name, step.role, "assistant"]
        others = [self.models.spec(n).display_name for n in teachers + students if n != step.speaker]
        others += [n for n in teachers + students if n != step.speaker]
        others += ["student" if step.role == "teacher" else "teacher", "user"]
        recent = panel.recent_turns(step.kind, done)
        backend = await self.models.backend(step.speaker)
        params = self.models.params(step.speaker)
        await emit(TurnStarted(lesson["id"], step.speaker, step.role, step.kind, step.section))
        kind = step.kind
        # A grounded teacher's turn that invents names or numbers, or an explanation that skips most
        # of its notes' facts, is retried; if every attempt falls short, the one with fewest problems is kept.
        grounding = f"{lesson['topic']}\n{section.text}" if step.role == "teacher" and section.text else None
        best: tuple[list[str], str, Usage] | None = None
        confirmation: tuple[str, Usage] | None = None
        for attempt in range(RETRIES + 1):
            if attempt:
                params = replace(params, temperature=max(params.temperature, 0.7), seed=(params.seed or 0) + attempt)
            usage = Usage()
            raw = await self._stream(backend, messages, params, usage, lesson["id"], step, others, emit, stop)
            await self._spent(lesson, step.speaker, usage)
            if raw is None:
                return None
            text = clean_reply(raw, own_labels=own, other_labels=others)
            if step.kind == "explain":
                text = end_at_question(text)
            elif step.kind == "ask":
                text = prompts.check_question(text) or ""  # only the question, without the student's preamble
            if text and step.kind in ("correct", "answer") and is_echo(text, recent):
                confirmation = confirmation or (text, usage)  # restating a right answer is still an answer
            if not text or is_echo(text, recent):
                log.info("lesson %s: %s gave an unusable reply (attempt %d)", lesson["id"], step.speaker, attempt + 1)
                continue
            problems = self._problems(text, step, section, grounding)
            if best is None or len(problems) < len(best[0]):
                best = (problems, text, usage)
            if not problems:
                break
            log.info("lesson %s: %s: %s (attempt %d)", lesson["id"], step.speaker, "; ".join(problems), attempt + 1)
        if best is not None:
            _, text, usage = best
        elif confirmation is not None:
            text, usage = confirmation
        elif step.role == "teacher":
            raise LessonError(f"teacher '{step.speaker}' gave no usable reply (empty or repeating)")
        elif step.kind == "ask":
            text = prompts.fallback_question(section)
        else:
            text, kind = STUDENT_FALLBACK, "fallback"
        return await self.store.call(
            q.add_turn,
            lesson_id=lesson["id"],
            speaker=step.speaker,
            role=step.role,
            content=text,
            kind=kind,
            section=step.section,
            prompt_tokens=usage.prompt_tokens or None,
            completion_tokens=usage.completion_tokens or None,
            latency_ms=usage.latency_ms or None,
        )

    async def _spent(self, lesson: dict[str, Any], model: str, usage: Usage) -> None:
        """Count a call's tokens against the server's daily budget."""
        if self.budget is not None:
            await self.budget.record(lesson.get("guild_id"), model, usage)

    @staticmethod
    def _problems(text: str, step: Step, section: Section, grounding: str | None) -> list[str]:
        """Why a teacher's turn should be tried again: it copied its prompt's wording; grounded, it names
        names or numbers its notes don't have, or (an explanation) no more than half of the notes' ones."""
        if step.role != "teacher":
            return []
        problems = [f"copied its prompt ({p})" for p in copied_phrases(text, prompts.SCAFFOLD)]
        if grounding is None:
            return problems
        problems += [f"made up {t}" for t in ungrounded_terms(text, grounding)]
        support = notes_support(text, grounding)
        if support < MIN_SUPPORT:
            problems.append(f"strays from its notes (only {support:.0%} of its words are in them)")
        if step.kind == "explain":
            keys = key_terms(section.text)
            missing = missing_key_terms(text, section.text)
            if keys and len(missing) * 2 >= len(keys):
                problems += [f"left out {t}" for t in missing]
        return problems

    def _messages(self, topic: str, step: Step, section: Section, name: str, done: list[dict[str, Any]]) -> list[Message]:
        if step.kind == "explain":
            return prompts.explain(name, topic, section)
        in_section = [t for t in done if t["section"] == step.section]
        teacher_turn = next((t["content"] for t in in_section if t["role"] == "teacher"), "")
        if step.kind == "reply":
            return prompts.student_reply(name, topic, teacher_turn)
        if step.kind == "ask":
            return prompts.student_question(name, topic, teacher_turn)
        if step.kind == "answer":
            return prompts.answer(name, topic, section, in_section[-1]["content"])
        student_turn = next((t["content"] for t in in_section if t["role"] == "student"), "")
        return prompts.correct(name, topic, section, teacher_turn, student_turn)

    async def _stream(
        self,
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
            await _aclose(stream)
        return text


async def _aclose(stream: object) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


def _safe(listener: Listener | None) -> Listener:
    """A listener that fails (say Discord is down) must not end the lesson: log and go on."""

    async def emit(event: LessonEvent) -> None:
        if listener is None:
            return
        try:
            await listener(event)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("lesson listener failed on %s", type(event).__name__)

    return emit
