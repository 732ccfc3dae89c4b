"""Outside evaluation: a JSONL file of questions in, the student's graded answers out.

Input lines are `{"question": …}`, optionally with `"answer"` (a reference) or `"keywords"`
(a list, each entry may list alternatives as "a|b"). Output rows are
`{"question", "answer", "correct"}`, with `correct` null when there was nothing to grade against.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from quiz.grading import grade_reference

MAX_QUESTION_CHARS = 1000
CONCURRENCY = 8


class QuestionsError(ValueError):
    """The questions file can't be used; the message says which line and why, in one line."""


def read_questions(path: Path) -> list[dict[str, Any]]:
    """Questions from a JSONL file, checked line by line. Raises QuestionsError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QuestionsError(f"questions file {path} does not exist") from None
    except IsADirectoryError:
        raise QuestionsError(f"questions file {path} is a directory") from None
    except UnicodeDecodeError:
        raise QuestionsError(f"questions file {path} is not UTF-8 text") from None
    except OSError as e:
        raise QuestionsError(f"cannot read questions file {path}: {e.strerror or e}") from None
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            items.append(_item(path, number, line))
    if not items:
        raise QuestionsError(f"questions file {path} has no questions (one JSON object per line: {{\"question\": …}})")
    return items


def _item(path: Path, number: int, line: str) -> dict[str, Any]:
    where = f"{path} line {number}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise QuestionsError(f"{where} is not JSON ({e.msg}); the file must be JSONL, one object per line") from None
    if not isinstance(row, dict):
        raise QuestionsError(f"{where} is not a JSON object; expected {{\"question\": …}}")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise QuestionsError(f"{where} has no \"question\" (a non-empty string)")
    if len(question.strip()) > MAX_QUESTION_CHARS:
        raise QuestionsError(f"{where}: the question is {len(question.strip())} characters; keep it under {MAX_QUESTION_CHARS}")
    answer = row.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise QuestionsError(f"{where}: \"answer\" must be a string")
    keywords = row.get("keywords")
    if keywords is not None and not (isinstance(keywords, list) and all(isinstance(k, str) for k in keywords)):
        raise QuestionsError(f"{where}: \"keywords\" must be a list of strings")
    return {"question": question.strip(), "answer": answer, "keywords": keywords or None}


async def answer_all(
    items: list[dict[str, Any]], ask: Callable[[str], Awaitable[str]], concurrency: int = CONCURRENCY
) -> list[dict[str, Any]]:
    """Ask every question (a few at a time), grade against its reference; rows in input order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(item: dict[str, Any]) -> dict[str, Any]:
        async with gate:
            answer = await ask(item["question"])
        grade = grade_reference(answer, item["answer"], item["keywords"])
        return {"question": item["question"], "answer": answer, "correct": grade.correct}

    return list(await asyncio.gather(*(one(i) for i in items)))


def summary(student: str, adapter: dict[str, Any] | None, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The --json summary: questions, correct answers, and accuracy over the questions that had a reference."""
    graded = [r for r in rows if r["correct"] is not None]
    correct = sum(bool(r["correct"]) for r in graded)
    return {
        "student": student,
        "adapter": adapter,
        "n": len(rows),
        "correct": correct,
        "accuracy": round(correct / len(graded), 4) if graded else None,
    }
