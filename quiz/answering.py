"""The student answering a quiz question: exactly as a member's /ask (same system prompt, no notes, no
lesson context), but greedy, so a quiz measures the weights rather than the sampling luck."""

from __future__ import annotations

from dataclasses import replace

from backends.base import ChatBackend, GenParams, Message, Usage
from lessons import prompts
from lessons.guards import clean_reply


def ask_messages(display_name: str, question: str, notes: str | None = None) -> list[Message]:
    """The messages /ask sends: the student's system prompt and the question, nothing else
    (with `notes`, the document too: how a grounded teacher would answer)."""
    asked = prompts.question_with_notes(question.strip(), notes) if notes else question.strip()
    return [*prompts.ask(display_name), {"role": "user", "content": asked}]


ANSWER_TOKENS = 64  # a quiz answer is a fact or two; rambling on only risks contradicting it


def greedy(params: GenParams) -> GenParams:
    """The model's own generation settings with sampling off and the answer kept short."""
    return replace(params, temperature=0.0, max_new_tokens=min(params.max_new_tokens, ANSWER_TOKENS))


async def answer_question(
    backend: ChatBackend, student: str, display_name: str, question: str, params: GenParams, notes: str | None = None
) -> str:
    """The student's greedy answer, cleaned the way /ask cleans it. Raises BackendError."""
    text = await backend.chat(ask_messages(display_name, question, notes), greedy(params), Usage())
    return clean_reply(text, own_labels=[student, display_name, "assistant"], other_labels=["user"]) or text.strip()
