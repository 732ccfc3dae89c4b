"""Quiz games, their rounds and answers, and the corrections that members' 👎 turn into training examples.

A game asks held-out items in rounds. Members answer a round while it is open (one answer
each, the last one counts); the student's answer and every grade are written when the
round closes. A student answer with a net negative vote becomes a candidate correction:
the question, and the teacher's correction as the answer to learn. Only corrections a
curator approved are trained on (`approved_corrections`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from storage import discord as dq
from storage import votes as v
from storage.db import Transaction, fetch_all, fetch_one, now
from storage.votes import Tally

GAME_FINAL = ("finished", "interrupted", "failed")


# ---- items


def game_items(
    db: Database, *, lesson_id: int | None = None, topic: str | None = None, guild_id: int | None = None
) -> list[dict[str, Any]]:
    """Held-out items of one lesson, or of lessons whose topic contains `topic`, oldest first.

    With `guild_id`, only items of that server's lessons or of lessons made outside Discord
    (the CLI), so one server's material never shows up in another's quiz.
    """
    sql = ("SELECT q.* FROM quiz_items q LEFT JOIN lessons l ON l.id = q.lesson_id"
           " WHERE q.split = 'heldout'")
    args: list[Any] = []
    if lesson_id is not None:
        sql += " AND q.lesson_id = ?"
        args.append(lesson_id)
    if topic:
        sql += " AND (q.topic LIKE ? ESCAPE '\\' OR l.topic LIKE ? ESCAPE '\\')"
        pattern = "%" + topic.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        args += [pattern, pattern]
    if guild_id is not None:
        sql += " AND (l.guild_id IS NULL OR l.guild_id = ?)"
        args.append(guild_id)
    return [_decode_item(r) for r in fetch_all(db, sql + " ORDER BY q.id", args)]


def item_topics(db: Database, item_ids: Iterable[int]) -> dict[int, str]:
    """The topic of each quiz item that still exists."""
    ids = sorted({int(i) for i in item_ids})
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    rows = db.execute(f"SELECT id, topic FROM quiz_items WHERE id IN ({marks})", ids).fetchall()
    return {int(r[0]): str(r[1]) for r in rows}


def _row_id(cursor: Any) -> int:
    """The id of the row an INSERT just wrote."""
    assert cursor.lastrowid is not None
    return int(cursor.lastrowid)


def _decode_item(row: dict[str, Any]) -> dict[str, Any]:
    row["keywords"] = json.loads(row["keywords"]) if row.get("keywords") else None
    return row


# ---- games and rounds


def create_game(
    db: Database, *, student: str, teacher: str, questions: int, seconds: int, lesson_id: int | None = None,
    topic: str | None = None, started_by: str | None = None, guild_id: int | None = None, channel_id: int | None = None,
) -> int:
    """Record a game as running; return its id."""
    cur = db.execute(
        "INSERT INTO quiz_games (student, teacher, lesson_id, topic, questions, seconds, status, started_by, guild_id,"
        " channel_id, created_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
        [student, teacher, lesson_id, topic, questions, seconds, started_by, guild_id, channel_id, now()],
    )
    return _row_id(cur)


def get_game(db: Database, game_id: int) -> dict[str, Any] | None:
    """One game."""
    return fetch_one(db, "SELECT * FROM quiz_games WHERE id = ?", [game_id])


def running_game_in_channel(db: Database, channel_id: int) -> dict[str, Any] | None:
    """The game running in a channel, if any."""
    return fetch_one(db, "SELECT * FROM quiz_games WHERE channel_id = ? AND status = 'running'", [channel_id])


def finish_game(db: Database, game_id: int, status: str) -> None:
    """Close a game; its open rounds close with it."""
    if status not in GAME_FINAL:
        raise ValueError(f"not a final game status: {status}")
    with Transaction(db):
        db.execute("UPDATE quiz_games SET status = ?, finished_at = ? WHERE id = ?", [status, now(), game_id])
        db.execute("UPDATE quiz_rounds SET status = 'closed', closed_at = ? WHERE game_id = ? AND status = 'open'",
                   [now(), game_id])


def mark_running_games_interrupted(db: Database) -> list[int]:
    """At start-up: games still marked running died with the process that ran them."""
    ids = [int(r[0]) for r in db.execute("SELECT id FROM quiz_games WHERE status = 'running'").fetchall()]
    for game_id in ids:
        finish_game(db, game_id, "interrupted")
    return ids


def open_round(db: Database, game_id: int, item_id: int, seq: int) -> int:
    """Start asking one item; members may answer until the round closes."""
    cur = db.execute("INSERT INTO quiz_rounds (game_id, item_id, seq, status, created_at) VALUES (?, ?, ?, 'open', ?)",
                     [game_id, item_id, seq, now()])
    return _row_id(cur)


def get_round(db: Database, round_id: int) -> dict[str, Any] | None:
    """A round with its item (question, answer, keywords, topic) and its game's student and teacher."""
    row = fetch_one(
        db,
        "SELECT r.*, q.question, q.answer AS reference, q.keywords, q.topic, g.student, g.teacher, g.questions"
        " FROM quiz_rounds r JOIN quiz_items q ON q.id = r.item_id JOIN quiz_games g ON g.id = r.game_id WHERE r.id = ?",
        [round_id],
    )
    if row is not None:
        row["keywords"] = json.loads(row["keywords"]) if row["keywords"] else None
    return row


def set_round_message(db: Database, round_id: int, message_id: int) -> None:
    """Remember the message that asks the round's question."""
    db.execute("UPDATE quiz_rounds SET message_id = ? WHERE id = ?", [message_id, round_id])


def close_round(db: Database, round_id: int) -> None:
    """No more answers to this round."""
    db.execute("UPDATE quiz_rounds SET status = 'closed', closed_at = ? WHERE id = ? AND status = 'open'", [now(), round_id])


def rounds_played(db: Database, game_id: int) -> int:
    """How many of a game's questions were asked and closed."""
    return int(db.execute("SELECT COUNT(*) FROM quiz_rounds WHERE game_id = ? AND status = 'closed'", [game_id]).fetchone()[0])


def set_round_explanation(db: Database, round_id: int, text: str) -> None:
    """The teacher's phrasing of the reference answer, shown at the reveal and used as the correction."""
    db.execute("UPDATE quiz_rounds SET explanation = ? WHERE id = ?", [text, round_id])


# ---- answers


def submit_member_answer(db: Database, round_id: int, member_id: str, answer: str) -> str | None:
    """A member's answer to an open round (a second one replaces the first); why it can't count, else None."""
    with Transaction(db):
        row = db.execute("SELECT item_id, status FROM quiz_rounds WHERE id = ?", [round_id]).fetchone()
        if row is None:
            return "That quiz question no longer exists."
        if row[1] != "open":
            return "Time is up for that question; answers are closed."
        db.execute(
            "INSERT INTO quiz_answers (item_id, round_id, answerer, answerer_kind, answer, created_at)"
            " VALUES (?, ?, ?, 'member', ?, ?) ON CONFLICT (round_id, answerer) WHERE round_id IS NOT NULL"
            " DO UPDATE SET answer = excluded.answer, created_at = excluded.created_at",
            [row[0], round_id, member_id, answer, now()],
        )
    return None


def add_model_answer(
    db: Database, *, item_id: int, answerer: str, answer: str, round_id: int | None = None,
    adapter_id: int | None = None, correct: bool | None = None, grader: str | None = None,
) -> int:
    """Store a model's answer to an item; return its id."""
    cur = db.execute(
        "INSERT INTO quiz_answers (item_id, round_id, answerer, answerer_kind, adapter_id, answer, correct, grader,"
        " created_at) VALUES (?, ?, ?, 'model', ?, ?, ?, ?, ?)",
        [item_id, round_id, answerer, adapter_id, answer, None if correct is None else int(correct), grader, now()],
    )
    return _row_id(cur)


def round_answers(db: Database, round_id: int) -> list[dict[str, Any]]:
    """Every answer to a round, the model's first, then members' in the order they answered."""
    return fetch_all(db, "SELECT * FROM quiz_answers WHERE round_id = ? ORDER BY answerer_kind = 'member', id", [round_id])


def record_grades(db: Database, grades: Iterable[tuple[int, bool | None, str]]) -> None:
    """Store (answer id, correct, grader) for several answers at once."""
    with Transaction(db):
        for answer_id, correct, grader in grades:
            db.execute("UPDATE quiz_answers SET correct = ?, grader = ? WHERE id = ?",
                       [None if correct is None else int(correct), grader, answer_id])


def set_answer_message(db: Database, answer_id: int, message_id: int, channel_id: int | None) -> None:
    """Remember the message that shows an answer (its vote buttons live there)."""
    with Transaction(db):
        db.execute("UPDATE quiz_answers SET message_id = ? WHERE id = ?", [message_id, answer_id])
        dq.record_message(db, message_id, "answer", answer_id, channel_id)


def get_answer(db: Database, answer_id: int) -> dict[str, Any] | None:
    """An answer with its question, reference, round explanation and the game's teacher."""
    return fetch_one(
        db,
        "SELECT a.*, q.question, q.answer AS reference, r.explanation, g.teacher, g.student FROM quiz_answers a"
        " JOIN quiz_items q ON q.id = a.item_id LEFT JOIN quiz_rounds r ON r.id = a.round_id"
        " LEFT JOIN quiz_games g ON g.id = r.game_id WHERE a.id = ?",
        [answer_id],
    )


def scoreboard(db: Database, game_id: int) -> list[dict[str, Any]]:
    """Per answerer in a game: kind, answers given, answers right; best first."""
    return fetch_all(
        db,
        "SELECT a.answerer, a.answerer_kind AS kind, COUNT(*) AS answered, COALESCE(SUM(a.correct = 1), 0) AS correct,"
        " COUNT(a.correct) AS graded FROM quiz_answers a JOIN quiz_rounds r ON r.id = a.round_id WHERE r.game_id = ?"
        " GROUP BY a.answerer, a.answerer_kind ORDER BY correct DESC, answered ASC, MIN(a.id)",
        [game_id],
    )


# ---- votes on answers and the corrections they lead to


@dataclass(frozen=True)
class AnswerVote:
    """What a vote on an answer changed: the new counts, and a correction it created (or None)."""

    tally: Tally
    correction_id: int | None = None


def vote_on_answer(db: Database, answer_id: int, member_id: str, value: int, system: str) -> AnswerVote | None:
    """Toggle a member's vote on an answer; a model answer that falls below zero gets a candidate correction.

    `system` is the prompt the student answers with; it is stored with the correction so the
    training example asks exactly as the quiz did. None when the answer no longer exists.
    """
    with Transaction(db):
        answer = get_answer(db, answer_id)
        if answer is None:
            return None
        row = db.execute("SELECT value FROM votes WHERE target_type = 'answer' AND target_id = ? AND member_id = ?",
                         [answer_id, member_id]).fetchone()
        if row is not None and row[0] == value:
            v.clear_vote(db, "answer", answer_id, member_id)
        else:
            v.set_vote(db, "answer", answer_id, member_id, value, "button")
        tally = v.tally(db, "answer", answer_id)
        created = None
        if tally.net < 0 and answer["answerer_kind"] == "model" and answer["explanation"] and answer["teacher"]:
            cur = db.execute(
                "INSERT OR IGNORE INTO quiz_corrections (answer_id, student, teacher, system, question, correction,"
                " status, created_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                [answer_id, answer["answerer"], answer["teacher"], system, answer["question"], answer["explanation"],
                 now()],
            )
            created = _row_id(cur) if cur.rowcount == 1 else None
    return AnswerVote(tally, created)


def get_correction(db: Database, correction_id: int) -> dict[str, Any] | None:
    """One correction with the student's answer it corrects."""
    return fetch_one(
        db,
        "SELECT c.*, a.answer AS student_answer FROM quiz_corrections c JOIN quiz_answers a ON a.id = c.answer_id"
        " WHERE c.id = ?",
        [correction_id],
    )


def set_correction_message(db: Database, correction_id: int, message_id: int, channel_id: int | None) -> None:
    """Remember the message carrying a correction's curator buttons."""
    db.execute("UPDATE quiz_corrections SET message_id = ?, channel_id = ? WHERE id = ?",
               [message_id, channel_id, correction_id])


def decide_correction(db: Database, correction_id: int, curator: str, decision: str) -> dict[str, Any] | None:
    """A curator approves or rejects a correction (the last decision wins); the updated row, or None if gone.

    Approving takes the corrected item out of the held-out set for good (split 'game'): the
    student may train on its answer from now on, so it can no longer measure what the student
    learned without seeing it.
    """
    if decision not in ("approve", "reject"):
        raise ValueError(f"unknown decision: {decision}")
    status = "approved" if decision == "approve" else "rejected"
    with Transaction(db):
        db.execute("UPDATE quiz_corrections SET status = ?, curator = ?, decided_at = ? WHERE id = ?",
                   [status, curator, now(), correction_id])
        if status == "approved":
            db.execute("UPDATE quiz_items SET split = 'game' WHERE split = 'heldout' AND id = (SELECT a.item_id"
                       " FROM quiz_corrections c JOIN quiz_answers a ON a.id = c.answer_id WHERE c.id = ?)",
                       [correction_id])
    return get_correction(db, correction_id)


def approved_corrections(db: Database, student: str, *, no_train_teachers: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Approved corrections of a student as chat examples in the trainer's shape, oldest first.

    Each is {"id", "correction_id", "messages": [system, user question, assistant correction]}.
    A correction by a teacher whose outputs may not be trained on is left out.
    """
    blocked = set(no_train_teachers)
    rows = fetch_all(db, "SELECT * FROM quiz_corrections WHERE student = ? AND status = 'approved' ORDER BY id", [student])
    return [
        {
            "id": f"correction{r['id']}",
            "correction_id": r["id"],
            "messages": [
                {"role": "system", "content": r["system"]},
                {"role": "user", "content": r["question"]},
                {"role": "assistant", "content": r["correction"], "train": True, "speaker": r["teacher"]},
            ],
        }
        for r in rows
        if r["teacher"] not in blocked
    ]
