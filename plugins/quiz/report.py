"""/student report: a student's report card (held-out score per topic and version) with the score chart,
or, with `students:`, one table and chart comparing several students.

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

from app import AppContext
from plugins.common.choices import model_choices
from plugins.common.context import NO_MENTIONS, app_of
from plugins.common.text import shorten
from quiz import compare
from quiz.report import score_chart
from quiz.report_card import ReportCard, read_card

log = logging.getLogger(__name__)

GROUP = "student"
DESCRIPTION_LIMIT = 4096
MAX_COMPARED = 4
"""Students on one comparison: more columns than this wrap in a Discord code block and crowd the chart."""


def card_embed(card: ReportCard) -> discord.Embed:
    """The card as a code block in an embed, cut at whole lines to fit."""
    speaks = f"adapter v{card.active_version}" if card.active_version is not None else "its base weights"
    embed = discord.Embed(title=f"📋 Report card: {card.display_name} (`{card.student}`)"[:256],
                          description=code_block(card.text.splitlines()[2:]),  # the title says who it is
                          colour=discord.Colour.blurple())
    embed.set_footer(text=f"Speaks with {speaks} · held-out quiz: questions it never trained on")
    return embed


def code_block(lines: list[str]) -> str:
    """Lines in a code block that fits an embed description, cut at whole lines."""
    body = "\n".join(lines)
    while len(body) + 8 > DESCRIPTION_LIMIT and lines:
        lines = lines[:-2] + ["…"]
        body = "\n".join(lines)
    return f"```\n{body}\n```"


def chart_file(card: ReportCard) -> discord.File | None:
    """The score chart as a PNG attachment; None before any version was evaluated."""
    if not card.rows:
        return None
    png = score_chart(card.display_name, card.rows)
    return discord.File(io.BytesIO(png), filename=f"{_safe(card.student)}-report.png",
                        description=f"{card.display_name}: scores by adapter version")


def compare_embed(cards: list[ReportCard]) -> discord.Embed:
    """The comparison table as a code block in an embed."""
    names = ", ".join(c.display_name for c in cards)
    embed = discord.Embed(title=shorten(f"📋 Report cards compared: {names}", 256),
                          description=code_block(compare.compare_text(cards).splitlines()[1:]),
                          colour=discord.Colour.blurple())
    embed.set_footer(text="* = the version each student speaks with · held-out quiz: questions it never trained on")
    return embed


def compare_file(cards: list[ReportCard]) -> discord.File | None:
    """The comparison chart as a PNG attachment; None when no student was evaluated yet. Slow: run it off the loop."""
    if not any(card.columns for card in cards):
        return None
    names = "-".join(_safe(card.student) for card in cards)[:80]
    return discord.File(io.BytesIO(compare.chart_png(cards)), filename=f"compare-{names}.png",
                        description="Students compared: live adapter and base weights per topic")


def parse_students(text: str, trainable: list[str]) -> tuple[list[str], str | None]:
    """The students a comma list names, in order and each once, or why it doesn't fit."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    known = ", ".join(f"`{s}`" for s in trainable) or "none are configured"
    unknown = [n for n in names if n not in trainable]
    if unknown:
        listed = ", ".join(f"`{shorten(n, 40)}`" for n in unknown[:5])
        return [], f"Not trainable students: {listed}. Students: {known}."
    if not names:
        return [], f"Name the students to compare, separated by commas (students: {known})."
    if len(names) > MAX_COMPARED:
        return [], f"Compare at most {MAX_COMPARED} students at a time."
    return names, None


def students_choices(app: AppContext, current: str) -> list[app_commands.Choice[str]]:
    """The comma list typed so far, completed with each trainable student not in it yet (at most 25)."""
    done, _, typed = current.rpartition(",")
    given = [n.strip() for n in done.split(",") if n.strip()]
    prefix = "".join(f"{n}," for n in given)
    choices = []
    for spec in app.settings.students():
        value = prefix + spec.name
        if spec.name not in given and typed.strip().casefold() in spec.name.casefold() and len(value) <= 100:
            choices.append(app_commands.Choice(name=shorten(f"{value} · {spec.display_name}", 100), value=value))
    return choices[:25]


async def post_comparison(interaction: discord.Interaction, names: list[str]) -> None:
    """Post one table and one chart comparing the students' report cards."""
    app = app_of(interaction.client)
    await interaction.response.defer(thinking=True)
    cards = [await read_card(app, name) for name in names]
    await _send_card(interaction, compare_embed(cards), await asyncio.to_thread(compare_file, cards))


async def _send_card(interaction: discord.Interaction, embed: discord.Embed, file: discord.File | None) -> None:
    """Follow up a deferred report with its embed, the chart shown inside it when there is one."""
    if file is None:
        await interaction.followup.send(embed=embed, allowed_mentions=NO_MENTIONS)
        return
    embed.set_image(url=f"attachment://{file.filename}")
    await interaction.followup.send(embed=embed, file=file, allowed_mentions=NO_MENTIONS)


async def post_report(interaction: discord.Interaction, student: str | None, students: str | None = None) -> None:
    """Post the report card with the chart attached; with `students`, the comparison of them (and `student`)."""
    app = app_of(interaction.client)
    if students is not None:
        trainable = [s.name for s in app.settings.students()]
        names, problem = parse_students(f"{student or ''},{students}", trainable)
        if problem is not None:
            await interaction.response.send_message(problem, ephemeral=True, allowed_mentions=NO_MENTIONS)
            return
        if len(names) > 1:
            await post_comparison(interaction, names)
            return
        student = names[0]
    name = student or app.settings.default_student
    if name not in app.models.specs:
        await interaction.response.send_message(
            f"Unknown model '{name}' (known: {', '.join(app.models.names())}).", ephemeral=True)
        return
    await interaction.response.defer(thinking=True)
    card = await read_card(app, name)
    await _send_card(interaction, card_embed(card), await asyncio.to_thread(chart_file, card))


def report_command() -> app_commands.Command:
    """A fresh /student report command (one per bot: a command belongs to one group)."""

    @app_commands.command(name="report",
                          description="A student's report card: held-out scores per topic and version, with a chart")
    @app_commands.describe(student="Which student (default: the server's default student)",
                           students="Compare students on one table and chart: names separated by commas, like kid,kat")
    async def report(interaction: discord.Interaction, student: str | None = None, students: str | None = None) -> None:
        await post_report(interaction, student, students)

    @report.autocomplete("student")
    async def _student_choices(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return model_choices(app_of(interaction.client), current)

    @report.autocomplete("students")
    async def _students_choices(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return students_choices(app_of(interaction.client), current)

    return report


def _safe(name: str) -> str:
    """A model name as a file name part."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "student"


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
