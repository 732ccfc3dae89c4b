"""The first message of a lesson: who teaches whom, in which direction, and what to watch out for."""

from __future__ import annotations

import asyncio

from app import AppContext
from lessons.direction import lesson_direction
from lessons.engine import LessonRequest
from plugins.common.text import shorten


def _names(app: AppContext, models: list[str]) -> str:
    shown = [app.models.spec(n).display_name for n in models]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


async def lesson_header(app: AppContext, lesson_id: int, request: LessonRequest, starter: str) -> tuple[str, list[str]]:
    """The header text and the notes for the member who started it (warnings about the pairing)."""
    grounded = request.source_text is not None
    # sizing a local model may read its safetensors headers: keep that off the event loop
    direction = await asyncio.to_thread(lesson_direction, app.models, request.teachers, request.students, grounded=grounded)
    source = f" · from **{shorten(request.source_name or '', 80)}**" if grounded else ""
    verb = "teach" if len(request.teachers) > 1 else "teaches"
    mode = f" · {request.mode}" if request.mode != "single" else ""
    header = (
        f"📚 **Lesson #{lesson_id}: {shorten(request.topic, 200)}**\n"
        f"{_names(app, request.teachers)} {verb} {_names(app, request.students)} · **{direction.label}**{mode}"
        f" · up to {request.max_turns} turns{source} · started by {starter}"
    )
    notes = [f"⚠️ {w}." for w in direction.warnings]
    first = request.teachers[0]
    if not grounded and not notes and direction.teachers[first].size_class == "SLM":
        notes.append(
            f"{app.models.spec(first).display_name} is a small model and no source was attached; small teachers do "
            "best when grounded in a document (`source:`)."
        )
    return shorten(header, 2000), notes
