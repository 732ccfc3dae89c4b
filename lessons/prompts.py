"""Every prompt the engine sends. Short and self-contained, so they work on 135M models as on GPT-class ones.

Each step sends only what it needs (the notes for this section, the last exchange) rather
than the whole transcript: small models lose the thread in long contexts, and big ones don't
need it to teach one point well.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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
    """Teach one point, then check understanding with one question.

    Grounded, the notes come in the request itself rather than the system prompt: small
    models stick to text right before the instruction and drift from text in a system prompt.
    """
    ask = "Explain it in two to four sentences, then ask me one short question to check that I understood."
    if section.text:
        return [
            {"role": "system", "content": teacher_system(name, topic, None)},
            {"role": "user", "content": f"Notes on {section.title}:\n{section.text}\n\n"
             "Teach me these notes in two to four sentences, keeping their exact names and numbers. "
             "Then ask me one short question about them, on its own line, ending with a question mark."},
        ]
    return [
        {"role": "system", "content": teacher_system(name, topic, None)},
        {"role": "user", "content": f"Teach me this point: {section.title}\n{ask}"},
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


# Two worked examples, about nothing any lesson teaches, show the shape of the question wanted. A
# 135M student told only "ask one short question about this" answers "What's that?" or restates
# the fact; shown two facts turned into questions it mostly writes a real question that names
# the fact's subject ("What's the number of people living in Vellmoor?").
QUESTION_SHOTS = (
    ("The town library opens at 9 o'clock on Mondays.", "When does the town library open on Mondays?"),
    ("The bakery on Elm Street is run by Tom Reed, a former sailor.", "Who runs the bakery on Elm Street?"),
)


def student_question(name: str, topic: str, fact: str) -> list[Message]:
    """The student asks one question that `fact` answers (a grounded lesson's question round:
    `fact` is the notes' sentence the round is about, with the one before it when it needs it)."""
    messages: list[Message] = [{
        "role": "system",
        "content": f"You are {name}, a curious student learning about {topic}. "
        "You turn a fact into one short question that the fact answers.",
    }]
    for shown, question in QUESTION_SHOTS:
        messages += [{"role": "user", "content": f"Fact: {shown}"}, {"role": "assistant", "content": question}]
    messages.append({"role": "user", "content": f"Fact about {topic}: {fact}"})
    return messages


def answer(name: str, topic: str, section: Section, question: str) -> list[Message]:
    """The teacher answers the student's question, from the notes when it has them."""
    if section.text:
        return [
            {"role": "system", "content": teacher_system(name, topic, None)},
            {"role": "user", "content": f"Notes on {section.title}:\n{section.text}\n\nMy question: {question}\n\n"
             "Answer my question from the notes in one or two sentences, with their exact names and numbers."},
        ]
    return [
        {"role": "system", "content": teacher_system(name, topic, None)},
        {"role": "user", "content": f"{question}\n\n(Answer in one or two sentences.)"},
    ]


_FALLBACK_ASKS = ("What should I remember about {}?", "What can you tell me about {}?", "What do you know about {}?")


def fallback_question(section: Section, question_round: int = 0, subject: str | None = None,
                      asked: Sequence[str] = ()) -> str:
    """What the student asks when its own attempts at a question were unusable: about `subject`
    (a name from the sentence its round is about, "Windy Hill"), else about the section, in the
    first wording none of the section's earlier questions (`asked`) used. The same question twice
    with one answer is one training pair, not two; in other words it is a second way in."""
    about = subject or section.title.rstrip(" .?!")
    wordings = [w.format(about) for w in _FALLBACK_ASKS]
    if not subject and question_round:
        wordings.insert(0, f"What else should I remember about {about}?")
    return next((w for w in wordings if w not in asked), wordings[0])


# Fixed wording of the prompts above that a small teacher sometimes copies into its reply
# ("I answered: …", "Check my answer against the notes"); such a turn is tried again.
SCAFFOLD = ("you asked me:", "i answered:", "i said:", "my question:", "notes on ", "check my answer", "answer my question",
            "teach me these notes", "tell me if i am right")


def correct(name: str, topic: str, section: Section, teacher_turn: str, student_turn: str) -> list[Message]:
    """The teacher says whether the student was right, corrects, and restates the key fact."""
    if section.text:
        question = check_question(teacher_turn)
        asked = f"You asked me: {question}\nI answered: {student_turn}" if question else f"I said: {student_turn}"
        return [
            {"role": "system", "content": teacher_system(name, topic, None)},
            {"role": "user", "content": f"Notes on {section.title}:\n{section.text}\n\n{asked}\n\n"
             "Check my answer against the notes. Say if I am right, then give the correct facts from the notes "
             "in one or two sentences, with their exact names and numbers."},
        ]
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


_QUESTION_LABEL = re.compile(r"^(?:question|q)\s*\d*\s*[:.)]\s*", re.I)


def check_question(teacher_turn: str) -> str | None:
    """The question a teacher's explanation ends on (its last sentence ending in '?'), if any."""
    questions = [s for s in _sentences(teacher_turn) if s.endswith("?")]
    question = _QUESTION_LABEL.sub("", questions[-1]) if questions else None
    return _sized(question)


def asked_question(student_turn: str) -> str | None:
    """A student's last question, with the questions right before it ("What's the Moth? What kind
    of kite is it?": the second alone doesn't say what it asks about), without the rest of the
    turn; None if it asks none."""
    run: list[str] = []
    for sentence in reversed(_sentences(student_turn)):
        if sentence.endswith("?"):
            run.insert(0, _QUESTION_LABEL.sub("", sentence))
        elif run:
            break
    return _sized(" ".join(run)) if run else None


def _sentences(text: str) -> list[str]:
    parts = (s.strip().strip(" *_\"") for s in re.split(r"(?<=[.!?])\s+|\n+", text.strip()))
    return [s for s in parts if s]


def _sized(question: str | None) -> str | None:
    return question if question and 8 <= len(question) <= 300 else None


def ask(name: str) -> list[Message]:
    """The system prompt a student answers members' questions with, exactly as in quizzes."""
    return [{"role": "system", "content": f"You are {name}. Answer briefly and accurately."}]


def question_with_notes(question: str, notes: str) -> str:
    """A question asked with a document in front of the model (notes first: small models read what is near)."""
    return f"Notes:\n{notes.strip()}\n\nAnswer from the notes: {question}"
