"""The one answer to an app command that failed: a clear private message to the member, and a log line."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import discord
from discord import app_commands

from backends.base import BackendError
from lessons.engine import LessonError
from lessons.sources import SourceError
from plugins.common.context import NO_MENTIONS
from settings import ConfigError

log = logging.getLogger(__name__)

EXPECTED = (LessonError, SourceError, ConfigError, BackendError)


def explain(error: BaseException) -> str:
    """What to tell the member about `error`."""
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, LessonError | SourceError | ConfigError):
        return str(error)
    if isinstance(error, BackendError):
        return f"The model is unavailable right now: {error}"
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down: try again in {error.retry_after:.0f} seconds."
    if isinstance(error, app_commands.NoPrivateMessage):
        return "This command works in servers only."
    if isinstance(error, app_commands.MissingPermissions):
        return f"You need the {', '.join(error.missing_permissions)} permission for this."
    if isinstance(error, app_commands.BotMissingPermissions):
        return f"I need the {', '.join(error.missing_permissions)} permission here; please ask an admin."
    if isinstance(error, app_commands.CheckFailure):
        return "You can't use this command here."
    if isinstance(error, discord.Forbidden):
        return f"Discord refused: I'm missing a permission here ({error.text or error.status})."
    return "Something went wrong on my side. It was logged; please try again."


class ClassroomTree(app_commands.CommandTree):
    """The command tree, with one error handler for every slash command."""

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        """Answer the member privately; log expected failures briefly and bugs with a traceback."""
        original = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        command = interaction.command.qualified_name if interaction.command else "?"
        context = f"/{command} by {interaction.user.id} in guild {interaction.guild_id} channel {interaction.channel_id}"
        if isinstance(original, (*EXPECTED, app_commands.CheckFailure)):
            log.info("%s failed: %s", context, original)
        else:
            log.error("%s failed", context, exc_info=original)
        text = explain(original)
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
            else:
                await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as e:
            log.warning("could not tell the member about the error in %s: %s", context, e)


@asynccontextmanager
async def answering_failures(interaction: discord.Interaction, what: str) -> AsyncIterator[None]:
    """Around a button callback: a bug is logged with context and the member gets a private apology
    (discord.py would only log it, and the member would see "This interaction failed")."""
    try:
        yield
    except Exception:
        message_id = interaction.message.id if interaction.message else None
        log.exception("%s by %s on message %s failed", what, interaction.user.id, message_id)
        text = explain(RuntimeError())
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException as e:
            log.warning("could not tell the member about the failed %s: %s", what, e)
