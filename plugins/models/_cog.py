"""/models: which teachers and students this server can use, and each student's active adapter."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from app import AppContext
from plugins.common.context import NO_MENTIONS
from plugins.common.text import shorten
from settings import ModelSpec
from storage import discord as dq
from storage import votes as v


class ModelsCog(commands.Cog):
    """Shows the configured models."""

    def __init__(self, app: AppContext):
        self.app = app

    @app_commands.command(name="models", description="The teacher and student models configured here")
    async def models(self, interaction: discord.Interaction) -> None:
        """One field per model: persona, role, backend, and the active adapter of students."""
        await interaction.response.defer(ephemeral=True)
        adapters = await self.app.store.call(dq.active_adapters)
        records = await self.app.store.call(v.teacher_records)
        await interaction.followup.send(
            embed=models_embed(self.app, adapters, records), ephemeral=True, allowed_mentions=NO_MENTIONS
        )


def models_embed(app: AppContext, adapters: dict[str, int], records: dict[str, dict[str, int]] | None = None) -> discord.Embed:
    """The /models table as an embed."""
    settings = app.settings
    embed = discord.Embed(
        title="Models",
        description=f"Default teacher: `{settings.default_teacher}` · default student: `{settings.default_student}`",
    )
    for name in app.models.names()[:25]:
        spec = app.models.spec(name)
        value = _describe(spec, adapters, (records or {}).get(name))
        embed.add_field(name=shorten(f"{spec.display_name} (`{name}`)", 256), value=value, inline=False)
    return embed


def _describe(spec: ModelSpec, adapters: dict[str, int], record: dict[str, int] | None = None) -> str:
    where = spec.model if spec.backend == "openai" else spec.path
    lines = [f"{spec.backend} · {shorten(str(where), 80)}"]
    if spec.trainable:
        version = adapters.get(spec.name)
        lines.insert(0, "student (trainable)")
        lines.append(f"active adapter: v{version}" if version is not None else "active adapter: none (base weights)")
    else:
        lines.insert(0, "teacher")
    if spec.train_on_outputs is False:
        lines.append("train_on_outputs = false: its outputs are never used for training")
    elif spec.train_on_outputs is None and spec.backend == "openai":
        lines.append("train_on_outputs not set: the provider's terms apply")
    if record:
        lines.append(approval_line(record))
    return shorten(" · ".join(lines), 1024)


def approval_line(record: dict[str, int]) -> str:
    """'lessons approved 3/4 (75%) · panel answers won 1/2 (50%)' for a teacher."""
    parts = []
    for label, won, total in (("lessons approved", record["approved"], record["lessons"]),
                              ("panel answers won", record["wins"], record["panels"])):
        if total:
            parts.append(f"{label} {won}/{total} ({won / total:.0%})")
    return " · ".join(parts)
