"""What the training commands' options accept and offer: trainable students and adapter versions."""

from __future__ import annotations

from typing import Any

from discord import app_commands

from plugins.common.text import shorten
from plugins.training.report import pct
from settings import Settings


def student_choices(settings: Settings, current: str) -> list[app_commands.Choice[str]]:
    """Trainable models matching what the member typed, by name or persona (at most 25, Discord's limit)."""
    typed = current.casefold()
    choices = []
    for spec in settings.students():
        if typed in spec.name.casefold() or typed in spec.display_name.casefold():
            choices.append(app_commands.Choice(name=shorten(f"{spec.name} · {spec.display_name}", 100), value=spec.name))
    return choices[:25]


def version_choices(adapters: list[dict[str, Any]], current: str) -> list[app_commands.Choice[str]]:
    """'base' and the versions still on disk, newest first, matching what the member typed."""
    choices = [app_commands.Choice(name="base (no adapter)", value="base")]
    for a in reversed(adapters):
        if a["status"] != "deleted":
            ev = (a.get("metrics") or {}).get("eval") or {}
            label = f"v{a['version']} · {a['status']} · held-out {pct(ev.get('topic'))}"
            choices.append(app_commands.Choice(name=label, value=str(a["version"])))
    typed = current.strip().lower().removeprefix("v")
    return [c for c in choices if typed in c.value or typed in c.name.lower()][:25]


def parse_version(text: str) -> int | None:
    """'3' or 'v3' → 3; 'base' → None (the base weights); ValueError for anything else."""
    value = text.strip().lower()
    if value == "base":
        return None
    value = value.removeprefix("v")
    if not value.isdigit():
        raise ValueError(f"not a version: {text!r}")
    return int(value)
