"""/student report: a student's report card (held-out score per topic and version) with the score chart.

The command joins the /student group when another extension already made one (the training
extension's /student versions | rollback), so load this extension after it; otherwise it
makes the group itself.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re

import discord
from discord import app_commands

from plugins.common.choices import model_choices
from plugins.common.context import NO_MENTIONS, app_of
from quiz.report import score_chart
from quiz.report_card import ReportCard, read_card

log = logging.getLogger(__name__)

GROUP = "student"
DESCRIPTION_LIMIT = 4096


def card_embed(card: ReportCard) -> discord.Embed:
    """The card as a code block in an embed, cut at whole lines to fit."""
    lines = card.text.splitlines()[2:]  # the title says who it is
    body = "\n".join(lines)
    while len(body) + 8 > DESCRIPTION_LIMIT and lines:
        lines = lines[:-2] + ["…"]
        body = "\n".join(lines)
    speaks = f"adapter v{card.active_version}" if card.active_version is not None else "its base weights"
    embed = discord.Embed(title=f"📋 Report card: {card.display_name} (`{card.student}`)"[:256],
                          description=f"```\n{body}\n```", colour=discord.Colour.blurple())
    embed.set_footer(text=f"Speaks with {speaks} · held-out quiz: questions it never trained on")
    return embed


def chart_file(card: ReportCard) -> discord.File | None:
    """The score chart as a PNG attachment; None before any version was evaluated."""
    if not card.rows:
        return None
    png = score_chart(card.display_name, card.rows)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", card.student) or "student"
    return discord.File(io.BytesIO(png), filename=f"{safe}-report.png",
                        description=f"{card.display_name}: scores by adapter version")


async def post_report(interaction: discord.Interaction, student: str | None) -> None:
    """Post the report card with the chart attached."""
    app = app_of(interaction.client)
    name = student or app.settings.default_student
    if name not in app.models.specs:
        await interaction.response.send_message(
            f"Unknown model '{name}' (known: {', '.join(app.models.names())}).", ephemeral=True)
        return
    await interaction.response.defer(thinking=True)
    card = await read_card(app, name)
    file = await asyncio.to_thread(chart_file, card)
    embed = card_embed(card)
    if file is None:
        await interaction.followup.send(embed=embed, allowed_mentions=NO_MENTIONS)
        return
    embed.set_image(url=f"attachment://{file.filename}")
    await interaction.followup.send(embed=embed, file=file, allowed_mentions=NO_MENTIONS)


def report_command() -> app_commands.Command:
    """A fresh /student report command (one per bot: a command belongs to one group)."""

    @app_commands.command(name="report",
                          description="A student's report card: held-out scores per topic and version, with a chart")
    @app_commands.describe(student="Which student (default: the server's default student)")
    async def report(interaction: discord.Interaction, student: str | None = None) -> None:
        await post_report(interaction, student)

    @report.autocomplete("student")
    async def _student_choices(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return model_choices(app_of(interaction.client), current)

    return report


def attach(tree: app_commands.CommandTree, command: app_commands.Command) -> app_commands.Group | None:
    """Add /student report to the /student group; returns the group made here when there was none."""
    existing = tree.get_command(GROUP)
    if isinstance(existing, app_commands.Group):
        existing.add_command(command)
        return None
    group = app_commands.Group(name=GROUP, description="The student: report card", guild_only=True)
    group.add_command(command)
    tree.add_command(group)
    return group


def detach(tree: app_commands.CommandTree, command: app_commands.Command, own_group: app_commands.Group | None) -> None:
    """Take /student report (or the group made for it) back out of the tree."""
    if own_group is not None:
        tree.remove_command(own_group.name)
        return
    existing = tree.get_command(GROUP)
    if isinstance(existing, app_commands.Group) and existing.get_command(command.name) is command:
        existing.remove_command(command.name)
