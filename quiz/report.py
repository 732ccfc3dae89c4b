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
    fig, ax = plt.subplots(figsize=(7.2, 3.2), dpi=110)
    try:
        for key, name, style in (("topic", "held-out quiz", "o-"), ("control", "control set", "s--")):
            values = [_percent(r[key]) for r in rows]
            ax.plot(labels, values, style, label=name)
        for i, r in enumerate(rows):
            if r["status"] == "active":
                ax.axvline(i, color="tab:green", alpha=0.25, linewidth=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("% correct")
        ax.set_title(f"{student}: scores by adapter version (green: live)")
        ax.grid(alpha=0.3)
        return _png(fig, ax)
    finally:
        plt.close(fig)


def compare_chart(groups: list[str], series: list[dict[str, Any]]) -> bytes:
    """A PNG of grouped bars: per group (a topic), one bar per student at its live score, its base score a black tick.

    Each series is {"name": legend label, "live": [share or None per group], "base": [...]};
    None leaves a gap (that student was never asked about that topic).
    """
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) + 2.5), 3.6), dpi=110)
    try:
        for i, s in enumerate(series):
            xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
            ax.bar(xs, [_percent(v) for v in s["live"]], width * 0.9, label=s["name"])
            ax.plot(xs, [_percent(v) for v in s["base"]], linestyle="none", marker="_", markersize=90 * width,
                    markeredgewidth=2.5, color="black", label="base weights" if i == 0 else None)
        ax.set_xticks(range(len(groups)), [g if len(g) <= 16 else g[:15] + "…" for g in groups],
                      rotation=20, ha="right")
        ax.set_ylim(0, 100)
        ax.set_ylabel("% correct")
        ax.set_title("Students compared: live adapter (bars) and base weights (ticks)")
        ax.grid(axis="y", alpha=0.3)
        return _png(fig, ax)
    finally:
        plt.close(fig)


def _png(fig: Any, ax: Any) -> bytes:
    """The figure as PNG bytes, its legend beside the axes so it never covers a point or a bar."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _percent(value: float | None) -> float:
    return float("nan") if value is None else value * 100


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"
