"""Report cards side by side: per topic, each student's base score and its live adapter's, as text and a chart.

A class has several students, each with its own adapter lineage; comparing them asks "which
student learned what", so each student gets two columns: what its base weights scored and
what the adapter it speaks with now scored, on the same held-out topics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quiz.report import compare_chart
from quiz.report_card import CONTROL, TOPIC_WIDTH, Column, ReportCard, cell_text

HELDOUT = "all held-out"


@dataclass
class Side:
    """One student's columns: its base weights, and the live adapter (None: it speaks with its base weights)."""

    card: ReportCard
    base: Column | None
    live: Column | None

    @property
    def speaks(self) -> str:
        """What the student speaks with, in the card's words."""
        v = self.card.active_version
        return f"adapter v{v}" if v is not None else "its base weights"

    def heads(self) -> list[str]:
        """Column headings: 'kid base' and 'kid v2*', or only 'kid base*' when the base weights are live."""
        name = self.card.student
        if self.card.active_version is None:
            return [f"{name} base*"]
        return [f"{name} base", f"{name} v{self.card.active_version}*"]

    def cells(self, pick: str) -> list[tuple[int, int] | None]:
        """This student's cells in one row: a topic, HELDOUT or CONTROL."""
        cols = [self.base] if self.card.active_version is None else [self.base, self.live]
        return [_score(c, pick) for c in cols]


def sides(cards: list[ReportCard]) -> list[Side]:
    """Each card's base column and the column of its active version (when that version was evaluated)."""
    out = []
    for card in cards:
        base = next((c for c in card.columns if c.label == "base"), None)
        live = next((c for c in card.columns if c.status == "active"), None)
        out.append(Side(card, base, live))
    return out


def compare_table(cards: list[ReportCard]) -> str:
    """Topics down; per student, base and live across ('3/4 75%'); live columns are marked with *."""
    students = sides(cards)
    heads = [h for s in students for h in s.heads()]
    widths = [max(10, len(h) + 2) for h in heads]
    topics = sorted({t for s in students for c in (s.base, s.live) if c for t in c.topics})

    def row(name: str, pick: str) -> str:
        name = name if len(name) <= TOPIC_WIDTH - 1 else name[: TOPIC_WIDTH - 2] + "…"
        cells = [cell for s in students for cell in s.cells(pick)]
        return f"{name:<{TOPIC_WIDTH}}" + "".join(f"{cell_text(c):>{w}}" for c, w in zip(cells, widths, strict=True))

    lines = [f"{'topic':<{TOPIC_WIDTH}}" + "".join(f"{h:>{w}}" for h, w in zip(heads, widths, strict=True))]
    lines += [row(topic, topic) for topic in topics]
    lines.append("-" * (TOPIC_WIDTH + sum(widths)))
    lines += [row(HELDOUT, HELDOUT), row(CONTROL, CONTROL)]
    return "\n".join(lines)


def compare_text(cards: list[ReportCard]) -> str:
    """The comparison as plain text: who speaks with what, then the table (terminal, or a Discord code block)."""
    lines = ["Report cards compared:"]
    for s in sides(cards):
        evaluated = "" if s.base or s.live else " (no evaluations yet)"
        lines.append(f"  {s.card.display_name} ({s.card.student}): speaks with {s.speaks}{evaluated}")
    lines += ["", "Held-out quiz by topic, base weights and live version (*):", compare_table(cards)]
    return "\n".join(lines)


def chart_png(cards: list[ReportCard]) -> bytes:
    """Grouped bars per topic, one per student's live score, its base score marked (slow: run it off the loop)."""
    return compare_chart(*chart_data(cards))


def chart_data(cards: list[ReportCard]) -> tuple[list[str], list[dict[str, Any]]]:
    """The chart's groups (topics, then all held-out and the control set) and one series per student.

    A student that speaks with its base weights has no base ticks: its bars are the base scores.
    """
    students = sides(cards)
    groups = sorted({t for s in students for c in (s.base, s.live) if c for t in c.topics}) + [HELDOUT, CONTROL]
    series: list[dict[str, Any]] = []
    for s in students:
        live = s.base if s.card.active_version is None else s.live
        label = "base" if s.card.active_version is None else f"v{s.card.active_version}"
        series.append({"name": f"{s.card.display_name} ({label})",
                       "live": [_share(_score(live, g)) for g in groups],
                       "base": [None if live is s.base else _share(_score(s.base, g)) for g in groups]})
    return groups, series


def _score(col: Column | None, pick: str) -> tuple[int, int] | None:
    if col is None:
        return None
    cell = col.heldout if pick == HELDOUT else col.control if pick == CONTROL else col.topics.get(pick)
    return cell if cell and cell[1] else None


def _share(cell: tuple[int, int] | None) -> float | None:
    return None if cell is None else cell[0] / cell[1]
