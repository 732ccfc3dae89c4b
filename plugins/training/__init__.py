"""Training in Discord: /train now | status | history, /student versions | rollback, and the nightly schedule."""

from discord.ext import commands

from plugins.common.context import app_of
from plugins.training._cog import TrainingCog


async def setup(bot: commands.Bot) -> None:
    """Add the /train and /student commands and start the nightly schedule."""
    await bot.add_cog(TrainingCog(bot, app_of(bot)))
