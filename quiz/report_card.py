"""A student's report card: held-out score per topic for the base model and each evaluated adapter version.

The scores come from what the evaluation gate stored: each training run writes
`<home>/runs/<run_id>/eval_results.json` with every graded answer of its "before" variant
(the adapter it replaced, or the base weights) and its "after" variant (the candidate it
trained). Where a version was evaluated more than once, its latest evaluation counts, since
later runs quiz on more items.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quiz.report import score_rows, score_table

if TYPE_CHECKING:
    from app import AppContext

log = logging.getLogger(__name__)

CONTROL = "control set"
MAX_VERSIONS = 5
"""Adapter columns shown besides the base model (the newest ones, and always the active one)."""
TOPIC_WIDTH = 26


@dataclass
class Column:
    """One evaluated version: its label, status and (correct, total) per topic and on the control set."""

    label: str
    status: str
    run_id: int
    topics: dict[str, tuple[int, int]] = field(default_factory=dict)
    control: tuple[int, int] = (0, 0)

    @property
    def heldout(self) -> tuple[int, int]:
        """(correct, total) over every held-out item."""
        return sum(c for c, _ in self.topics.values()), sum(t for _, t in self.topics.values())


def load_eval_results(home: Path, run_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The stored evaluation of each run that has one (file I/O: call it off the event loop)."""
    found: dict[int, dict[str, Any]] = {}
    for run_id in run_ids:
        path = home / "runs" / str(run_id) / "eval_results.json"
        try:
            found[run_id] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (OSError, json.JSONDecodeError) as e:  # a damaged file loses one run's column, not the card
            log.warning("could not read the evaluation of run %s at %s: %s", run_id, path, e)
    return found


def evaluated_item_ids(results: dict[int, dict[str, Any]]) -> set[int]:
    """The held-out item ids that appear in any stored evaluation (to look their topics up)."""
    ids: set[int] = set()
    for variants in results.values():
        for variant in variants.values():
            for a in (variant or {}).get("answers", []):
                if a.get("split", "heldout") == "heldout" and isinstance(a.get("id"), int):
                    ids.add(a["id"])
    return ids


def columns(adapters: list[dict[str, Any]], results: dict[int, dict[str, Any]], topics: dict[int, str]) -> list[Column]:
    """The base model and each adapter version with a stored evaluation, base first then by version."""
    by_id = {a["id"]: a for a in adapters}
    by_run = {a["run_id"]: a for a in adapters if a.get("run_id") is not None}
    latest: dict[str, Column] = {}
    for run_id in sorted(results):
        candidate = by_run.get(run_id)
        if candidate is None:
            continue
        parent = by_id.get(candidate.get("parent_id"))
        named = {"before": ("base", "base") if candidate.get("parent_id") is None else
                 (f"v{parent['version']}", parent["status"]) if parent else None,
                 "after": (f"v{candidate['version']}", candidate["status"])}
        for variant, label in named.items():
            answers = (results[run_id].get(variant) or {}).get("answers")
            if label is None or answers is None:
                continue
            latest[label[0]] = _column(label[0], label[1], run_id, answers, topics)
    ordered = sorted(latest.values(), key=lambda c: -1 if c.label == "base" else int(c.label[1:]))
    return _limit(ordered)


def _column(label: str, status: str, run_id: int, answers: list[dict[str, Any]], topics: dict[int, str]) -> Column:
    col = Column(label, status, run_id)
    for a in answers:
        if a.get("correct") is None:
            continue
        right = int(bool(a["correct"]))
        if a.get("split", "heldout") == "control":
            col.control = (col.control[0] + right, col.control[1] + 1)
            continue
        item_id = a.get("id")
        topic = topics.get(item_id, "(item since deleted)") if isinstance(item_id, int) else "(unknown item)"
        c, t = col.topics.get(topic, (0, 0))
        col.topics[topic] = (c + right, t + 1)
    return col


def _limit(ordered: list[Column]) -> list[Column]:
    base = [c for c in ordered if c.label == "base"]
    versions = [c for c in ordered if c.label != "base"]
    keep = versions[-MAX_VERSIONS:]
    active = [c for c in versions if c.status == "active" and c not in keep]
    if active:
        keep = sorted(active + keep[1:], key=lambda c: int(c.label[1:]))
    return base + keep


def topic_table(cols: list[Column]) -> str:
    """Topics down, versions across: '3/4 75%' per cell; the active version is marked with *."""
    heads = [c.label + ("*" if c.status == "active" else "") for c in cols]
    topics = sorted({t for c in cols for t in c.topics})
    lines = [f"{'topic':<{TOPIC_WIDTH}}" + "".join(f"{h:>10}" for h in heads)]
    for topic in topics:
        lines.append(_row(topic, [c.topics.get(topic) for c in cols]))
    lines.append("-" * (TOPIC_WIDTH + 10 * len(cols)))
    lines.append(_row("all held-out", [c.heldout if c.heldout[1] else None for c in cols]))
    lines.append(_row(CONTROL, [c.control if c.control[1] else None for c in cols]))
    return "\n".join(lines)


def _row(name: str, cells: list[tuple[int, int] | None]) -> str:
    name = name if len(name) <= TOPIC_WIDTH - 1 else name[: TOPIC_WIDTH - 2] + "…"
    return f"{name:<{TOPIC_WIDTH}}" + "".join(f"{cell_text(c):>10}" for c in cells)


def cell_text(cell: tuple[int, int] | None) -> str:
    """(3, 4) → '3/4 75%'; – when nothing was asked."""
    if cell is None or not cell[1]:
        return "–"
    correct, total = cell
    return f"{correct}/{total} {correct * 100 / total:.0f}%"


def card_text(student: str, display_name: str, active_version: int | None, cols: list[Column], overall: str) -> str:
    """The whole report card as plain text: who, what it speaks with, scores per topic, scores per version."""
    speaks = f"adapter v{active_version}" if active_version is not None else "its base weights"
    lines = [f"Report card: {display_name} ({student}), speaking with {speaks}", ""]
    has_overall = len(overall.splitlines()) > 1
    if not cols and not has_overall:
        lines.append("No evaluations yet: scores appear after the first training run quizzes the student.")
        return "\n".join(lines)
    if cols:
        lines += ["Held-out quiz by topic (* = live version):", topic_table(cols), ""]
    else:
        lines += ["No per-topic results are stored for this student's runs.", ""]
    if has_overall:
        lines += ["Scores by version:", overall]
    return "\n".join(lines).rstrip()


@dataclass
class ReportCard:
    """Everything a report card shows about one student."""

    student: str
    display_name: str
    active_version: int | None
    columns: list[Column]
    rows: list[dict[str, Any]]  # quiz.report.score_rows: one per evaluated version, for the table and chart

    @property
    def text(self) -> str:
        """The card as plain text (terminal, or a Discord code block)."""
        return card_text(self.student, self.display_name, self.active_version, self.columns, score_table(self.rows))


async def read_card(app: AppContext, student: str) -> ReportCard:
    """Gather a student's card from the store and the runs' evaluation files (off the event loop)."""
    from storage import quiz as gq
    from storage import training as tq

    adapters = await app.store.call(tq.adapters, student)
    runs = await app.store.call(tq.list_runs, student, 100_000)
    results = await asyncio.to_thread(load_eval_results, app.settings.home, sorted(r["id"] for r in runs))
    topics = await app.store.call(gq.item_topics, evaluated_item_ids(results))
    active = next((a["version"] for a in adapters if a["status"] == "active"), None)
    spec = app.models.specs.get(student)
    return ReportCard(student, spec.display_name if spec else student, active, columns(adapters, results, topics),
                      score_rows(adapters, runs))
