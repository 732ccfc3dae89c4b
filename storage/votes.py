"""Votes on turns, lessons and quiz answers; curator approvals; what the community approved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from storage.db import Transaction, fetch_all, fetch_one, now

TARGETS = ("turn", "lesson", "answer")


@dataclass(frozen=True)
class Tally:
    """Vote counts on one target."""

    up: int
    down: int

    @property
    def net(self) -> int:
        return self.up - self.down


def toggle_vote(db: Database, target_type: str, target_id: int, member_id: str, value: int, via: str = "button") -> int:
    """A button click: the same vote again removes it, the other vote replaces it.

    Returns the member's vote after the click (1, -1, or 0 for none). One row per member
    per target, so buttons and reactions can never count twice.
    """
    _check(target_type, value)
    with Transaction(db):
        row = db.execute(
            "SELECT value FROM votes WHERE target_type = ? AND target_id = ? AND member_id = ?",
            [target_type, target_id, member_id],
        ).fetchone()
        if row is not None and row[0] == value:
            _delete(db, target_type, target_id, member_id)
            return 0
        _upsert(db, target_type, target_id, member_id, value, via)
        return value


def set_vote(db: Database, target_type: str, target_id: int, member_id: str, value: int, via: str = "reaction") -> None:
    """A reaction added: the member's vote becomes `value` (idempotent)."""
    _check(target_type, value)
    _upsert(db, target_type, target_id, member_id, value, via)


def clear_vote(db: Database, target_type: str, target_id: int, member_id: str, value: int | None = None) -> None:
    """A reaction removed: drop the member's vote, only if it is still `value` when given."""
    sql = "DELETE FROM votes WHERE target_type = ? AND target_id = ? AND member_id = ?"
    args: list[Any] = [target_type, target_id, member_id]
    if value is not None:
        sql += " AND value = ?"
        args.append(value)
    db.execute(sql, args)


def member_vote(db: Database, target_type: str, target_id: int, member_id: str) -> int:
    """The member's current vote on a target: 1, -1 or 0."""
    row = db.execute(
        "SELECT value FROM votes WHERE target_type = ? AND target_id = ? AND member_id = ?",
        [target_type, target_id, member_id],
    ).fetchone()
    return int(row[0]) if row else 0


def tally(db: Database, target_type: str, target_id: int) -> Tally:
    """Up and down votes on one target."""
    up, down = db.execute(
        "SELECT COALESCE(SUM(value = 1), 0), COALESCE(SUM(value = -1), 0) FROM votes"
        " WHERE target_type = ? AND target_id = ?",
        [target_type, target_id],
    ).fetchone()
    return Tally(up=int(up), down=int(down))


def record_decision(db: Database, lesson_id: int, curator: str, decision: str, reason: str | None = None) -> None:
    """Store a curator's approve/reject and update the lesson's approved flag accordingly."""
    if decision not in ("approve", "reject"):
        raise ValueError(f"unknown decision: {decision}")
    with Transaction(db):
        db.execute(
            "INSERT INTO approvals (lesson_id, curator, decision, reason, created_at) VALUES (?, ?, ?, ?, ?)",
            [lesson_id, curator, decision, reason, now()],
        )
        approved = decision == "approve"
        db.execute(
            "UPDATE lessons SET approved = ?, approved_at = ? WHERE id = ?",
            [int(approved), now() if approved else None, lesson_id],
        )


def latest_decision(db: Database, lesson_id: int) -> dict[str, Any] | None:
    """The last curator decision on a lesson, or None."""
    return fetch_one(db, "SELECT * FROM approvals WHERE lesson_id = ? ORDER BY id DESC LIMIT 1", [lesson_id])


def refresh_threshold_approval(db: Database, lesson_id: int, threshold: int) -> bool:
    """Approve a lesson whose net lesson score reached `threshold`, unless a curator decided otherwise.

    Returns whether the lesson is approved now. A curator's decision always wins over votes.
    """
    with Transaction(db):
        decision = db.execute(
            "SELECT decision FROM approvals WHERE lesson_id = ? ORDER BY id DESC LIMIT 1", [lesson_id]
        ).fetchone()
        if decision is not None:
            return decision[0] == "approve"
        net = db.execute(
            "SELECT COALESCE(SUM(value), 0) FROM votes WHERE target_type = 'lesson' AND target_id = ?", [lesson_id]
        ).fetchone()[0]
        approved = net >= threshold
        db.execute(
            "UPDATE lessons SET approved = ?, approved_at = CASE WHEN ? THEN COALESCE(approved_at, ?) END WHERE id = ?",
            [int(approved), int(approved), now(), lesson_id],
        )
        return approved


def excluded_turn_ids(db: Database, lesson_id: int) -> set[int]:
    """Turns with a net negative score: kept for the record, never trained on."""
    rows = db.execute(
        "SELECT t.id FROM turns t JOIN votes v ON v.target_type = 'turn' AND v.target_id = t.id"
        " WHERE t.lesson_id = ? GROUP BY t.id HAVING SUM(v.value) < 0",
        [lesson_id],
    ).fetchall()
    return {int(r[0]) for r in rows}


def approved_lessons(db: Database, *, student: str | None = None, since_id: int = 0) -> list[dict[str, Any]]:
    """Finished or stopped lessons approved for training, optionally only those a student took part in."""
    sql = "SELECT l.* FROM lessons l WHERE l.approved = 1 AND l.status IN ('finished', 'stopped') AND l.id > ?"
    args: list[Any] = [since_id]
    if student is not None:
        sql += " AND EXISTS (SELECT 1 FROM lesson_participants p WHERE p.lesson_id = l.id AND p.model = ? AND p.role = 'student')"
        args.append(student)
    return fetch_all(db, sql + " ORDER BY l.id", args)


def forget_member(db: Database, member_id: str) -> dict[str, int]:
    """Delete a member's votes, quiz answers and authorship; keep anonymous counts. Returns what was removed."""
    with Transaction(db):
        votes = db.execute("DELETE FROM votes WHERE member_id = ?", [member_id]).rowcount
        answers = db.execute(
            "DELETE FROM quiz_answers WHERE answerer_kind = 'member' AND answerer = ?", [member_id]
        ).rowcount
        lessons = db.execute("UPDATE lessons SET started_by = NULL WHERE started_by = ?", [member_id]).rowcount
        approvals = db.execute("UPDATE approvals SET curator = 'forgotten' WHERE curator = ?", [member_id]).rowcount
    return {"votes": votes, "quiz_answers": answers, "lessons": lessons, "approvals": approvals}


def _check(target_type: str, value: int) -> None:
    if target_type not in TARGETS:
        raise ValueError(f"unknown vote target: {target_type}")
    if value not in (1, -1):
        raise ValueError(f"a vote is 1 or -1, not {value}")


def _upsert(db: Database, target_type: str, target_id: int, member_id: str, value: int, via: str) -> None:
    ts = now()
    db.execute(
        "INSERT INTO votes (target_type, target_id, member_id, value, via, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (target_type, target_id, member_id)"
        " DO UPDATE SET value = excluded.value, via = excluded.via, updated_at = excluded.updated_at",
        [target_type, target_id, member_id, value, via, ts, ts],
    )


def _delete(db: Database, target_type: str, target_id: int, member_id: str) -> None:
    db.execute(
        "DELETE FROM votes WHERE target_type = ? AND target_id = ? AND member_id = ?",
        [target_type, target_id, member_id],
    )


def votes_on_lesson_turns(db: Database, lesson_id: int) -> list[dict[str, Any]]:
    """Every turn vote in a lesson (for exports and reports)."""
    return fetch_all(
        db,
        "SELECT v.* FROM votes v JOIN turns t ON v.target_type = 'turn' AND v.target_id = t.id WHERE t.lesson_id = ?",
        [lesson_id],
    )
