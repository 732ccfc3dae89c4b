"""Persistent vote and curator buttons. Their custom ids name the target, so they work after any restart."""

from __future__ import annotations

import logging
import re
from typing import Any

import discord

from plugins.common.context import NO_MENTIONS, app_of, decision_button
from plugins.common.errors import answering_failures
from plugins.common.summary import LessonCard, card_embed, read_card
from plugins.voting import ballots
from plugins.voting.ballots import DOWN, UP
from storage.votes import Tally

log = logging.getLogger(__name__)


class VoteButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=r"classroom:vote:(?P<target>turn|lesson):(?P<id>[0-9]+):(?P<value>up|down)",
):
    """👍 or 👎 on a turn or a lesson; the label is the current count. Clicking again takes the vote back."""

    def __init__(self, target_type: str, target_id: int, value: int, count: int = 0):
        word = "up" if value > 0 else "down"
        super().__init__(
            discord.ui.Button(
                style=discord.ButtonStyle.secondary,
                emoji=UP if value > 0 else DOWN,
                label=str(count),
                custom_id=f"classroom:vote:{target_type}:{target_id}:{word}",
            )
        )
        self.target_type = target_type
        self.target_id = target_id
        self.value = value

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> VoteButton:
        return cls(match["target"], int(match["id"]), 1 if match["value"] == "up" else -1)

    async def callback(self, interaction: discord.Interaction) -> None:
        """Toggle the member's vote and redraw the counts."""
        async with answering_failures(interaction, f"a vote on {self.target_type} {self.target_id}"):
            await self._vote(interaction)

    async def _vote(self, interaction: discord.Interaction) -> None:
        app = app_of(interaction.client)
        if interaction.user.bot:
            await interaction.response.send_message("Bots can't vote.", ephemeral=True)
            return
        threshold = app.settings.lessons.approval_threshold
        tally = await app.store.call(
            ballots.click, self.target_type, self.target_id, str(interaction.user.id), self.value, threshold
        )
        if tally is None:
            await interaction.response.send_message("That no longer exists, so it can't be voted on.", ephemeral=True)
            return
        if self.target_type == "turn":
            await interaction.response.edit_message(view=vote_view("turn", self.target_id, tally))
            return
        card = await app.store.call(read_card, self.target_id)
        assert card is not None
        await interaction.response.edit_message(
            embed=card_embed(app, card), view=summary_view(card), allowed_mentions=NO_MENTIONS
        )


class DecisionButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=r"classroom:decide:(?P<id>[0-9]+):(?P<decision>approve|reject)",
):
    """A curator's Approve or Reject on a lesson; refused for everyone else."""

    def __init__(self, lesson_id: int, decision: str):
        super().__init__(decision_button(decision, f"classroom:decide:{lesson_id}:{decision}"))
        self.lesson_id = lesson_id
        self.decision = decision

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> DecisionButton:
        return cls(int(match["id"]), match["decision"])

    async def callback(self, interaction: discord.Interaction) -> None:
        """Record the decision and redraw the lesson card, or explain who may decide."""
        async with answering_failures(interaction, f"a curator decision on lesson {self.lesson_id}"):
            await self._decide(interaction)

    async def _decide(self, interaction: discord.Interaction) -> None:
        app = app_of(interaction.client)
        member = interaction.user
        if not ballots.is_curator(member, app.settings):
            await interaction.response.send_message(
                f"Only curators can approve or reject lessons ({ballots.curator_rule(app.settings)}). "
                "You can still vote with 👍 / 👎.",
                ephemeral=True,
            )
            return
        problem = await app.store.call(ballots.decide, self.lesson_id, str(member.id), self.decision)
        if problem is not None:
            await interaction.response.send_message(problem, ephemeral=True)
            return
        log.info("curator %s %sd lesson %s", member.id, self.decision, self.lesson_id)
        card = await app.store.call(read_card, self.lesson_id)
        assert card is not None
        await interaction.response.edit_message(
            embed=card_embed(app, card), view=summary_view(card), allowed_mentions=NO_MENTIONS
        )
        outcome = "it will train the student" if self.decision == "approve" else "it will not train the student"
        await interaction.followup.send(f"Lesson #{self.lesson_id} {self.decision}d: {outcome}.", ephemeral=True)


def vote_view(target_type: str, target_id: int, tally: Tally) -> discord.ui.View:
    """👍 n / 👎 n buttons for a turn (or a lesson)."""
    view = discord.ui.View(timeout=None)
    view.add_item(VoteButton(target_type, target_id, 1, tally.up))
    view.add_item(VoteButton(target_type, target_id, -1, tally.down))
    return view


def summary_view(card: LessonCard) -> discord.ui.View:
    """A lesson's vote buttons, plus Approve / Reject for curators."""
    lesson_id = card.lesson["id"]
    view = vote_view("lesson", lesson_id, card.tally)
    view.add_item(DecisionButton(lesson_id, "approve"))
    view.add_item(DecisionButton(lesson_id, "reject"))
    return view
