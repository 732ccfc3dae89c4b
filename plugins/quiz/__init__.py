"""Quiz games in a channel (/quiz start | stop), votes and curator reviews on quiz answers, /student report."""

from discord.ext import commands

from plugins.common.context import app_of, options_of
from plugins.quiz._cog import QuizCog
from plugins.quiz.buttons import AnswerButton, AnswerVoteButton, CorrectionButton

ITEMS = (AnswerButton, AnswerVoteButton, CorrectionButton)


async def setup(bot: commands.Bot) -> None:
    """Register the persistent quiz buttons, the /quiz commands and /student report."""
    bot.add_dynamic_items(*ITEMS)
    await bot.add_cog(QuizCog(bot, app_of(bot), options_of(bot)))


async def teardown(bot: commands.Bot) -> None:
    """Unregister the persistent quiz buttons (the cog takes its commands with it)."""
    bot.remove_dynamic_items(*ITEMS)
