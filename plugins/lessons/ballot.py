"""The panel ballot: after the teachers of a panel answered the student, members pick the best answer.

One message per panel question, with one button per answer labelled by its teacher and its
ballots. A member has one ballot per question; clicking another answer moves it, clicking the
same answer again takes it back. The custom ids name the answer turn, so the buttons work
after any restart.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import discord
from sqlite_utils import Database

from app import AppContext
from lessons.panel import PANEL
from plugins.common.context import NO_MENTIONS, app_of
from plugins.common.errors import answering_failures
from plugins.common.text import shorten
from storage import fetch_all
from storage import votes as v

log = logging.getLogger(__name__)

PROMPT = "🏆 **Which answer was best?** One vote each; click again to take it back. Only the winner trains the student."


class BallotButton(discord.ui.DynamicItem[discord.ui.Button], template=r"classroom:ballot:(?P<turn>[0-9]+)"):
    """One panel answer on the ballot; its label is the teacher and the ballots it has."""

    def __init__(self, turn_id: int, label: str = "answer"):
        super().__init__(
            discord.ui.Button(style=discord.ButtonStyle.primary, label=shorten(label, 80),
                              custom_id=f"classroom:ballot:{turn_id}")
        )
        self.turn_id = turn_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> BallotButton:
        return cls(int(match["turn"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        """Cast, move or take back the member's ballot and redraw the counts."""
        async with answering_failures(interaction, f"a ballot for panel answer {self.turn_id}"):
            app = app_of(interaction.client)
            if interaction.user.bot:
                await interaction.response.send_message("Bots can't vote.", ephemeral=True)
                return
            try:
                await app.store.call(v.cast_ballot, self.turn_id, str(interaction.user.id))
            except ValueError:
                await interaction.response.send_message("That answer no longer exists.", ephemeral=True)
                return
            answers = await app.store.call(panel_answers, self.turn_id)
            await interaction.response.edit_message(view=ballot_view(app, answers), allowed_mentions=NO_MENTIONS)


def panel_answers(db: Database, turn_id: int) -> list[dict[str, Any]]:
    """Every panel answer to the same student question as `turn_id`, with its ballots, in order."""
    return fetch_all(
        db,
        "SELECT t.id, t.speaker, (SELECT COUNT(*) FROM panel_ballots b WHERE b.turn_id = t.id) AS ballots"
        " FROM turns t JOIN turns me ON me.id = ? AND t.lesson_id = me.lesson_id AND t.section = me.section"
        " WHERE t.kind = ? ORDER BY t.seq",
        [turn_id, PANEL],
    )


def ballot_view(app: AppContext, answers: list[dict[str, Any]]) -> discord.ui.View:
    """One button per answer: '🏆 <teacher> · <ballots>'."""
    view = discord.ui.View(timeout=None)
    for a in answers[:25]:
        spec = app.models.specs.get(a["speaker"])
        name = spec.display_name if spec else a["speaker"]
        view.add_item(BallotButton(a["id"], f"🏆 {name} · {a.get('ballots', 0)}"))
    return view
