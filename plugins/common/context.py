"""How extensions reach the app (store, models, engine) and the bot's options, without importing bot.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import discord

from app import AppContext

NO_MENTIONS = discord.AllowedMentions.none()
"""Every message carrying model output is sent with this: a model writing @everyone pings nobody."""


@dataclass(frozen=True)
class BotOptions:
    """How this bot instance behaves in Discord (as opposed to Settings, which the app shares with the CLI)."""

    lesson_threads: bool = True  # False: lessons post in the channel (the sandbox page cannot open threads)
    seed_reactions: bool = False  # add 👍/👎 to each turn first, so voting by reaction needs no emoji picker
    message_content: bool = False  # privileged intent granted: mention the bot or reply to it to ask the student
    # The sandbox host wraps long waits (a whole lesson) so its simulated server needn't wait for them.
    long_wait: Callable[[Awaitable[Any]], Awaitable[Any]] | None = None


def app_of(client: discord.Client) -> AppContext:
    """The AppContext the bot opened in setup_hook."""
    app = getattr(client, "app", None)
    if not isinstance(app, AppContext):
        raise RuntimeError("the bot has no open AppContext; build it with bot.create_bot()")
    return app


def options_of(client: discord.Client) -> BotOptions:
    """The bot's options (defaults when the bot was built without any)."""
    options = getattr(client, "options", None)
    return options if isinstance(options, BotOptions) else BotOptions()


def decision_button(decision: str, custom_id: str) -> discord.ui.Button[Any]:
    """A curator's Approve (green) or Reject (red) button; the custom id makes it survive restarts."""
    approve = decision == "approve"
    return discord.ui.Button(
        style=discord.ButtonStyle.success if approve else discord.ButtonStyle.danger,
        label="Approve" if approve else "Reject",
        custom_id=custom_id,
    )
