"""/privacy forget-me: turns the member's request into `storage.privacy.forget_member`."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from app import AppContext
from plugins.common.context import NO_MENTIONS
from storage import privacy

log = logging.getLogger(__name__)


class PrivacyCog(commands.GroupCog, group_name="privacy", group_description="What this bot keeps about you"):
    """Lets members remove what the bot stored about them."""

    def __init__(self, app: AppContext):
        self.app = app
        super().__init__()

    @app_commands.command(
        name="forget-me", description="Delete your votes, quiz answers and your name on lessons (anonymous counts stay)"
    )
    async def forget_me(self, interaction: discord.Interaction) -> None:
        """Forget the member who asked and tell them, privately, what was removed."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        removed = await self.app.store.call(privacy.forget_member, str(interaction.user.id))
        log.info("forgot a member at their request: %s", removed)
        await interaction.followup.send(forgotten_text(removed), ephemeral=True, allowed_mentions=NO_MENTIONS)


def forgotten_text(removed: dict[str, int]) -> str:
    """The confirmation a member reads after /privacy forget-me."""
    votes, answers = removed.get("votes", 0), removed.get("quiz_answers", 0)
    started = removed.get("lessons", 0) + removed.get("quiz_games", 0)
    decisions = removed.get("approvals", 0) + removed.get("corrections", 0)
    if not (votes or answers or started or decisions):
        return "🗑️ I had nothing stored about you: no votes, quiz answers or lessons carry your id."
    return (
        "🗑️ Done. Your Discord id is gone from my database:\n"
        f"• {votes} {_plural(votes, 'vote')} now count anonymously (tallies stay the same, no one can tell they were yours)\n"
        f"• {answers} quiz {_plural(answers, 'answer')} deleted\n"
        f"• {started} {_plural(started, 'lesson or quiz', 'lessons or quizzes')} no longer name you as starter\n"
        f"• {decisions} curator {_plural(decisions, 'decision')} no longer name you\n"
        "Messages already posted in Discord are Discord's; delete those there if you wish."
    )


def _plural(n: int, one: str, many: str | None = None) -> str:
    return one if n == 1 else (many or one + "s")
