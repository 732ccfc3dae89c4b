"""/quiz start | stop: turns members' commands into quiz games run in their channel."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from app import AppContext
from plugins.ask.cooldown import Cooldowns, wait_text
from plugins.common.choices import model_choices
from plugins.common.context import NO_MENTIONS, BotOptions
from plugins.common.personas import personas_of
from plugins.common.text import shorten
from plugins.quiz import report
from plugins.quiz.running import LiveGame, post_scoreboard, run_game
from plugins.voting.ballots import curator_rule, is_curator
from quiz import game
from storage import lessons as q
from storage import quiz as gq

log = logging.getLogger(__name__)


class Refused(Exception):
    """A game that can't start; the message is for the member."""


@app_commands.guild_only()
class QuizCog(commands.GroupCog, group_name="quiz", group_description="Quiz games: the teacher asks, the student and you answer"):
    """Starts and stops quiz games; one per channel."""

    def __init__(self, bot: commands.Bot, app: AppContext, options: BotOptions):
        self.bot = bot
        self.app = app
        self.options = options
        self.live: dict[int, LiveGame] = {}  # by channel id
        self.rng = random.Random()
        self._starting = asyncio.Lock()  # the "one game per channel" check and the game's registration go together
        self.report_command = report.report_command()
        self._report_group: app_commands.Group | None = None
        self.cooldowns = Cooldowns(app.settings.discord.quiz_cooldown_seconds)
        super().__init__()

    async def cog_load(self) -> None:
        """Add /student report; games cut off by the last shutdown are over: say so in the store."""
        self._report_group = report.attach(self.bot.tree, self.report_command)
        interrupted = await self.app.store.call(gq.mark_running_games_interrupted)
        if interrupted:
            log.info("quiz games interrupted by the last shutdown: %s", interrupted)

    async def cog_unload(self) -> None:
        """Shutting down: end running games (marked interrupted) and say so where they ran."""
        report.detach(self.bot.tree, self.report_command, self._report_group)
        lives = list(self.live.values())
        for live in lives:
            if live.task is not None:
                live.task.cancel()
        await asyncio.gather(*(live.task for live in lives if live.task is not None), return_exceptions=True)
        for live in lives:
            await _notice(live.channel, f"⚠️ Quiz #{live.game_id} was interrupted: the bot is shutting down.")

    @app_commands.command(name="start", description="A quiz: the teacher asks held-out questions; the student and members answer")
    @app_commands.describe(
        lesson="Questions from this lesson (its number)",
        topic="Questions from lessons on this topic",
        questions="How many questions (default 3)",
        seconds="Seconds to answer each question (default 30)",
        student="The student who plays (default: the server's default student)",
    )
    async def start(
        self,
        interaction: discord.Interaction,
        lesson: int | None = None,
        topic: app_commands.Range[str, 1, 100] | None = None,
        questions: app_commands.Range[int, 1, game.MAX_QUESTIONS] = game.DEFAULT_QUESTIONS,
        seconds: app_commands.Range[int, 10, 300] = game.DEFAULT_SECONDS,
        student: str | None = None,
    ) -> None:
        """Check the request, draw the questions, announce the game and start it."""
        channel = interaction.channel
        try:
            if not isinstance(channel, discord.TextChannel | discord.Thread) or interaction.guild is None:
                raise Refused("Quizzes run in text channels and their threads.")
            wait = self.cooldowns.retry_after(interaction.user.id)
            if wait > 0:
                raise Refused(f"One quiz at a time: you can start another {wait_text(wait)}.")
            async with self._starting:
                live = await self._prepare(interaction, channel, lesson, topic, questions, seconds, student)
                self.live[channel.id] = live
            self.cooldowns.start(interaction.user.id)
        except Refused as e:
            await interaction.response.send_message(str(e), ephemeral=True)
            return
        names = {m: self.app.models.spec(m).display_name for m in (live.teacher, live.student)}
        n = len(live.items)
        await interaction.response.send_message(
            f"🎓 **Quiz #{live.game_id}: {shorten(live.topic, 150)}**\n{names[live.teacher]} asks {names[live.student]} "
            f"{n} question{'s' if n != 1 else ''}, and everyone can play: press **Answer** under each question "
            f"within {live.seconds} s. Started by {interaction.user.mention}.",
            allowed_mentions=NO_MENTIONS,
        )
        live.task = asyncio.create_task(self._run(live), name=f"quiz-{live.game_id}")

    async def _prepare(self, interaction: discord.Interaction, channel: discord.TextChannel | discord.Thread,
                       lesson_id: int | None, topic: str | None, questions: int, seconds: int,
                       student: str | None) -> LiveGame:
        """Everything a game needs, stored as running; raises Refused with the reason."""
        assert interaction.guild is not None
        if lesson_id is not None and topic:
            raise Refused("Pick a lesson or a topic, not both.")
        running = await self.app.store.call(gq.running_game_in_channel, channel.id)
        if channel.id in self.live or running is not None:
            raise Refused("A quiz is already running here; join it, or wait for its scoreboard.")
        name = student or self.app.settings.default_student
        if name not in self.app.models.specs:
            raise Refused(f"Unknown model '{name}' (known: {', '.join(self.app.models.names())}).")
        teacher, label = self.app.settings.lessons.default_teacher, topic.strip() if topic else "everything taught so far"
        if lesson_id is not None:
            found = await self.app.store.call(q.get_lesson, lesson_id)
            if found is None or found["guild_id"] not in (None, interaction.guild.id):
                raise Refused(f"There is no lesson #{lesson_id} in this server. `/lesson list` shows recent lessons.")
            people = await self.app.store.call(q.participants, lesson_id)
            teacher = next((p.model for p in people if p.role == "teacher" and p.model in self.app.models.specs), teacher)
            label = f"lesson #{lesson_id}, {found['topic']}"
        if teacher is None or teacher not in self.app.models.specs:
            raise Refused("No teacher is configured to run the quiz (set `lessons.default_teacher`).")
        items = await self.app.store.call(gq.game_items, lesson_id=lesson_id, topic=topic.strip() if topic else None,
                                          guild_id=interaction.guild.id)
        if not items:
            raise Refused(_no_items(lesson_id, topic))
        chosen = game.pick(items, questions, self.rng)
        game_id = await self.app.store.call(
            gq.create_game, student=name, teacher=teacher, questions=len(chosen), seconds=seconds, lesson_id=lesson_id,
            topic=label, started_by=str(interaction.user.id), guild_id=interaction.guild.id, channel_id=channel.id)
        return LiveGame(game_id, channel, name, teacher, label, chosen, seconds, interaction.user.id)

    @app_commands.command(name="stop", description="Stop the quiz in this channel (its starter or a curator)")
    async def stop(self, interaction: discord.Interaction) -> None:
        """End the running game after the current question is dropped; the scoreboard shows what was played."""
        live = self.live.get(interaction.channel_id or 0)
        if live is None or live.task is None:
            await interaction.response.send_message("No quiz is running in this channel.", ephemeral=True)
            return
        if live.started_by != interaction.user.id and not is_curator(interaction.user, self.app.settings):
            await interaction.response.send_message(
                f"Only the member who started quiz #{live.game_id} or a curator ({curator_rule(self.app.settings)}) "
                "can stop it.", ephemeral=True)
            return
        await interaction.response.send_message(f"⏹️ Quiz #{live.game_id} stopped by {interaction.user.mention}.",
                                                allowed_mentions=NO_MENTIONS)
        live.task.cancel()
        await asyncio.gather(live.task, return_exceptions=True)
        await post_scoreboard(self.app, live)

    @start.autocomplete("student")
    async def _student_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return model_choices(self.app, current)

    async def _run(self, live: LiveGame) -> None:
        run = run_game(self.app, personas_of(self.bot), live)
        try:
            await (self.options.long_wait(run) if self.options.long_wait else run)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug ends this game only; the store already says it failed
            log.exception("quiz %s in channel %s crashed", live.game_id, live.channel.id)
            await _notice(live.channel, f"⚠️ Quiz #{live.game_id} ended because of an error on my side. It was logged.")
        finally:
            if self.live.get(live.channel.id) is live:
                del self.live[live.channel.id]


def _no_items(lesson_id: int | None, topic: str | None) -> str:
    """Why there is nothing to ask, and how questions come to exist."""
    how = ("Held-out questions are written by the teacher when an approved lesson is first trained on "
           "(`/train now` or the nightly run).")
    if lesson_id is not None:
        return f"Lesson #{lesson_id} has no held-out quiz questions yet. {how}"
    if topic:
        return f"No held-out quiz questions match “{shorten(topic, 100)}” yet. {how}"
    return f"There are no held-out quiz questions yet. {how}"


async def _notice(channel: Any, text: str) -> None:
    try:
        await channel.send(text, allowed_mentions=NO_MENTIONS)
    except discord.HTTPException as e:
        log.warning("could not post in channel %s: %s", getattr(channel, "id", "?"), e)
