"""Autocomplete choices shared by commands that take a model name."""

from __future__ import annotations

from discord import app_commands

from app import AppContext
from plugins.common.text import shorten


def model_choices(app: AppContext, current: str) -> list[app_commands.Choice[str]]:
    """Configured models matching what the member typed, by name or persona (at most 25, Discord's limit)."""
    typed = current.casefold()
    choices = []
    for name in app.models.names():
        spec = app.models.spec(name)
        if typed in name.casefold() or typed in spec.display_name.casefold():
            role = "student" if spec.trainable else "teacher"
            choices.append(app_commands.Choice(name=shorten(f"{name} · {spec.display_name} ({role})", 100), value=name))
    return choices[:25]
