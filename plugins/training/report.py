"""What members read about training: the report after a run, the run history, the adapter lineage, and the chart.

Plain functions from stored rows (storage.training) and TrainResult to text, so they are
tested without Discord.
"""

from __future__ import annotations

import io
import re
from datetime import datetime
from typing import Any

import discord

from plugins.common.text import shorten
from quiz.report import score_chart, score_rows
from storage.training import taught_by
from trainer.job import TrainResult

RUN_ICONS = {
    "running": "⏳",
    "promoted": "✅",
    "rejected": "↩️",
    "skipped": "⏭️",
    "failed": "❌",
    "interrupted": "⚠️",
}
ADAPTER_ICONS = {"active": "🟢", "retired": "⚪", "rejected": "⛔", "deleted": "🗑️", "candidate": "⏳"}
TRIGGERS = {"schedule": "nightly", "manual": "/train now", "cli": "CLI"}


def pct(value: float | None) -> str:
    """0.6 → 60%; – when unknown."""
    return "–" if value is None else f"{value * 100:.0f}%"


def change(before: dict[str, Any] | None, after: dict[str, Any] | None, key: str) -> str:
    """'40% → 60%' for one score of a run."""
    return f"{pct((before or {}).get(key))} → {pct((after or {}).get(key))}"


def count(n: int, word: str) -> str:
    """'1 example', '3,400 tokens'."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def seconds_text(seconds: float | None) -> str:
    """24s, 3m 05s or 1h 02m."""
    if seconds is None:
        return "–"
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def when(iso: str | None, style: str = "f") -> str:
    """A stored ISO timestamp as a Discord timestamp every member sees in their own time zone."""
    if not iso:
        return "–"
    return discord.utils.format_dt(datetime.fromisoformat(iso), style)  # type: ignore[arg-type]


def report_text(result: TrainResult, display_name: str, live_version: int | None) -> str:
    """The report posted after a run: outcome and why, examples, tokens, time, before/after scores."""
    who = f"{display_name} (`{result.student}`)"
    icon = RUN_ICONS.get(result.status, "•")
    keeps = f"v{live_version}" if live_version is not None else "its base weights"
    if result.status == "promoted":
        head = f"{icon} **{who}: adapter v{result.version} promoted** — it answers with it now."
    elif result.status == "rejected":
        head = f"{icon} **{who}: adapter v{result.version} not promoted** — it keeps {keeps}."
    elif result.status == "skipped":
        head = f"{icon} **{who}: training skipped** — {result.reason or 'nothing to do'}."
    else:
        head = f"{icon} **{who}: training {result.status}** — it keeps {keeps}."
    lines = [head]
    if result.examples or result.tokens:
        lines.append(f"{count(result.examples, 'example')} · {count(result.tokens, 'token')} · {seconds_text(result.seconds)}")
    if result.before is not None or result.after is not None:
        lines.append(
            f"Held-out quiz {change(result.before, result.after, 'topic')} · "
            f"control set {change(result.before, result.after, 'control')}"
        )
    if result.reason and result.status != "skipped":
        lines.append(f"Why: {shorten(result.reason, 500)}")
    return "\n".join(lines)


def run_line(run: dict[str, Any]) -> str:
    """One run in /train history."""
    icon = RUN_ICONS.get(run["status"], "•")
    parts = [f"**#{run['id']}** {icon} {run['status']} · `{run['student']}` · {when(run['started_at'])}"]
    parts.append(TRIGGERS.get(run.get("trigger") or "", run.get("trigger") or "?"))
    if run.get("examples"):
        parts.append(f"{count(run['examples'], 'example')} · {count(run.get('tokens') or 0, 'token')}")
    if run.get("seconds") is not None and run["status"] != "running":
        parts.append(seconds_text(run["seconds"]))
    if run.get("before") or run.get("after"):
        parts.append(
            f"held-out {change(run.get('before'), run.get('after'), 'topic')}, "
            f"control {change(run.get('before'), run.get('after'), 'control')}"
        )
    line = " · ".join(parts)
    if run.get("reason"):
        line += f"\n  ↳ {shorten(run['reason'], 160)}"
    return line


def adapter_line(adapter: dict[str, Any], versions: dict[int, int], shares: dict[str, float] | None = None) -> str:
    """One adapter in /student versions: version, status, scores, parent, date, and which teachers taught it."""
    ev = (adapter.get("metrics") or {}).get("eval") or {}
    parent = versions.get(adapter["parent_id"]) if adapter.get("parent_id") else None
    icon = ADAPTER_ICONS.get(adapter["status"], "•")
    line = (
        f"`v{adapter['version']}` {icon} **{adapter['status']}** · held-out {pct(ev.get('topic'))} · "
        f"control {pct(ev.get('control'))} · from {'v' + str(parent) if parent else 'base'} · "
        f"{when(adapter['created_at'], 'd')}"
    )
    taught = taught_by(shares)
    # config names, but an underscore in one must not turn the rest of the line italic
    return f"{line} · {discord.utils.escape_markdown(shorten(taught, 200))}" if taught else line


def lineage_text(adapters: list[dict[str, Any]], shares: dict[int, dict[str, float]] | None = None,
                 limit: int = 20) -> str:
    """A student's adapters, oldest first (the newest `limit`), and whether it speaks with its base weights.

    `shares` are the teachers' shares per training run (storage.training.teacher_shares).
    """
    versions = {a["id"]: a["version"] for a in adapters}
    shown = adapters[-limit:]
    lines = []
    if len(adapters) > len(shown):
        lines.append(f"… {len(adapters) - len(shown)} older versions not shown")
    lines += [adapter_line(a, versions, (shares or {}).get(a["run_id"])) for a in shown]
    if not any(a["status"] == "active" for a in adapters):
        lines.append("🟢 **base weights** are live: no adapter is active.")
    return "\n".join(lines)


def chart_file(student: str, adapters: list[dict[str, Any]], runs: list[dict[str, Any]]) -> discord.File | None:
    """The score chart as a PNG attachment; None when no version was evaluated yet. Slow: run it off the loop."""
    rows = score_rows(adapters, runs)
    if not rows:
        return None
    png = score_chart(student, rows)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", student) or "student"
    return discord.File(io.BytesIO(png), filename=f"{safe}-scores.png", description=f"{student}: scores by adapter version")


def fit(text: str, limit: int = 4096) -> str:
    """Text cut at a line break to fit an embed description (4096 characters)."""
    if len(text) <= limit:
        return text
    return text[: text.rfind("\n", 0, limit - 2)] + "\n…"
