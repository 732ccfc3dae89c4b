"""The lesson card: what a lesson covered, how it ended, its votes and whether it is approved for training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import discord
from sqlite_utils import Database

from app import AppContext
from plugins.common.text import shorten
from storage import lessons as q
from storage import votes as v
from storage.votes import Tally

STATUS = {
    "running": ("⏳", "Running"),
    "finished": ("✅", "Finished"),
    "stopped": ("⏹️", "Stopped"),
    "interrupted": ("⚠️", "Interrupted"),
    "failed": ("❌", "Failed"),
}
TRAINABLE = ("finished", "stopped")
TURNS_PER_SECTION = 3


@dataclass(frozen=True)
class LessonCard:
    """Everything shown about one lesson, read in one go from the store."""

    lesson: dict[str, Any]
    turns: list[dict[str, Any]]
    tally: Tally
    decision: dict[str, Any] | None
    teachers: list[str]
    students: list[str]

    @property
    def decided(self) -> str | None:
        """'approve', 'reject' or None when no curator decided yet."""
        return self.decision["decision"] if self.decision else None


def read_card(db: Database, lesson_id: int) -> LessonCard | None:
    """Load a lesson's card data (a storage function: run it with store.call)."""
    lesson = q.get_lesson(db, lesson_id)
    if lesson is None:
        return None
    people = q.participants(db, lesson_id)
    return LessonCard(
        lesson=lesson,
        turns=q.turns(db, lesson_id),
        tally=v.tally(db, "lesson", lesson_id),
        decision=v.latest_decision(db, lesson_id),
        teachers=[p.model for p in people if p.role == "teacher"],
        students=[p.model for p in people if p.role == "student"],
    )


def card_embed(app: AppContext, card: LessonCard) -> discord.Embed:
    """The embed for a lesson's summary message and for /lesson show."""
    lesson = card.lesson
    icon, label = STATUS.get(lesson["status"], ("•", lesson["status"]))
    reason = f": {shorten(lesson['reason'], 300)}" if lesson["reason"] else ""
    embed = discord.Embed(
        title=shorten(f"Lesson #{lesson['id']}: {lesson['topic']}", 256),
        description=f"{icon} **{label}**{reason}\n{len(card.turns)} turns",
        colour=_colour(lesson, card.decided),
    )
    embed.add_field(name="Teacher", value=_names(app, card.teachers), inline=True)
    embed.add_field(name="Student", value=_names(app, card.students), inline=True)
    embed.add_field(name="Syllabus", value=syllabus_lines(lesson["syllabus"], card.turns), inline=False)
    threshold = app.settings.lessons.approval_threshold
    embed.add_field(
        name="Votes",
        value=f"👍 {card.tally.up} · 👎 {card.tally.down} (net {card.tally.net:+d}; the community approves at {threshold:+d})",
        inline=False,
    )
    embed.add_field(name="Training", value=approval_line(card, threshold), inline=False)
    return embed


def syllabus_lines(syllabus: list[dict[str, Any]], turns: list[dict[str, Any]]) -> str:
    """One line per section: ✓ taught, ◐ begun, · not reached."""
    if not syllabus:
        return "not planned yet"
    done: dict[int, int] = {}
    for t in turns:
        if t["section"] is not None:
            done[t["section"]] = done.get(t["section"], 0) + 1
    lines = []
    for i, section in enumerate(syllabus):
        n = done.get(i, 0)
        mark = "✓" if n >= TURNS_PER_SECTION else "◐" if n else "·"
        lines.append(f"{mark} {i + 1}. {shorten(section.get('title', ''), 90)}")
    text = "\n".join(lines)
    return text if len(text) <= 1024 else text[:1020] + "\n…"


def approval_line(card: LessonCard, threshold: int) -> str:
    """Whether (and by whom) the lesson is approved to train the student."""
    lesson = card.lesson
    if lesson["status"] not in TRAINABLE:
        return "Not trainable: only finished or stopped lessons train the student."
    if card.decision is not None:
        who = _curator(card.decision["curator"])
        if card.decided == "approve":
            return f"✅ Approved by curator {who}; it will train the student."
        return f"🚫 Rejected by curator {who}; it will not train the student."
    if lesson["approved"]:
        return "✅ Approved by community vote; it will train the student."
    need = threshold - card.tally.net
    return f"Waiting: {need} more net 👍, or a curator's Approve."


def _curator(curator: str) -> str:
    return f"<@{curator}>" if curator.isdigit() else curator


def _names(app: AppContext, names: list[str]) -> str:
    shown = []
    for n in names:
        spec = app.models.specs.get(n)
        shown.append(f"{spec.display_name} (`{n}`)" if spec else f"`{n}`")
    return shorten(", ".join(shown), 1024) or "none"


def _colour(lesson: dict[str, Any], decided: str | None) -> discord.Colour:
    if decided == "reject" or lesson["status"] == "failed":
        return discord.Colour.red()
    if lesson["approved"]:
        return discord.Colour.green()
    if lesson["status"] == "running":
        return discord.Colour.blurple()
    return discord.Colour.light_grey()
