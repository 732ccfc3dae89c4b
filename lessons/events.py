"""What a running lesson announces, for the CLI and the Discord layer to render."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LessonStarted:
    """The syllabus is planned and the first turn is about to start."""

    lesson_id: int
    topic: str
    teachers: list[str]
    students: list[str]
    syllabus: list[dict[str, Any]]
    resumed: bool = False


@dataclass(frozen=True)
class TurnStarted:
    """A model started producing a turn."""

    lesson_id: int
    speaker: str
    role: str
    kind: str
    section: int | None


@dataclass(frozen=True)
class TokenStreamed:
    """More text of the turn in flight; `text` is everything so far, `delta` what just arrived."""

    lesson_id: int
    speaker: str
    role: str
    text: str
    delta: str


@dataclass(frozen=True)
class TurnFinished:
    """A turn was committed to the database; `turn` is its stored row."""

    lesson_id: int
    turn: dict[str, Any]


@dataclass(frozen=True)
class LessonFinished:
    """The lesson ended: finished, stopped, interrupted or failed (with a reason)."""

    lesson_id: int
    status: str
    reason: str | None
    turns: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


LessonEvent = LessonStarted | TurnStarted | TokenStreamed | TurnFinished | LessonFinished
Listener = Callable[[LessonEvent], Awaitable[None]]
