"""Turning a member's /lesson start into a LessonRequest: checks that need no storage, and the source file."""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from app import AppContext
from lessons.engine import LessonRequest
from lessons.sources import SourceError, decode_source
from plugins.common.choices import model_choices
from plugins.common.personas import Destination
from settings import Settings

log = logging.getLogger(__name__)


class Refused(Exception):
    """The lesson can't start; the message says why in a member's words."""


async def lesson_request(
    settings: Settings,
    interaction: discord.Interaction,
    *,
    topic: str,
    teacher: str | None,
    student: str | None,
    turns: int | None,
    source: discord.Attachment | None,
    teachers: str | None = None,
    students: str | None = None,
    mode: str | None = None,
) -> LessonRequest:
    """The request to give the engine (which checks topic and model names). Stores nothing; raises Refused."""
    channel = interaction.channel
    if not isinstance(channel, discord.TextChannel | discord.Thread) or interaction.guild is None:
        raise Refused("Lessons run in text channels and their threads.")
    missing = missing_permission(channel)
    if missing:
        raise Refused(f"I can't run a lesson in {channel.mention}: I need the {missing} permission there.")
    grounded = source is not None
    max_turns = settings.lessons.turn_limit(grounded)
    if turns is not None and turns > max_turns:
        raise Refused(f"A lesson here has at most {max_turns} turns (`lessons.{settings.lessons.turn_limit_setting(grounded)}`).")
    teacher_names = model_list(teacher, teachers) or [settings.default_teacher]
    student_names = model_list(student, students) or [settings.default_student]
    if mode == "panel" and len(teacher_names) < 2:
        raise Refused("A panel needs at least two teachers: `teachers:a,b`.")
    source_name, source_text = (source.filename, await read_source(source, settings)) if source else (None, None)
    return LessonRequest(
        topic=topic,
        teachers=teacher_names,
        students=student_names,
        mode=mode or ("rotate" if len(teacher_names) > 1 else "single"),
        max_turns=turns or max_turns,
        source_name=source_name,
        source_text=source_text,
        started_by=str(interaction.user.id),
        guild_id=interaction.guild.id,
        channel_id=channel.id,
    )


def model_list(one: str | None, several: str | None) -> list[str]:
    """`teacher:` plus `teachers:a,b` as one list of names, in order, each once."""
    names = [one] if one else []
    names += [n.strip() for n in (several or "").split(",") if n.strip()]
    return list(dict.fromkeys(names))


def model_list_choices(app: AppContext, current: str) -> list[app_commands.Choice[str]]:
    """Autocomplete for `teachers:`/`students:`: the names typed so far, plus each model matching the last one."""
    head = current[: current.rfind(",") + 1]
    done = [n.strip() for n in head.split(",") if n.strip()]
    choices = []
    for choice in model_choices(app, current[len(head):].strip()):
        if choice.value not in done:
            value = ",".join([*done, str(choice.value)])
            if len(value) <= 100:
                choices.append(app_commands.Choice(name=value, value=value))
    return choices


async def read_source(source: discord.Attachment, settings: Settings) -> str:
    """The text of an attached .txt/.md file up to the size limit (checked before downloading)."""
    limit = settings.lessons.max_source_bytes
    if source.size > limit:
        raise Refused(f"{source.filename} is {source.size:,} bytes; the limit is {limit:,} bytes (1 MB).")
    try:
        return decode_source(source.filename, await source.read(), limit)
    except SourceError as e:
        raise Refused(f"I can't teach from that file: {e}.") from None
    except discord.HTTPException as e:
        log.warning("could not download attachment %s: %s", source.filename, e)
        raise Refused(f"I couldn't download {source.filename}; please try again.") from None


def missing_permission(channel: Destination) -> str | None:
    """The first permission the bot lacks to run a lesson in `channel`, or None."""
    me = channel.guild.me
    if me is None:
        return "View Channel"
    perms = channel.permissions_for(me)
    send = perms.send_messages_in_threads if isinstance(channel, discord.Thread) else perms.send_messages
    for ok, name in ((perms.view_channel, "View Channel"), (send, "Send Messages"), (perms.embed_links, "Embed Links")):
        if not ok:
            return name
    return None
