"""`classroom quiz` (outside evaluation from a questions file) and `classroom report` (report cards).

The parser is built on every CLI start, so the heavy imports (models, matplotlib) wait for the command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli import CliError
from settings import Settings

if TYPE_CHECKING:
    from quiz.report_card import ReportCard


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `quiz` and `report` on the CLI's subcommand parser."""
    s = sub.add_parser("quiz", help="quiz a student on questions from a JSONL file, greedy, as /ask answers")
    s.add_argument("--student", default=None, help="the student to quiz (default: the default student)")
    s.add_argument("--questions", required=True, metavar="FILE.jsonl",
                   help='one {"question": ...} per line, optionally with "answer" or "keywords"')
    s.add_argument("--out", default=None, metavar="FILE.jsonl", help="write the graded answers here (default: stdout)")
    s.add_argument("--notes", default=None, metavar="FILE",
                   help="answer with this document in context, as a grounded teacher would (the ceiling a "
                   "student taught from it can aim for); without it, no notes, exactly as /ask")
    s.add_argument("--json", action="store_true", help="print a JSON summary last")
    s = sub.add_parser("report", help="report cards: held-out scores per topic and per adapter version")
    s.add_argument("--student", action="append", default=[],
                   help="only this student; repeat to compare students on one table (default: every trainable "
                   "student, a card each)")
    s.add_argument("--chart", default=None, metavar="FILE.png", help="also write the score chart as a PNG")


async def cmd_quiz(settings: Settings, args: argparse.Namespace) -> int:
    """Answer every question with the live student (its active adapter), grade, write rows and a summary."""
    from app import open_app
    from quiz import cli_eval
    from quiz.answering import answer_question
    from storage import training as tq

    try:
        items = await asyncio.to_thread(cli_eval.read_questions, Path(args.questions))
    except cli_eval.QuestionsError as e:
        raise CliError(str(e)) from None
    notes = None
    if args.notes:
        from lessons.sources import read_source  # its SourceError is one clear line in cli.main

        _, notes = read_source(args.notes, settings.lessons.max_source_bytes)
    name = args.student or settings.default_student
    async with open_app(settings) as app:
        spec = app.models.spec(name)
        backend = await app.models.backend(name)
        params = app.models.params(name)
        active = await app.store.call(tq.active_adapter, name) if spec.backend == "local" and spec.trainable else None

        async def ask(question: str) -> str:
            return await answer_question(backend, name, spec.display_name, question, params, notes=notes)

        rows = await cli_eval.answer_all(items, ask)
    adapter = {"version": active["version"], "path": active["path"]} if active else None
    result = cli_eval.summary(name, adapter, rows)
    if args.out:
        await asyncio.to_thread(_write_rows, Path(args.out), rows)
    else:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    if args.json:
        print(json.dumps(result))
    else:
        accuracy = "no references to grade against" if result["accuracy"] is None else f"{result['accuracy']:.0%}"
        where = f"; answers in {args.out}" if args.out else ""
        print(f"{name}: {result['correct']} correct of {result['n']} questions ({accuracy}){where}",
              file=sys.stdout if args.out else sys.stderr)
    return 0


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}") from None


async def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    """Print each student's report card, or with several --student one table comparing them; --chart writes the chart."""
    from app import open_app
    from quiz.report_card import read_card

    named = list(dict.fromkeys(args.student))  # a name given twice is compared once
    students = named or [s.name for s in settings.students()] or [settings.default_student]
    async with open_app(settings) as app:
        for name in students:
            app.models.spec(name)  # an unknown name is one clear error line
        cards = [await read_card(app, name) for name in students]
    if len(named) > 1:
        await _print_comparison(cards, args.chart)
        return 0
    await _print_cards(cards, args.chart)
    return 0


async def _print_comparison(cards: list[ReportCard], chart: str | None) -> None:
    from quiz import compare

    print(compare.compare_text(cards))
    if chart:
        png = await asyncio.to_thread(compare.chart_png, cards)
        await _write_chart(Path(chart), png)
        print(f"chart: {chart}", file=sys.stderr)


async def _print_cards(cards: list[ReportCard], chart: str | None) -> None:
    from quiz.report import score_chart

    charts: list[str] = []
    for i, card in enumerate(cards):
        print(("\n" if i else "") + card.text)
        if chart:
            path = _chart_path(Path(chart), card.student, several=len(cards) > 1)
            await _write_chart(path, await asyncio.to_thread(score_chart, card.display_name, card.rows))
            charts.append(str(path))
    for written in charts:
        print(f"chart: {written}", file=sys.stderr)


async def _write_chart(path: Path, png: bytes) -> None:
    try:
        await asyncio.to_thread(_write_bytes, path, png)
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}") from None


def _chart_path(path: Path, student: str, *, several: bool) -> Path:
    """FILE.png for one student; FILE-<student>.png each when the report covers several."""
    return path.with_name(f"{path.stem}-{student}{path.suffix or '.png'}") if several else path


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
