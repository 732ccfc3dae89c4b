"""Votes on turns, lessons and quiz answers; curator approvals; what the community approved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from storage import privacy
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
    """Approve a lesson whose net lesson score reached `threshold` with an up vote from someone besides its
    starter, unless a curator decided otherwise.

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
        # A member can't approve their own lesson alone: someone other than its starter must vote it up too.
        others_up = db.execute(
            "SELECT COUNT(*) FROM votes WHERE target_type = 'lesson' AND target_id = ? AND value > 0"
            " AND member_id IS NOT (SELECT started_by FROM lessons WHERE id = ?)",
            [lesson_id, lesson_id],
        ).fetchone()[0]
        approved = net >= threshold and others_up > 0
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
    """Forget a member, keeping anonymous counts (see `storage.privacy.forget_member`)."""
    return privacy.forget_member(db, member_id)


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


# ---- panel ballots: which of the teachers' answers to one student question a member found best


def cast_ballot(db: Database, turn_id: int, member_id: str) -> int | None:
    """A member picks a panel answer as best: one ballot per member per question, and picking the
    same answer again takes the ballot back. Returns the member's choice now (a turn id or None);
    raises ValueError when the turn is not a panel answer."""
    turn = db.execute("SELECT lesson_id, section, kind FROM turns WHERE id = ?", [turn_id]).fetchone()
    if turn is None or turn[2] != "panel":
        raise ValueError(f"turn {turn_id} is not a panel answer")
    lesson_id, section = turn[0], turn[1]
    with Transaction(db):
        row = db.execute(
            "SELECT turn_id FROM panel_ballots WHERE lesson_id = ? AND section = ? AND member_id = ?",
            [lesson_id, section, member_id],
        ).fetchone()
        if row is not None and row[0] == turn_id:
            db.execute("DELETE FROM panel_ballots WHERE lesson_id = ? AND section = ? AND member_id = ?",
                       [lesson_id, section, member_id])
            return None
        db.execute(
            "INSERT INTO panel_ballots (lesson_id, section, member_id, turn_id, created_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (lesson_id, section, member_id) DO UPDATE SET turn_id = excluded.turn_id,"
            " created_at = excluded.created_at",
            [lesson_id, section, member_id, turn_id, now()],
        )
    return turn_id


def ballot_counts(db: Database, lesson_id: int) -> dict[int, int]:
    """{turn id: ballots} for every panel answer of a lesson that has at least one ballot."""
    rows = db.execute(
        "SELECT turn_id, COUNT(*) FROM panel_ballots WHERE lesson_id = ? GROUP BY turn_id", [lesson_id]
    ).fetchall()
    return {int(r[0]): int(r[1]) for r in rows}


def turn_nets(db: Database, lesson_id: int) -> dict[int, int]:
    """{turn id: net 👍/👎} for the voted turns of a lesson."""
    rows = db.execute(
        "SELECT t.id, SUM(v.value) FROM turns t JOIN votes v ON v.target_type = 'turn' AND v.target_id = t.id"
        " WHERE t.lesson_id = ? GROUP BY t.id",
        [lesson_id],
    ).fetchall()
    return {int(r[0]): int(r[1]) for r in rows}


def teacher_records(db: Database) -> dict[str, dict[str, int]]:
    """Per teacher: ended lessons taught, how many were approved, panel questions answered and won.

    A panel question counts as won by the answer with strictly the most ballots."""
    out: dict[str, dict[str, int]] = {}
    for model, taught, approved in db.execute(
        "SELECT p.model, COUNT(*), COALESCE(SUM(l.approved), 0) FROM lesson_participants p"
        " JOIN lessons l ON l.id = p.lesson_id WHERE p.role = 'teacher' AND l.status IN ('finished', 'stopped')"
        " GROUP BY p.model"
    ).fetchall():
        out[model] = {"lessons": int(taught), "approved": int(approved), "panels": 0, "wins": 0}
    rows = db.execute(
        "SELECT t.lesson_id, t.section, t.speaker, COALESCE(b.n, 0) FROM turns t LEFT JOIN"
        " (SELECT turn_id, COUNT(*) AS n FROM panel_ballots GROUP BY turn_id) b ON b.turn_id = t.id"
        " WHERE t.kind = 'panel' ORDER BY t.lesson_id, t.section"
    ).fetchall()
    questions: dict[tuple[int, int], list[tuple[str, int]]] = {}
    for lesson_id, section, speaker, n in rows:
        questions.setdefault((lesson_id, section), []).append((speaker, int(n)))
    for answers in questions.values():
        ranked = sorted(answers, key=lambda a: -a[1])
        won = ranked[0][0] if ranked[0][1] > 0 and (len(ranked) == 1 or ranked[0][1] > ranked[1][1]) else None
        for speaker, _ in answers:
            rec = out.setdefault(speaker, {"lessons": 0, "approved": 0, "panels": 0, "wins": 0})
            rec["panels"] += 1
            rec["wins"] += int(speaker == won)
    return out
