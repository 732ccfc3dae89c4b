"""/lesson start | stop | resume | list | show: turns members' commands into lessons run by the engine."""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from app import AppContext
from lessons.engine import LessonError, LessonRequest
from plugins.ask.cooldown import Cooldowns, wait_text
from plugins.common.choices import model_choices
from plugins.common.context import NO_MENTIONS, BotOptions
from plugins.common.personas import Destination, personas_of
from plugins.common.summary import STATUS, card_embed, read_card
from plugins.common.text import shorten
from plugins.lessons.header import lesson_header
from plugins.lessons.requests import Refused, lesson_request, model_list_choices
from plugins.lessons.running import (
    LiveLesson,
    announce,
    claim_interrupted,
    find_destination,
    open_place,
    resume_refusal,
    run_live,
)
from plugins.voting.ballots import curator_rule, is_curator
from storage import discord as dq
from storage import lessons as q

log = logging.getLogger(__name__)

NO_WEBHOOKS_NOTICE = "no-webhooks"


@app_commands.guild_only()
class LessonsCog(commands.GroupCog, group_name="lesson", group_description="Lessons between an AI teacher and an AI student"):
    """Starts lessons, keeps their tasks and stop switches, and answers questions about them."""

    def __init__(self, bot: commands.Bot, app: AppContext, options: BotOptions):
        self.bot = bot
        self.app = app
        self.options = options
        self.live: dict[int, LiveLesson] = {}
        self._guild_locks: dict[int, asyncio.Lock] = {}
        self._announced_restart = False
        self.cooldowns = Cooldowns(app.settings.discord.lesson_cooldown_seconds)
        super().__init__()

    # ---- commands

    @app_commands.command(name="start", description="Start a lesson: a teacher model teaches a student model, turn by turn")
    @app_commands.describe(
        topic="What the lesson is about (under 200 characters)",
        teacher="The teaching model (default: the server's default teacher)",
        student="The learning model (default: the server's default student)",
        teachers="Several teachers, comma-separated (a panel or a rotation), e.g. gpt,smol-teacher",
        students="Several students, comma-separated (a class): they take turns asking, each is trained",
        mode="How several teachers share the lesson: rotate (sections in turn) or panel (all answer, members vote)",
        turns="How many turns at most (default: the whole document for a source, else lessons.max_turns)",
        source="A .txt or .md file (up to 1 MB) the teacher teaches from",
    )
    async def start(
        self,
        interaction: discord.Interaction,
        topic: str,
        teacher: str | None = None,
        student: str | None = None,
        turns: app_commands.Range[int, 1, 5000] | None = None,
        source: discord.Attachment | None = None,
        teachers: str | None = None,
        students: str | None = None,
        mode: Literal["rotate", "panel"] | None = None,
    ) -> None:
        """Validate, store and start a lesson in a new thread (or in the channel in sandbox mode)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        wait = self.cooldowns.retry_after(interaction.user.id)
        if wait > 0:
            await _tell(interaction, f"One lesson at a time: you can start another {wait_text(wait)}.")
            return
        try:
            request = await lesson_request(
                self.app.settings, interaction, topic=topic, teacher=teacher, student=student, turns=turns, source=source,
                teachers=teachers, students=students, mode=mode,
            )
        except Refused as e:
            await _tell(interaction, str(e))
            return
        channel = interaction.channel
        assert isinstance(channel, discord.TextChannel | discord.Thread) and interaction.guild is not None
        async with self._guild_locks.setdefault(interaction.guild.id, asyncio.Lock()):
            limit = self.app.settings.lessons.max_concurrent_per_guild
            running = await self.app.store.call(q.running_in_guild, interaction.guild.id)
            if running >= limit:
                await _tell(
                    interaction,
                    f"{running} {'lesson is' if running == 1 else 'lessons are'} already running in this server "
                    f"(the limit is {limit}). "
                    "Wait for one to finish, or stop one with `/lesson stop`.",
                )
                return
            try:
                lesson_id = await self.app.engine.open(request)
            except LessonError as e:
                await _tell(interaction, f"That lesson can't start: {e}.")
                return
        self.cooldowns.start(interaction.user.id)
        await self._launch(interaction, channel, lesson_id, request)

    @app_commands.command(name="stop", description="Stop a running lesson (its starter or a curator)")
    @app_commands.describe(id="The lesson number (default: the lesson of this thread, or your running lesson)")
    async def stop(self, interaction: discord.Interaction, id: int | None = None) -> None:
        """Set a running lesson's stop switch; the engine ends it and the summary follows."""
        live = self._find_live(interaction, id)
        if live is None:
            which = f"Lesson #{id} is not running" if id is not None else "I found no running lesson of yours here"
            await interaction.response.send_message(f"{which}. `/lesson list` shows recent lessons.", ephemeral=True)
            return
        if live.started_by != interaction.user.id and not is_curator(interaction.user, self.app.settings):
            await interaction.response.send_message(
                f"Only the member who started lesson #{live.lesson_id} or a curator "
                f"({curator_rule(self.app.settings)}) can stop it.",
                ephemeral=True,
            )
            return
        live.stop.set()
        log.info("member %s stopped lesson %s", interaction.user.id, live.lesson_id)
        await interaction.response.send_message(
            f"Stopping lesson #{live.lesson_id}; its summary follows in {live.destination.mention}.", ephemeral=True
        )

    @app_commands.command(name="resume", description="Resume a lesson a restart cut off (its starter or a curator)")
    @app_commands.describe(lesson="The lesson number")
    async def resume(self, interaction: discord.Interaction, lesson: int) -> None:
        """Run an interrupted lesson on from its stored turns, in its own thread."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild is not None
        row = await self.app.store.call(q.get_lesson, lesson)
        curator = None if is_curator(interaction.user, self.app.settings) else curator_rule(self.app.settings)
        why = resume_refusal(row, lesson, interaction.guild_id, interaction.user.id, curator)
        destination = None if why or row is None else await find_destination(self.bot, row["thread_id"] or row["channel_id"])
        if destination is None or row is None:
            await _tell(interaction, why or f"I can't find lesson #{lesson}'s thread any more, so it can't go on.")
            return
        async with self._guild_locks.setdefault(interaction.guild.id, asyncio.Lock()):
            limit = self.app.settings.lessons.max_concurrent_per_guild
            if await self.app.store.call(q.running_in_guild, interaction.guild.id) >= limit:
                await _tell(interaction, f"{limit} lessons are already running in this server; resume this one later.")
                return
            if not await self.app.store.call(claim_interrupted, lesson):
                await _tell(interaction, f"Lesson #{lesson} was resumed already.")
                return
        done = len(await self.app.store.call(q.turns, lesson))
        await announce(self.bot, destination.id, f"▶️ Lesson #{lesson} resumes after turn {done} ({interaction.user.mention}).")
        starter = int(row["started_by"]) if (row["started_by"] or "").isdigit() else interaction.user.id
        live = LiveLesson(lesson, interaction.guild.id, starter, destination)
        live.task = asyncio.create_task(self._run(live), name=f"lesson-{lesson}")
        self.live[lesson] = live
        log.info("member %s resumed lesson %s after %s turns", interaction.user.id, lesson, done)
        await _tell(interaction, f"Lesson #{lesson} resumes in {destination.mention}.")

    @app_commands.command(name="list", description="Recent lessons in this server, with status and score")
    async def list_(self, interaction: discord.Interaction) -> None:
        """The ten most recent lessons of this server."""
        await interaction.response.defer(ephemeral=True)
        assert interaction.guild is not None
        rows = await self.app.store.call(q.list_lessons, limit=10, guild_id=interaction.guild.id)
        if not rows:
            await _tell(interaction, "No lessons in this server yet. Start one with `/lesson start`.")
            return
        lines = []
        for r in rows:
            icon, label = STATUS.get(r["status"], ("•", r["status"]))
            where = f" <#{r['thread_id']}>" if r["thread_id"] else ""
            approved = " · approved ✅" if r["approved"] else ""
            lines.append(
                f"**#{r['id']}** {icon} {label} · {r['turn_count']} turns · score {r['score']:+d}{approved}"
                f" — {shorten(r['topic'], 60)}{where}"
            )
        embed = discord.Embed(title="Recent lessons", description="\n".join(lines))
        await interaction.followup.send(embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="show", description="One lesson's summary: status, syllabus, votes, approval")
    @app_commands.describe(id="The lesson number")
    async def show(self, interaction: discord.Interaction, id: int) -> None:
        """The lesson card of one lesson of this server."""
        await interaction.response.defer(ephemeral=True)
        card = await self.app.store.call(read_card, id)
        if card is None or card.lesson["guild_id"] != interaction.guild_id:
            await _tell(interaction, f"There is no lesson #{id} in this server. `/lesson list` shows recent lessons.")
            return
        embed = card_embed(self.app, card)
        if card.lesson["thread_id"]:
            embed.add_field(name="Where", value=f"<#{card.lesson['thread_id']}>", inline=False)
        await interaction.followup.send(embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS)

    @start.autocomplete("teacher")
    @start.autocomplete("student")
    async def _model_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return model_choices(self.app, current)

    @start.autocomplete("teachers")
    @start.autocomplete("students")
    async def _model_list_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return model_list_choices(self.app, current)

    # ---- events

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        """Once per start: say in their threads that lessons cut off by the last shutdown were interrupted."""
        if self._announced_restart:
            return
        self._announced_restart = True
        for lesson_id in getattr(self.bot, "interrupted_at_startup", []):
            lesson = await self.app.store.call(q.get_lesson, lesson_id)
            if lesson is None:
                continue
            done = len(await self.app.store.call(q.turns, lesson_id))
            await announce(
                self.bot,
                lesson["thread_id"] or lesson["channel_id"],
                f"⚠️ Lesson #{lesson_id} was interrupted when the bot restarted. Its {done} turns are saved; "
                f"resume it with `/lesson resume lesson:{lesson_id}`.",
            )

    async def cog_unload(self) -> None:
        """Shutting down: cancel running lessons (the engine marks them interrupted) and say so where they ran."""
        lives = list(self.live.values())
        for live in lives:
            if live.task is not None:
                live.task.cancel()
        await asyncio.gather(*(live.task for live in lives if live.task is not None), return_exceptions=True)
        for live in lives:
            await announce(
                self.bot,
                live.destination.id,
                f"⚠️ Lesson #{live.lesson_id} was interrupted: the bot is shutting down. The turns so far are saved; "
                f"once it is back, resume it with `/lesson resume lesson:{live.lesson_id}`.",
            )

    # ---- helpers

    async def _launch(
        self, interaction: discord.Interaction, channel: Destination, lesson_id: int, request: LessonRequest
    ) -> None:
        """Open the lesson's thread, prepare the personas and start the run task."""
        header, warnings = await lesson_header(self.app, lesson_id, request, interaction.user.mention)
        try:
            place = await open_place(
                channel, header, use_thread=self.options.lesson_threads, thread_name=f"Lesson #{lesson_id}: {request.topic}"
            )
        except discord.HTTPException as e:
            log.warning("lesson %s could not post in channel %s: %s", lesson_id, channel.id, e)
            await self.app.store.call(q.finish_lesson, lesson_id, "failed", f"could not post in Discord: {e.text or e.status}")
            await _tell(interaction, f"I couldn't post in {channel.mention} ({e.text or e.status}), so the lesson did not start.")
            return
        await self.app.store.call(q.set_discord_ids, lesson_id, thread_id=place.destination.id)
        notes = [place.note] if place.note else []
        personas = personas_of(self.bot)
        for model in (*request.teachers, *request.students):
            _, why = await personas.poster(place.destination, model)
            if why:
                notes.append(await self._webhook_fallback(interaction.guild_id, place.destination, why))
                break
        notes += warnings
        live = LiveLesson(lesson_id, place.destination.guild.id, interaction.user.id, place.destination, place.header)
        live.task = asyncio.create_task(self._run(live), name=f"lesson-{lesson_id}")
        self.live[lesson_id] = live
        extra = "".join(f"\n• {n}" for n in notes if n)
        await _tell(interaction, f"Lesson #{lesson_id} started in {place.destination.mention}.{extra}")

    async def _run(self, live: LiveLesson) -> None:
        run = run_live(
            self.app,
            personas_of(self.bot),
            live,
            seed_reactions=self.options.seed_reactions,
            on_fallback=lambda why: self._webhook_fallback(live.guild_id, live.destination, why),
        )
        try:
            await (self.options.long_wait(run) if self.options.long_wait else run)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("lesson %s: the Discord side failed", live.lesson_id)
        finally:
            self.live.pop(live.lesson_id, None)

    async def _webhook_fallback(self, guild_id: int | None, destination: Destination, why: str) -> str:
        """Tell the server's admins once why personas appear as embeds; returns the note for the starter."""
        note = (
            f"Teacher and student appear as embeds from me instead of under their own names, because {why}. "
            "An admin can grant me **Manage Webhooks** to fix this."
        )
        if guild_id is not None and await self.app.store.call(dq.mark_notice, guild_id, NO_WEBHOOKS_NOTICE):
            report = self.app.settings.discord.report_channel_id
            await announce(self.bot, report or destination.id, f"ℹ️ **For admins:** {note}")
        return note

    def _find_live(self, interaction: discord.Interaction, lesson_id: int | None) -> LiveLesson | None:
        here = [live for live in self.live.values() if live.guild_id == interaction.guild_id]
        if lesson_id is not None:
            return next((live for live in here if live.lesson_id == lesson_id), None)
        in_this_place = [live for live in here if live.destination.id == interaction.channel_id]
        if len(in_this_place) == 1:
            return in_this_place[0]
        mine = [live for live in here if live.started_by == interaction.user.id]
        return mine[-1] if mine else None


async def _tell(interaction: discord.Interaction, text: str) -> None:
    """Answer the member privately (the command was deferred ephemerally)."""
    await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
