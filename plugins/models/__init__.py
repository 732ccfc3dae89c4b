"""/models: the configured teachers and students."""

from discord.ext import commands

from plugins.common.context import app_of
from plugins.models._cog import ModelsCog


async def setup(bot: commands.Bot) -> None:
    """Add /models."""
    await bot.add_cog(ModelsCog(app_of(bot)))
