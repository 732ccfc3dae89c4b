"""/privacy forget-me: a member's votes, quiz answers and authorship leave the database."""

from discord.ext import commands

from plugins.common.context import app_of
from plugins.privacy._cog import PrivacyCog


async def setup(bot: commands.Bot) -> None:
    """Add /privacy."""
    await bot.add_cog(PrivacyCog(app_of(bot)))
