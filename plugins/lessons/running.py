"""Where a lesson lives in Discord, how it runs there, and the summary it ends with."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import discord
from sqlite_utils import Database

from app import AppContext
from plugins.common.context import NO_MENTIONS
from plugins.common.personas import Destination, PersonaDirectory
from plugins.common.summary import STATUS, card_embed, read_card
from plugins.common.text import shorten
from plugins.lessons.transcript import DiscordTranscript, FallbackNotice
from plugins.voting.buttons import summary_view
from storage import discord as dq
from storage import lessons as q

log = logging.getLogger(__name__)


@dataclass
class LiveLesson:
    """A lesson running in this process: its task and its stop switch. The truth is in SQLite."""

    lesson_id: int
    guild_id: int
    started_by: int
    destination: Destination
    header: discord.Message | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class Place:
    """Where a lesson posts: a thread under a header message, or the channel itself."""

    destination: Destination
    header: discord.Message | None
    note: str | None = None


async def open_place(channel: Destination, header_text: str, *, use_thread: bool, thread_name: str) -> Place:
    """Post the lesson's header and open its thread (or stay in the channel). Raises discord.HTTPException."""
    header = await channel.send(header_text, allowed_mentions=NO_MENTIONS)
    if not use_thread or not isinstance(channel, discord.TextChannel):
        return Place(channel, header)
    me = channel.guild.me
    if me is None or not channel.permissions_for(me).create_public_threads:
        return Place(channel, header, "I can't open threads here (I lack Create Public Threads), so the lesson runs in the channel.")
    try:
        thread = await header.create_thread(name=shorten(thread_name, 100), auto_archive_duration=1440)
    except discord.HTTPException as e:
        log.warning("could not open a thread in channel %s: %s", channel.id, e)
        return Place(channel, header, "I couldn't open a thread here, so the lesson runs in the channel.")
    return Place(thread, header)


async def run_live(
    app: AppContext,
    personas: PersonaDirectory,
    live: LiveLesson,
    *,
    seed_reactions: bool,
    on_fallback: FallbackNotice,
) -> None:
    """Run a lesson to its end in Discord, then post its summary. Model failures end up in the summary."""
    transcript = DiscordTranscript(
        app, personas, live.destination, seed_reactions=seed_reactions, on_fallback=on_fallback
    )
    outcome = await app.engine.run(live.lesson_id, transcript, live.stop)
    log.info("lesson %s %s (%s) after %s turns", live.lesson_id, outcome.status, outcome.reason, outcome.turns)
    await post_summary(app, live.destination, live.lesson_id)
    if live.header is not None:
        icon, label = STATUS.get(outcome.status, ("•", outcome.status))
        try:
            await live.header.edit(
                content=f"{live.header.content}\n{icon} {label}: {outcome.turns} turns", allowed_mentions=NO_MENTIONS
            )
        except discord.HTTPException as e:
            log.warning("could not update the header of lesson %s: %s", live.lesson_id, e)


async def post_summary(app: AppContext, destination: Destination, lesson_id: int) -> discord.Message | None:
    """Post the lesson card with its vote and curator buttons, and remember the message."""
    card = await app.store.call(read_card, lesson_id)
    if card is None:
        return None
    try:
        message = await destination.send(
            embed=card_embed(app, card), view=summary_view(card), allowed_mentions=NO_MENTIONS
        )
    except discord.HTTPException as e:
        log.warning("could not post the summary of lesson %s: %s", lesson_id, e)
        return None
    await app.store.call(link_summary, lesson_id, message.id, destination.id)
    return message


def link_summary(db: Database, lesson_id: int, message_id: int, channel_id: int) -> None:
    """Remember a lesson's summary message, for reactions and button refreshes."""
    q.set_discord_ids(db, lesson_id, summary_message_id=message_id)
    dq.record_message(db, message_id, "lesson", lesson_id, channel_id)


def resume_refusal(lesson: dict | None, lesson_id: int, guild_id: int | None, member_id: int, curator: str | None) -> str | None:
    """Why a member may not resume this lesson, or None. `curator` is None for curators, else who they are."""
    if lesson is None or lesson["guild_id"] != guild_id:
        return f"There is no lesson #{lesson_id} in this server. `/lesson list` shows recent lessons."
    if lesson["status"] != "interrupted":
        return f"Lesson #{lesson_id} is {lesson['status']}; only a lesson interrupted by a restart can be resumed."
    if curator is not None and lesson["started_by"] != str(member_id):
        return f"Only the member who started lesson #{lesson_id} or a curator ({curator}) can resume it."
    return None


def claim_interrupted(db: Database, lesson_id: int) -> bool:
    """Put an interrupted lesson back to running, only if it still is interrupted (two resumes run it once)."""
    cur = db.execute(
        "UPDATE lessons SET status = 'running', reason = NULL, finished_at = NULL WHERE id = ? AND status = 'interrupted'",
        [lesson_id],
    )
    return cur.rowcount == 1


async def find_destination(client: discord.Client, channel_id: int | None) -> Destination | None:
    """The thread or channel a lesson posted in, by id (None when it is gone or not a place to post)."""
    if channel_id is None:
        return None
    try:
        channel = client.get_channel(channel_id) or await client.fetch_channel(channel_id)
    except discord.HTTPException as e:
        log.warning("could not find channel %s: %s", channel_id, e)
        return None
    return channel if isinstance(channel, discord.TextChannel | discord.Thread) else None


async def announce(client: discord.Client, channel_id: int | None, text: str) -> None:
    """Best-effort notice in a channel or thread by id (used after restarts, when nothing is cached)."""
    if channel_id is None:
        return
    try:
        channel = client.get_channel(channel_id) or await client.fetch_channel(channel_id)
        if isinstance(channel, discord.TextChannel | discord.Thread):
            await channel.send(text, allowed_mentions=NO_MENTIONS)
    except discord.HTTPException as e:
        log.warning("could not post in channel %s: %s", channel_id, e)
