"""Report cards: a student's held-out and control scores across adapter versions, as text and a PNG chart."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to memory only
import matplotlib.pyplot as plt  # noqa: E402


def score_rows(adapters: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per evaluated version, base first: label, topic score, control score, status.

    The base model's scores are the 'before' of the first run that had no parent; each
    adapter's come from its own evaluation.
    """
    rows: list[dict[str, Any]] = []
    first = next((r for r in sorted(runs, key=lambda r: r["id"]) if r.get("before") and r.get("after")), None)
    if first and first.get("before"):
        rows.append({"label": "base", "topic": first["before"].get("topic"), "control": first["before"].get("control"),
                     "status": "base"})
    for a in adapters:
        ev = (a.get("metrics") or {}).get("eval")
        if ev:
            rows.append({"label": f"v{a['version']}", "topic": ev.get("topic"), "control": ev.get("control"),
                         "status": a["status"]})
    return rows


def score_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table (terminal and Discord code block)."""
    lines = [f"{'version':<8} {'held-out':>8} {'control':>8}  status"]
    for r in rows:
        lines.append(f"{r['label']:<8} {_pct(r['topic']):>8} {_pct(r['control']):>8}  {r['status']}")
    return "\n".join(lines)


def score_chart(student: str, rows: list[dict[str, Any]]) -> bytes:
    """A PNG line chart of held-out and control accuracy per version."""
    labels = [r["label"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    try:
        for key, name, style in (("topic", "held-out quiz", "o-"), ("control", "control set", "s--")):
            values = [r[key] * 100 if r[key] is not None else float("nan") for r in rows]
            ax.plot(labels, values, style, label=name)
        for i, r in enumerate(rows):
            if r["status"] == "active":
                ax.axvline(i, color="tab:green", alpha=0.25, linewidth=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("% correct")
        ax.set_title(f"{student}: scores by adapter version (green: live)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"
