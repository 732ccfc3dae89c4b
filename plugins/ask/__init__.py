"""Members ask the student questions: /ask, or a mention when the message content intent is on."""

from discord.ext import commands

from plugins.ask._cog import AskCog
from plugins.common.context import app_of, options_of


async def setup(bot: commands.Bot) -> None:
    """Add /ask and the mention listener."""
    await bot.add_cog(AskCog(bot, app_of(bot), options_of(bot)))
