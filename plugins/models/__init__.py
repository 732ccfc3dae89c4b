"""/models: the configured teachers and students."""

import logging

from discord.ext import commands

from plugins.common.context import app_of
from plugins.models._cog import ModelsCog
from settings import terms_warnings

log = logging.getLogger(__name__)


async def setup(bot: commands.Bot) -> None:
    """Add /models, and say once per start which API teachers are used under their provider's terms."""
    app = app_of(bot)
    for line in terms_warnings(app.settings):
        log.warning("%s", line)
    await bot.add_cog(ModelsCog(app))
