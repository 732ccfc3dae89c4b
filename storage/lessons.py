"""Lessons, their participants, sources and turns."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from storage.db import Transaction, fetch_all, fetch_one, now

FINAL_STATUSES = ("finished", "stopped", "interrupted", "failed")


@dataclass(frozen=True)
class Participant:
    """A model taking part in a lesson as teacher or student."""

    model: str
    role: str  # "teacher" | "student"


def add_source(db: Database, name: str, text: str) -> int:
    """Store a source document once per content hash; return its id."""
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    row = db.execute("SELECT id FROM sources WHERE sha256 = ?", [sha]).fetchone()
    if row:
        return int(row[0])
    cur = db.execute(
        "INSERT INTO sources (name, sha256, text, created_at) VALUES (?, ?, ?, ?)", [name, sha, text, now()]
    )
    return int(cur.lastrowid)


def get_source(db: Database, source_id: int) -> dict[str, Any] | None:
    """A source row (id, name, sha256, text) or None."""
    return fetch_one(db, "SELECT * FROM sources WHERE id = ?", [source_id])


def create_lesson(
    db: Database,
    *,
    topic: str,
    teachers: list[str],
    students: list[str],
    max_turns: int,
    mode: str = "single",
    source_id: int | None = None,
    started_by: str | None = None,
    guild_id: int | None = None,
    channel_id: int | None = None,
) -> int:
    """Create a running lesson with its participants in one transaction; return its id."""
    with Transaction(db):
        cur = db.execute(
            "INSERT INTO lessons (topic, source_id, status, mode, max_turns, started_by, guild_id, channel_id,"
            " created_at) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?)",
            [topic, source_id, mode, max_turns, started_by, guild_id, channel_id, now()],
        )
        lesson_id = int(cur.lastrowid)
        for role, names in (("teacher", teachers), ("student", students)):
            for pos, name in enumerate(names):
                db.execute(
                    "INSERT INTO lesson_participants (lesson_id, model, role, position) VALUES (?, ?, ?, ?)",
                    [lesson_id, name, role, pos],
                )
    return lesson_id


def participants(db: Database, lesson_id: int) -> list[Participant]:
    """Teachers then students, each in the order they were given."""
    rows = db.execute(
        "SELECT model, role FROM lesson_participants WHERE lesson_id = ? ORDER BY role DESC, position",
        [lesson_id],
    ).fetchall()
    return [Participant(model=r[0], role=r[1]) for r in rows]


def set_syllabus(db: Database, lesson_id: int, sections: list[dict[str, Any]]) -> None:
    """Record the planned syllabus (a list of {title, text}) on the lesson."""
    db.execute("UPDATE lessons SET syllabus = ? WHERE id = ?", [json.dumps(sections), lesson_id])


def set_discord_ids(
    db: Database, lesson_id: int, *, thread_id: int | None = None, summary_message_id: int | None = None
) -> None:
    """Remember where the lesson lives in Discord."""
    if thread_id is not None:
        db.execute("UPDATE lessons SET thread_id = ? WHERE id = ?", [thread_id, lesson_id])
    if summary_message_id is not None:
        db.execute("UPDATE lessons SET summary_message_id = ? WHERE id = ?", [summary_message_id, lesson_id])


def add_turn(
    db: Database,
    *,
    lesson_id: int,
    speaker: str,
    role: str,
    content: str,
    kind: str = "explain",
    section: int | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    latency_ms: int | None = None,
) -> dict[str, Any]:
    """Commit one finished turn at the next sequence number and return the stored row."""
    with Transaction(db):
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM turns WHERE lesson_id = ?", [lesson_id]).fetchone()[0]
        cur = db.execute(
            "INSERT INTO turns (lesson_id, seq, speaker, role, kind, section, content, prompt_tokens,"
            " completion_tokens, latency_ms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [lesson_id, seq, speaker, role, kind, section, content, prompt_tokens, completion_tokens, latency_ms, now()],
        )
    row = get_turn(db, int(cur.lastrowid))
    assert row is not None
    return row


def set_turn_message(db: Database, turn_id: int, message_id: int) -> None:
    """Link a turn to the Discord message that shows it (the first one, if it was split)."""
    db.execute("UPDATE turns SET message_id = ? WHERE id = ?", [message_id, turn_id])


def get_turn(db: Database, turn_id: int) -> dict[str, Any] | None:
    """One turn row or None."""
    return fetch_one(db, "SELECT * FROM turns WHERE id = ?", [turn_id])


def turn_by_message(db: Database, message_id: int) -> dict[str, Any] | None:
    """The turn shown by a Discord message, or None."""
    return fetch_one(db, "SELECT * FROM turns WHERE message_id = ?", [message_id])


def turns(db: Database, lesson_id: int) -> list[dict[str, Any]]:
    """All turns of a lesson in order."""
    return fetch_all(db, "SELECT * FROM turns WHERE lesson_id = ? ORDER BY seq", [lesson_id])


def finish_lesson(db: Database, lesson_id: int, status: str, reason: str | None = None) -> None:
    """Mark a lesson ended (finished, stopped, interrupted or failed) with an optional reason."""
    if status not in FINAL_STATUSES:
        raise ValueError(f"not a final status: {status}")
    db.execute(
        "UPDATE lessons SET status = ?, reason = ?, finished_at = ? WHERE id = ?", [status, reason, now(), lesson_id]
    )


def resume_lesson(db: Database, lesson_id: int) -> None:
    """Put an interrupted lesson back to running."""
    db.execute("UPDATE lessons SET status = 'running', reason = NULL, finished_at = NULL WHERE id = ?", [lesson_id])


def get_lesson(db: Database, lesson_id: int) -> dict[str, Any] | None:
    """A lesson row with decoded syllabus, or None."""
    row = fetch_one(db, "SELECT * FROM lessons WHERE id = ?", [lesson_id])
    if row is not None:
        row["syllabus"] = json.loads(row["syllabus"]) if row["syllabus"] else []
    return row


def list_lessons(db: Database, *, limit: int = 20, guild_id: int | None = None) -> list[dict[str, Any]]:
    """Recent lessons, newest first, with turn count and net lesson score."""
    where, args = ("WHERE l.guild_id = ?", [guild_id]) if guild_id is not None else ("", [])
    return fetch_all(
        db,
        "SELECT l.*, (SELECT COUNT(*) FROM turns t WHERE t.lesson_id = l.id) AS turn_count,"
        " (SELECT COALESCE(SUM(value), 0) FROM votes v WHERE v.target_type = 'lesson' AND v.target_id = l.id)"
        f" AS score FROM lessons l {where} ORDER BY l.id DESC LIMIT ?",
        [*args, limit],
    )


def running_in_guild(db: Database, guild_id: int) -> int:
    """How many lessons are running in a server now."""
    return int(
        db.execute("SELECT COUNT(*) FROM lessons WHERE guild_id = ? AND status = 'running'", [guild_id]).fetchone()[0]
    )


def mark_running_interrupted(db: Database, reason: str = "the bot restarted while the lesson ran") -> list[int]:
    """At start-up: lessons still marked running were cut off. Mark them interrupted; return their ids."""
    ids = [r[0] for r in db.execute("SELECT id FROM lessons WHERE status = 'running'").fetchall()]
    for lesson_id in ids:
        finish_lesson(db, lesson_id, "interrupted", reason)
    return ids

