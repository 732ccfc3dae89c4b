"""/ask, and (with the message content intent) mentioning the bot or replying to it: the student answers."""

from __future__ import annotations

import logging
import math
import re

import discord
from discord import app_commands
from discord.ext import commands

from app import AppContext
from backends.base import BackendError
from plugins.ask.answering import answer, check_question
from plugins.ask.cooldown import Cooldowns
from plugins.common.choices import model_choices
from plugins.common.context import NO_MENTIONS, BotOptions
from plugins.common.personas import Destination, personas_of
from plugins.common.text import shorten

log = logging.getLogger(__name__)


class AskCog(commands.Cog):
    """Members ask a student questions; one question per member per cooldown."""

    def __init__(self, bot: commands.Bot, app: AppContext, options: BotOptions):
        self.bot = bot
        self.app = app
        self.options = options
        self.cooldowns = Cooldowns(app.settings.discord.ask_cooldown_seconds)

    @app_commands.command(name="ask", description="Ask the student a question; it answers here, in its own name")
    @app_commands.describe(question="Your question (under 1000 characters)", student="Which student answers")
    @app_commands.guild_only()
    async def ask(self, interaction: discord.Interaction, question: str, student: str | None = None) -> None:
        """Check the question and the cooldown, show the question, then stream the answer."""
        name = student or self.app.settings.default_student
        problem = check_question(question) or self._check_student(name) or self._check_cooldown(interaction.user.id)
        channel = interaction.channel
        if problem is None and not isinstance(channel, discord.TextChannel | discord.Thread):
            problem = "I answer questions in text channels and their threads."
        if problem is not None:
            await interaction.response.send_message(problem, ephemeral=True)
            return
        assert isinstance(channel, discord.TextChannel | discord.Thread)
        self.cooldowns.start(interaction.user.id)
        await interaction.response.defer(thinking=True)
        persona = self.app.models.spec(name).display_name
        await interaction.followup.send(
            f"**{interaction.user.display_name}** asked {persona}:\n>>> {question.strip()}", allowed_mentions=NO_MENTIONS
        )
        failure = await self._answer(channel, name, question)
        if failure is not None:
            self.cooldowns.reset(interaction.user.id)
            await interaction.followup.send(failure, ephemeral=True, allowed_mentions=NO_MENTIONS)

    @ask.autocomplete("student")
    async def _student_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return model_choices(self.app, current)

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        """With message content: a mention of the bot, or a reply to its messages, is a question."""
        if not self.options.message_content or message.author.bot or message.guild is None:
            return
        me = self.bot.user
        if me is None or not isinstance(message.channel, discord.TextChannel | discord.Thread):
            return
        student = self._addressed_student(message, me)
        if student is None:
            return
        question = re.sub(rf"<@!?{me.id}>", "", message.content).strip()
        problem = check_question(question) or self._check_cooldown(message.author.id)
        if problem is not None:
            await message.reply(problem, mention_author=False, allowed_mentions=NO_MENTIONS)
            return
        self.cooldowns.start(message.author.id)
        failure = await self._answer(message.channel, student, question)
        if failure is not None:
            self.cooldowns.reset(message.author.id)
            await message.reply(failure, mention_author=False, allowed_mentions=NO_MENTIONS)

    def _addressed_student(self, message: discord.Message, me: discord.ClientUser) -> str | None:
        """Which student a message talks to: the persona it replies to, else the default; None if not to us."""
        ref = message.reference.resolved if message.reference else None
        if isinstance(ref, discord.Message) and ref.webhook_id is not None:
            for name in self.app.models.names():
                if self.app.models.spec(name).display_name == ref.author.name:
                    return name
        replied_to_me = isinstance(ref, discord.Message) and ref.author.id == me.id
        if replied_to_me or me in message.mentions:
            return self.app.settings.default_student
        return None

    async def _answer(self, channel: Destination, student: str, question: str) -> str | None:
        """Stream the answer; returns a member-friendly failure, or None when answered."""
        writing = answer(self.app, personas_of(self.bot), channel, student, question)
        try:
            await (self.options.long_wait(writing) if self.options.long_wait else writing)
        except BackendError as e:
            log.warning("student %s could not answer in channel %s: %s", student, channel.id, e)
            return f"{self.app.models.spec(student).display_name} can't answer right now: {shorten(str(e), 300)}"
        except discord.HTTPException as e:
            log.warning("could not post an answer in channel %s: %s", channel.id, e)
            return f"I couldn't post the answer here ({e.text or e.status})."
        return None

    def _check_student(self, name: str) -> str | None:
        if name not in self.app.models.specs:
            return f"Unknown model '{name}' (known: {', '.join(self.app.models.names())})."
        return None

    def _check_cooldown(self, member_id: int) -> str | None:
        wait = self.cooldowns.retry_after(member_id)
        if wait <= 0:
            return None
        seconds = math.ceil(wait)
        return f"One question at a time: you can ask again in {seconds} second{'s' if seconds != 1 else ''}."
