"""The Discord bot: wiring only. Settings → store → models → lesson engine → Bot with the plugins.

Run it:
    DISCORD_TOKEN=... python bot.py            # connect to Discord
    python bot.py                              # no token: the offline sandbox in your browser
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack

import aiohttp
import discord
from discord.ext import commands

from app import AppContext, open_app
from backends.registry import ModelRegistry
from plugins import EXTENSIONS
from plugins.common.context import NO_MENTIONS, BotOptions
from plugins.common.errors import ClassroomTree
from settings import ConfigError, Settings, load_settings
from storage import lessons as q
from storage import training as tq

log = logging.getLogger("classroom.bot")


class ClassroomBot(commands.Bot):
    """A commands.Bot that owns the app's lifetime: opened in setup_hook, closed in close()."""

    def __init__(
        self, settings: Settings, *, models: ModelRegistry | None, options: BotOptions, sync_guild: int | None
    ):
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_messages = True  # mentions and replies to the bot
        intents.guild_reactions = True  # 👍/👎 reactions are votes
        intents.message_content = options.message_content
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            allowed_mentions=NO_MENTIONS,
            tree_cls=ClassroomTree,
            help_command=None,
        )
        self.settings = settings
        self.options = options
        self.sync_guild = sync_guild
        self.app: AppContext | None = None
        self.interrupted_at_startup: list[int] = []
        self._models = models
        self._resources = AsyncExitStack()

    async def setup_hook(self) -> None:
        """Open the app, mark lessons and training runs cut off by the last run as interrupted, load plugins, sync commands."""
        self.app = await self._resources.enter_async_context(open_app(self.settings, models=self._models))
        self.interrupted_at_startup = await self.app.store.call(q.mark_running_interrupted)
        if self.interrupted_at_startup:
            log.info("lessons interrupted by the last shutdown: %s", self.interrupted_at_startup)
        interrupted_runs = await self.app.store.call(tq.mark_running_runs_interrupted)
        if interrupted_runs:
            log.info("training runs interrupted by the last shutdown: %s", interrupted_runs)
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        if self.sync_guild is not None:
            guild = discord.Object(id=self.sync_guild)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
        else:
            synced = await self.tree.sync()
        log.info("synced %d slash commands %s", len(synced), f"to guild {self.sync_guild}" if self.sync_guild else "globally")

    async def on_message(self, message: discord.Message) -> None:
        """No prefix commands: slash commands only (the ask plugin listens for mentions itself)."""

    async def close(self) -> None:
        """Unload plugins (running lessons are marked interrupted), disconnect, then close the app."""
        try:
            await super().close()
        finally:
            await self.close_app()

    async def close_app(self) -> None:
        """Close the store and the models (idempotent)."""
        await self._resources.aclose()


def create_bot(
    settings: Settings | None = None,
    *,
    models: ModelRegistry | None = None,
    options: BotOptions | None = None,
    sync_guild: int | None = None,
) -> ClassroomBot:
    """The bot, ready to start. `models` lets tests inject scripted models; by default they come from settings."""
    return ClassroomBot(
        settings or load_settings(), models=models, options=options or BotOptions(), sync_guild=sync_guild
    )


async def run_discord(bot: ClassroomBot, token: str) -> None:
    """Connect to Discord until SIGTERM or SIGINT, then shut down cleanly."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    async with bot:
        runner = asyncio.create_task(bot.start(token))
        waiter = asyncio.create_task(stopping.wait())
        done, _ = await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if runner in done:
            waiter.cancel()
            runner.result()  # a login failure or a fatal gateway error surfaces here
            return
        log.info("signal received: shutting down")
        await bot.close()
        await runner


def build_parser() -> argparse.ArgumentParser:
    """Command-line options; --help explains the two modes."""
    p = argparse.ArgumentParser(
        prog="bot.py",
        description="The classroom Discord bot: an AI teacher teaches an AI student while members vote.",
        epilog=(
            "Modes: with DISCORD_TOKEN set, the bot connects to Discord (give it the applications.commands "
            "and bot scopes; Manage Webhooks lets teacher and student post under their own names). Without "
            "DISCORD_TOKEN it starts the OFFLINE SANDBOX: the same bot in a simulated server, shown in your "
            "browser at the printed 127.0.0.1 address (needs `pip install 'simcord[preview]'`). "
            "Set CLASSROOM_MESSAGE_CONTENT=1 (and enable the intent in the developer portal) to let members "
            "ask the student by mentioning the bot."
        ),
    )
    p.add_argument("--config", help="path to classroom.toml (default: ./classroom.toml if present)")
    p.add_argument("--sync-guild", type=int, metavar="ID", help="sync slash commands to this server only (instant, for development)")
    p.add_argument("--message-content", action="store_true", help="use the message content intent (chat by mention)")
    p.add_argument("--sandbox", action="store_true", help="run the offline sandbox even if DISCORD_TOKEN is set")
    p.add_argument("--port", type=int, default=8765, help="sandbox: port of the browser page on 127.0.0.1 (default 8765)")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """`python bot.py`: Discord with DISCORD_TOKEN, else the offline sandbox."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    token = os.environ.get("DISCORD_TOKEN", "").strip()
    message_content = args.message_content or os.environ.get("CLASSROOM_MESSAGE_CONTENT") == "1"
    if token and not args.sandbox:
        bot = create_bot(settings, options=BotOptions(message_content=message_content), sync_guild=args.sync_guild)
        try:
            asyncio.run(run_discord(bot, token))
        except discord.LoginFailure:
            print("error: Discord refused DISCORD_TOKEN (check the bot token)", file=sys.stderr)
            return 2
        except discord.PrivilegedIntentsRequired:
            print(
                "error: the message content intent is not enabled for this bot in the developer portal; "
                "enable it or run without CLASSROOM_MESSAGE_CONTENT=1",
                file=sys.stderr,
            )
            return 2
        except (aiohttp.ClientError, OSError) as e:
            print(f"error: could not reach Discord ({e}); check the network, or unset DISCORD_TOKEN for the offline sandbox", file=sys.stderr)
            return 1
        return 0
    from plugins.sandbox import run_sandbox

    return asyncio.run(run_sandbox(settings, create_bot, port=args.port))


if __name__ == "__main__":
    sys.exit(main())
