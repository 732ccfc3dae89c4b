"""Lessons in Discord: /lesson start, stop, list and show; turns streamed by the teacher and student personas."""

from discord.ext import commands

from plugins.common.context import app_of, options_of
from plugins.lessons._cog import LessonsCog
from plugins.lessons.ballot import BallotButton


async def setup(bot: commands.Bot) -> None:
    """Add the /lesson commands and the persistent panel ballot buttons."""
    bot.add_dynamic_items(BallotButton)
    await bot.add_cog(LessonsCog(bot, app_of(bot), options_of(bot)))


async def teardown(bot: commands.Bot) -> None:
    """Unregister the panel ballot buttons."""
    bot.remove_dynamic_items(BallotButton)
