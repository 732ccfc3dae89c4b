"""The quiz's persistent buttons: Answer (opens a modal), 👍/👎 on the student's answer, and a curator's
Approve/Reject on a candidate correction. Their custom ids name what they act on, so they work after
any restart; what they change is in SQLite."""

from __future__ import annotations

import logging
import re
from typing import Any

import discord

from lessons import prompts
from plugins.common.context import NO_MENTIONS, app_of, decision_button
from plugins.common.errors import answering_failures
from plugins.common.text import shorten
from plugins.voting.ballots import DOWN, UP, curator_rule, is_curator
from quiz.game import MAX_ANSWER_CHARS
from storage import quiz as gq
from storage.votes import Tally

log = logging.getLogger(__name__)


class AnswerButton(discord.ui.DynamicItem[discord.ui.Button], template=r"classroom:quiz:answer:(?P<round>[0-9]+)"):
    """Opens the answer form for one question while its round is open."""

    def __init__(self, round_id: int, disabled: bool = False):
        super().__init__(discord.ui.Button(style=discord.ButtonStyle.primary, label="Answer", emoji="✍️",
                                           custom_id=f"classroom:quiz:answer:{round_id}", disabled=disabled))
        self.round_id = round_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> AnswerButton:
        return cls(int(match["round"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        """Show the form, or say why the question can't be answered any more."""
        async with answering_failures(interaction, f"opening the answer form of quiz round {self.round_id}"):
            app = app_of(interaction.client)
            found = await app.store.call(gq.get_round, self.round_id)
            if found is None or found["status"] != "open":
                await interaction.response.send_message("Time is up for that question; answers are closed.", ephemeral=True)
                return
            await interaction.response.send_modal(AnswerModal(found))


class AnswerModal(discord.ui.Modal):
    """A member's private answer to one quiz question."""

    def __init__(self, found: dict[str, Any]):
        super().__init__(title=f"Question {found['seq']} of {found['questions']}",
                         custom_id=f"classroom:quiz:form:{found['id']}", timeout=900)
        self.round_id = int(found["id"])
        self.answer: discord.ui.TextInput[AnswerModal] = discord.ui.TextInput(
            style=discord.TextStyle.paragraph, custom_id="answer", max_length=MAX_ANSWER_CHARS, min_length=1
        )
        self.add_item(discord.ui.TextDisplay(shorten(found["question"], 1000)))
        self.add_item(discord.ui.Label(text="Your answer", component=self.answer))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        """Store the answer (a later one replaces it); graded when time is up."""
        app = app_of(interaction.client)
        text = (self.answer.value or "").strip()
        if not text:
            await interaction.response.send_message("Your answer was empty, so it wasn't counted.", ephemeral=True)
            return
        problem = await app.store.call(gq.submit_member_answer, self.round_id, str(interaction.user.id), text)
        if problem is not None:
            await interaction.response.send_message(problem, ephemeral=True)
            return
        await interaction.response.send_message(
            "Got it. Your answer counts when time is up (answer again to change it).", ephemeral=True
        )

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:  # type: ignore[override]
        """A bug while storing an answer: logged, and the member is told."""
        log.error("quiz answer to round %s by %s failed", self.round_id, interaction.user.id, exc_info=error)
        text = "Something went wrong storing your answer. It was logged; please try again."
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)


class AnswerVoteButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=r"classroom:vote:answer:(?P<id>[0-9]+):(?P<value>up|down)",
):
    """👍 or 👎 on the student's quiz answer; clicking again takes the vote back. A 👎 majority proposes
    the teacher's correction as a training example."""

    def __init__(self, answer_id: int, value: int, count: int = 0):
        super().__init__(discord.ui.Button(
            style=discord.ButtonStyle.secondary, emoji=UP if value > 0 else DOWN, label=str(count),
            custom_id=f"classroom:vote:answer:{answer_id}:{'up' if value > 0 else 'down'}"))
        self.answer_id = answer_id
        self.value = value

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> AnswerVoteButton:
        return cls(int(match["id"]), 1 if match["value"] == "up" else -1)

    async def callback(self, interaction: discord.Interaction) -> None:
        """Toggle the member's vote, redraw the counts, and post a correction the vote created."""
        async with answering_failures(interaction, f"a vote on quiz answer {self.answer_id}"):
            await self._vote(interaction)

    async def _vote(self, interaction: discord.Interaction) -> None:
        app = app_of(interaction.client)
        if interaction.user.bot:
            await interaction.response.send_message("Bots can't vote.", ephemeral=True)
            return
        answer = await app.store.call(gq.get_answer, self.answer_id)
        if answer is None:
            await interaction.response.send_message("That answer no longer exists, so it can't be voted on.",
                                                    ephemeral=True)
            return
        spec = app.models.specs.get(answer["answerer"])
        system = prompts.ask(spec.display_name if spec else answer["answerer"])[0]["content"]
        result = await app.store.call(gq.vote_on_answer, self.answer_id, str(interaction.user.id), self.value, system)
        if result is None:
            await interaction.response.send_message("That answer no longer exists.", ephemeral=True)
            return
        await interaction.response.edit_message(view=answer_vote_view(self.answer_id, result.tally))
        if result.correction_id is not None and isinstance(interaction.channel, discord.TextChannel | discord.Thread):
            await post_correction(interaction.client, interaction.channel, result.correction_id)


async def post_correction(client: discord.Client, channel: discord.abc.Messageable, correction_id: int) -> None:
    """Show a candidate correction with the curator buttons (best effort: it is stored either way)."""
    app = app_of(client)
    correction = await app.store.call(gq.get_correction, correction_id)
    if correction is None:
        return
    try:
        message = await channel.send(embed=correction_embed(app, correction), view=correction_view(correction_id),
                                     allowed_mentions=NO_MENTIONS)
    except discord.HTTPException as e:
        log.warning("could not post correction %s: %s", correction_id, e)
        return
    await app.store.call(gq.set_correction_message, correction_id, message.id, message.channel.id)


def correction_embed(app: Any, correction: dict[str, Any]) -> discord.Embed:
    """A correction: the question, what the student said, what the teacher says, and its review status."""
    def name(model: str) -> str:
        spec = app.models.specs.get(model)
        return spec.display_name if spec else model

    status = correction["status"]
    colour = {"approved": discord.Colour.green(), "rejected": discord.Colour.red()}.get(status, discord.Colour.orange())
    embed = discord.Embed(title=f"📝 Candidate correction #{correction['id']} for {name(correction['student'])}",
                          colour=colour)
    embed.add_field(name="Question", value=shorten(correction["question"], 1024), inline=False)
    embed.add_field(name=f"{name(correction['student'])} answered", value=shorten(correction["student_answer"], 1024),
                    inline=False)
    embed.add_field(name=f"Correction by {name(correction['teacher'])}", value=shorten(correction["correction"], 1024),
                    inline=False)
    if status == "pending":
        review = ("Members voted this answer down. A curator's Approve adds the correction to the student's training "
                  "data, and retires the question from the held-out quiz.")
    else:
        who = f"<@{correction['curator']}>" if str(correction["curator"]).isdigit() else correction["curator"]
        review = (f"✅ Approved by curator {who}: the student trains on it at the next run." if status == "approved"
                  else f"🚫 Rejected by curator {who}: the student won't train on it.")
    embed.add_field(name="Training", value=review, inline=False)
    return embed


class CorrectionButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=r"classroom:correction:(?P<id>[0-9]+):(?P<decision>approve|reject)",
):
    """A curator's Approve or Reject on a candidate correction; refused for everyone else."""

    def __init__(self, correction_id: int, decision: str):
        super().__init__(decision_button(decision, f"classroom:correction:{correction_id}:{decision}"))
        self.correction_id = correction_id
        self.decision = decision

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> CorrectionButton:
        return cls(int(match["id"]), match["decision"])

    async def callback(self, interaction: discord.Interaction) -> None:
        """Record the decision and redraw the correction, or explain who may decide."""
        async with answering_failures(interaction, f"a curator decision on correction {self.correction_id}"):
            app = app_of(interaction.client)
            if not is_curator(interaction.user, app.settings):
                await interaction.response.send_message(
                    f"Only curators can approve or reject corrections ({curator_rule(app.settings)}).", ephemeral=True)
                return
            row = await app.store.call(gq.decide_correction, self.correction_id, str(interaction.user.id), self.decision)
            if row is None:
                await interaction.response.send_message("That correction no longer exists.", ephemeral=True)
                return
            log.info("curator %s %sd correction %s", interaction.user.id, self.decision, self.correction_id)
            await interaction.response.edit_message(embed=correction_embed(app, row), view=correction_view(row["id"]),
                                                    allowed_mentions=NO_MENTIONS)


def answer_vote_view(answer_id: int, tally: Tally) -> discord.ui.View:
    """👍 n / 👎 n under the student's answer."""
    view = discord.ui.View(timeout=None)
    view.add_item(AnswerVoteButton(answer_id, 1, tally.up))
    view.add_item(AnswerVoteButton(answer_id, -1, tally.down))
    return view


def answer_view(round_id: int) -> discord.ui.View:
    """The Answer button under a question."""
    view = discord.ui.View(timeout=None)
    view.add_item(AnswerButton(round_id))
    return view


def correction_view(correction_id: int) -> discord.ui.View:
    """Approve / Reject for curators."""
    view = discord.ui.View(timeout=None)
    view.add_item(CorrectionButton(correction_id, "approve"))
    view.add_item(CorrectionButton(correction_id, "reject"))
    return view
