"""Every prompt the engine sends. Short and self-contained, so they work on 135M models as on GPT-class ones.

Each step sends only what it needs (the notes for this section, the last exchange) rather
than the whole transcript: small models lose the thread in long contexts, and big ones don't
need it to teach one point well.
"""

from __future__ import annotations

from backends.base import Message
from lessons.syllabus import Section


def teacher_system(name: str, topic: str, notes: str | None) -> str:
    """The teacher's standing instructions; grounded teachers are told to stick to their notes."""
    base = f"You are {name}, a patient teacher giving a lesson on: {topic}. Be clear, correct and brief."
    if notes:
        return f"{base} Teach only what these notes say, using their exact names and numbers.\n\nNotes:\n{notes}"
    return base


def plan(topic: str) -> list[Message]:
    """Ask an ungrounded teacher for a short syllabus."""
    return [
        {"role": "system", "content": "You plan short lessons for beginners."},
        {
            "role": "user",
            "content": f"List 3 to 5 key points to teach a beginner about: {topic}\n"
            "Write one short point per line, numbered 1., 2., 3.",
        },
    ]


def explain(name: str, topic: str, section: Section) -> list[Message]:
    """Teach one point, then check understanding with one question."""
    return [
        {"role": "system", "content": teacher_system(name, topic, section.text or None)},
        {
            "role": "user",
            "content": f"Teach me this point: {section.title}\n"
            "Explain it in two to four sentences, then ask me one short question to check that I understood.",
        },
    ]


def student_reply(name: str, topic: str, teacher_turn: str) -> list[Message]:
    """The student answers the teacher's check question, or asks a follow-up when unsure."""
    return [
        {
            "role": "system",
            "content": f"You are {name}, a curious student learning about {topic}. "
            "Answer the teacher's question in one or two sentences using what the teacher just said. "
            "If you are unsure, ask one short follow-up question instead.",
        },
        {"role": "user", "content": teacher_turn},
    ]


def correct(name: str, topic: str, section: Section, teacher_turn: str, student_turn: str) -> list[Message]:
    """The teacher says whether the student was right, corrects, and restates the key fact."""
    return [
        {"role": "system", "content": teacher_system(name, topic, section.text or None)},
        {"role": "user", "content": f"Teach me this point: {section.title}"},
        {"role": "assistant", "content": teacher_turn},
        {
            "role": "user",
            "content": f"{student_turn}\n\n(Tell me if I am right. Correct any mistake, "
            "answer my question if I asked one, and restate the key fact in one or two sentences.)",
        },
    ]


def ask(name: str) -> list[Message]:
    """The system prompt a student answers members' questions with, exactly as in quizzes."""
    return [{"role": "system", "content": f"You are {name}. Answer briefly and accurately."}]
