"""Running a lesson: plan a syllabus, then teacher and student take turns until it is covered.

The order of turns in a section (explain, reply, correct, and for a grounded lesson a question
round) is in lessons/steps.py; panels in lessons/panel.py; what makes a reply a usable turn
(cleaning, guards, retries) in lessons/turn.py. Several teachers or students rotate by section. Every turn is committed the moment it is
produced, so a crash loses at most the turn in flight, and a lesson can resume from its
stored turns.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from backends.base import BackendError, Usage
from backends.registry import ModelRegistry
from lessons import panel, prompts
from lessons.errors import LessonError
from lessons.events import LessonEvent, LessonFinished, LessonStarted, Listener, TurnFinished
from lessons.steps import Step, next_step
from lessons.syllabus import Section, sections_from_plan, sections_from_source
from lessons.turn import Cast, write_turn
from storage import AsyncStore
from storage import lessons as q

if TYPE_CHECKING:
    from lessons.budget import TokenBudget

log = logging.getLogger(__name__)

MAX_TOPIC_CHARS = 200


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
                    step = next_step(sections, len(done), teachers, students, lesson["max_turns"], grounded)
                if step is None:
                    covered = len(done) >= panel.lesson_turns(lesson["mode"], sections, teachers, grounded)
                    reason = "syllabus covered" if covered else "turn limit reached"
                    return await self._finish(lesson_id, "finished", reason, len(done), emit)
                if stop.is_set():
                    return await self._finish(lesson_id, "stopped", "stopped by request", len(done), emit)
                if self.budget is not None:
                    await self.budget.check(lesson["guild_id"], teachers + students)
                turn = await self._turn(lesson, step, sections, done, Cast(teachers, students), emit, stop)
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
        cast: Cast,
        emit: Listener,
        stop: asyncio.Event,
    ) -> dict[str, Any] | None:
        """Write the step's turn (lessons/turn.py) and commit it; None when stopped mid-turn."""

        async def spent(model: str, usage: Usage) -> None:
            await self._spent(lesson, model, usage)

        draft = await write_turn(self.models, lesson, step, sections[step.section], done, cast, emit, stop, spent)
        if draft is None:
            return None
        usage = draft.usage
        return await self.store.call(
            q.add_turn,
            lesson_id=lesson["id"],
            speaker=step.speaker,
            role=step.role,
            content=draft.text,
            kind=draft.kind,
            section=step.section,
            prompt_tokens=usage.prompt_tokens or None,
            completion_tokens=usage.completion_tokens or None,
            latency_ms=usage.latency_ms or None,
        )

    async def _spent(self, lesson: dict[str, Any], model: str, usage: Usage) -> None:
        """Count a call's tokens against the server's daily budget."""
        if self.budget is not None:
            await self.budget.record(lesson.get("guild_id"), model, usage)


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
