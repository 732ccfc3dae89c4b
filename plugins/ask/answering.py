"""A student answering a member's question in the channel, streamed under the student's persona."""

from __future__ import annotations

import logging

from app import AppContext
from backends.base import Message, Usage
from lessons import prompts
from lessons.guards import clean_reply
from plugins.common.personas import Destination, PersonaDirectory
from plugins.common.streaming import StreamedReply

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 1000


def check_question(question: str) -> str | None:
    """Why a question can't be asked, in a member's words; None when it can."""
    if not question.strip():
        return "The question is empty."
    if len(question.strip()) > MAX_QUESTION_CHARS:
        return f"Your question is {len(question.strip())} characters; keep it under {MAX_QUESTION_CHARS}."
    return None


async def answer(
    app: AppContext, personas: PersonaDirectory, destination: Destination, student: str, question: str
) -> str:
    """Stream the student's answer into `destination`; returns the final text. Raises BackendError."""
    spec = app.models.spec(student)
    messages: list[Message] = [*prompts.ask(spec.display_name), {"role": "user", "content": question.strip()}]
    poster, _ = await personas.poster(destination, student)
    reply = StreamedReply(poster, app.settings.discord.stream_edit_interval)
    text = ""
    backend = await app.models.backend(student)  # syncs the active adapter (or fine-tuned model) first
    stream = backend.stream(messages, app.models.params(student), Usage())
    try:
        async for delta in stream:
            text += delta
            await reply.update(text)
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()
    final = clean_reply(text, own_labels=[student, spec.display_name, "assistant"], other_labels=["user"]) or text.strip()
    await reply.finish(final or "*(no answer)*")
    return final
