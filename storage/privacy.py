"""Forgetting a member: nothing holding their Discord id stays, anonymous counts do.

What a member leaves behind, and what `/privacy forget-me` does with it:
  - votes on turns, lessons and answers, and panel ballots: each row keeps its value but gets a fresh random
    anonymous id, so every tally (and what is trained on, and what was approved) stays exactly
    as it was, and no two forgotten votes can be linked to each other or to the member;
  - quiz answers the member wrote: deleted, with the votes and message links that pointed at them;
  - authorship (lessons and quiz games they started, curator decisions): the id is blanked.
"""

from __future__ import annotations

import secrets

from sqlite_utils import Database

from storage.db import Transaction

FORGOTTEN = "forgotten"
"""What stands in for a forgotten curator in decisions (the column may not be empty)."""
ANONYMOUS_PREFIX = "anon:"


def anonymous_id() -> str:
    """A fresh id that stands for one forgotten vote; it links to nothing."""
    return ANONYMOUS_PREFIX + secrets.token_hex(8)


def forget_member(db: Database, member_id: str) -> dict[str, int]:
    """Remove every trace of `member_id`, in one transaction; returns how many rows of each kind changed."""
    member_id = str(member_id)
    with Transaction(db):
        removed = {"votes": _anonymise_votes(db, member_id), "panel_ballots": _anonymise_ballots(db, member_id)}
        removed.update(_delete_quiz_answers(db, member_id))
        removed["lessons"] = db.execute(
            "UPDATE lessons SET started_by = NULL WHERE started_by = ?", [member_id]
        ).rowcount
        removed["quiz_games"] = db.execute(
            "UPDATE quiz_games SET started_by = NULL WHERE started_by = ?", [member_id]
        ).rowcount
        removed["approvals"] = db.execute(
            "UPDATE approvals SET curator = ? WHERE curator = ?", [FORGOTTEN, member_id]
        ).rowcount
        removed["corrections"] = db.execute(
            "UPDATE quiz_corrections SET curator = ? WHERE curator = ?", [FORGOTTEN, member_id]
        ).rowcount
    return removed


def _anonymise_votes(db: Database, member_id: str) -> int:
    """Give each of the member's votes its own anonymous id; the value and target stay."""
    keys = db.execute(
        "SELECT target_type, target_id FROM votes WHERE member_id = ?", [member_id]
    ).fetchall()
    for target_type, target_id in keys:
        db.execute(
            "UPDATE votes SET member_id = ?, via = 'forgotten' WHERE target_type = ? AND target_id = ? AND member_id = ?",
            [anonymous_id(), target_type, target_id, member_id],
        )
    return len(keys)


def _anonymise_ballots(db: Database, member_id: str) -> int:
    """Panel ballots likewise: each keeps the answer it chose (the winner stays) under its own anonymous id."""
    keys = db.execute("SELECT lesson_id, section FROM panel_ballots WHERE member_id = ?", [member_id]).fetchall()
    for lesson_id, section in keys:
        db.execute(
            "UPDATE panel_ballots SET member_id = ? WHERE lesson_id = ? AND section = ? AND member_id = ?",
            [anonymous_id(), lesson_id, section, member_id],
        )
    return len(keys)


def _delete_quiz_answers(db: Database, member_id: str) -> dict[str, int]:
    """Delete the member's own quiz answers, and the votes and message links that pointed at them."""
    ids = [
        r[0]
        for r in db.execute(
            "SELECT id FROM quiz_answers WHERE answerer_kind = 'member' AND answerer = ?", [member_id]
        ).fetchall()
    ]
    for answer_id in ids:
        db.execute("DELETE FROM votes WHERE target_type = 'answer' AND target_id = ?", [answer_id])
        db.execute("DELETE FROM discord_messages WHERE target_type = 'answer' AND target_id = ?", [answer_id])
        db.execute("DELETE FROM quiz_answers WHERE id = ?", [answer_id])
    return {"quiz_answers": len(ids)}
