"""What the Discord layer remembers: which message shows which turn or lesson, one-time notices, adapters shown."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from storage.db import fetch_all, fetch_one, now


def record_message(db: Database, message_id: int, target_type: str, target_id: int, channel_id: int | None) -> None:
    """Remember that a Discord message shows (part of) a turn or a lesson summary."""
    db.execute(
        "INSERT OR REPLACE INTO discord_messages (message_id, target_type, target_id, channel_id, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        [message_id, target_type, target_id, channel_id, now()],
    )


def target_of_message(db: Database, message_id: int) -> tuple[str, int] | None:
    """The (target_type, target_id) a message shows, or None for messages that aren't ours to count."""
    row = db.execute(
        "SELECT target_type, target_id FROM discord_messages WHERE message_id = ?", [message_id]
    ).fetchone()
    if row is not None:
        return str(row[0]), int(row[1])
    row = db.execute("SELECT id FROM turns WHERE message_id = ?", [message_id]).fetchone()
    if row is not None:
        return "turn", int(row[0])
    row = db.execute("SELECT id FROM lessons WHERE summary_message_id = ?", [message_id]).fetchone()
    if row is not None:
        return "lesson", int(row[0])
    return None


def button_message(db: Database, target_type: str, target_id: int) -> dict[str, Any] | None:
    """The message carrying a target's vote buttons (the last one posted for it), or None."""
    return fetch_one(
        db,
        "SELECT message_id, channel_id FROM discord_messages WHERE target_type = ? AND target_id = ?"
        " ORDER BY message_id DESC LIMIT 1",
        [target_type, target_id],
    )


def mark_notice(db: Database, guild_id: int, notice: str) -> bool:
    """Record that a server was told `notice`; True the first time only."""
    cur = db.execute(
        "INSERT OR IGNORE INTO guild_notices (guild_id, notice, created_at) VALUES (?, ?, ?)",
        [guild_id, notice, now()],
    )
    return cur.rowcount == 1


def lesson_in_thread(db: Database, thread_id: int) -> dict[str, Any] | None:
    """The lesson that lives in a Discord thread, or None."""
    return fetch_one(db, "SELECT * FROM lessons WHERE thread_id = ? ORDER BY id DESC LIMIT 1", [thread_id])


def active_adapters(db: Database) -> dict[str, int]:
    """Each student's active adapter version ({} before any training promoted one)."""
    rows = fetch_all(db, "SELECT student, version FROM adapters WHERE status = 'active'")
    return {r["student"]: int(r["version"]) for r in rows}
