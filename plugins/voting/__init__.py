"""Votes on turns and lessons (buttons and reactions) and curator decisions."""

from discord.ext import commands

from plugins.voting._cog import ReactionVotes
from plugins.voting.buttons import DecisionButton, VoteButton


async def setup(bot: commands.Bot) -> None:
    """Register the persistent buttons and the reaction listener."""
    bot.add_dynamic_items(VoteButton, DecisionButton)
    await bot.add_cog(ReactionVotes(bot))


async def teardown(bot: commands.Bot) -> None:
    """Unregister the persistent buttons."""
    bot.remove_dynamic_items(VoteButton, DecisionButton)
