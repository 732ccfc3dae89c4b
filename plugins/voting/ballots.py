"""Votes and curator decisions as plain functions: who may decide, and what a click or reaction changes.

The storage functions here take the db first and run on the store thread in one call, so a
vote and the approval it may trigger are read and written together.
"""

from __future__ import annotations

import discord
from sqlite_utils import Database

from settings import Settings
from storage import discord as dq
from storage import lessons as q
from storage import votes as v
from storage.votes import Tally

UP, DOWN = "👍", "👎"
EMOJI_VALUES = {UP: 1, DOWN: -1}
TRAINABLE = ("finished", "stopped")


def is_curator(member: discord.Member | discord.User, settings: Settings) -> bool:
    """Members with Manage Server, or with the configured curator role (a name or an id)."""
    if not isinstance(member, discord.Member):
        return False
    if member.guild_permissions.manage_guild:
        return True
    wanted = (settings.discord.curator_role or "").strip()
    if not wanted:
        return False
    return any(str(role.id) == wanted or role.name.casefold() == wanted.casefold() for role in member.roles)


def curator_rule(settings: Settings) -> str:
    """Who counts as a curator here, in a member's words."""
    role = settings.discord.curator_role
    return f"members with Manage Server or the '{role}' role" if role else "members with Manage Server"


def click(db: Database, target_type: str, target_id: int, member_id: str, value: int, threshold: int) -> Tally | None:
    """A vote button: toggle the member's vote; re-check the lesson's approval. None if the target is gone."""
    if not _exists(db, target_type, target_id):
        return None
    v.toggle_vote(db, target_type, target_id, member_id, value, "button")
    if target_type == "lesson":
        v.refresh_threshold_approval(db, target_id, threshold)
    return v.tally(db, target_type, target_id)


def react(
    db: Database, message_id: int, member_id: str, value: int, added: bool, threshold: int
) -> tuple[str, int] | None:
    """A 👍/👎 reaction added or removed on one of our messages: the same vote row a button uses.

    Returns the target voted on, or None when the message shows nothing that can be voted on.
    """
    target = dq.target_of_message(db, message_id)
    if target is None or target[0] not in ("turn", "lesson"):
        return None
    target_type, target_id = target
    if added:
        v.set_vote(db, target_type, target_id, member_id, value, "reaction")
    else:
        v.clear_vote(db, target_type, target_id, member_id, value)
    if target_type == "lesson":
        v.refresh_threshold_approval(db, target_id, threshold)
    return target


def decide(db: Database, lesson_id: int, curator_id: str, decision: str) -> str | None:
    """Store a curator's approve/reject; returns why it can't be stored, or None when stored."""
    lesson = q.get_lesson(db, lesson_id)
    if lesson is None:
        return f"Lesson #{lesson_id} no longer exists."
    if lesson["status"] not in TRAINABLE:
        return f"Lesson #{lesson_id} is {lesson['status']}; only finished or stopped lessons can be approved or rejected."
    v.record_decision(db, lesson_id, curator_id, decision)
    return None


def _exists(db: Database, target_type: str, target_id: int) -> bool:
    if target_type == "turn":
        return q.get_turn(db, target_id) is not None
    if target_type == "lesson":
        return q.get_lesson(db, target_id) is not None
    return False
