"""The CLI's subcommands: each turns arguments into calls on the engine, storage and models."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from app import AppContext, open_app
from backends.base import Usage
from cli import CliError
from lessons import prompts
from lessons.direction import Direction, lesson_direction
from lessons.engine import LessonRequest
from lessons.events import (
    LessonEvent,
    LessonFinished,
    LessonStarted,
    TokenStreamed,
    TurnFinished,
    TurnStarted,
)
from lessons.sources import read_source
from settings import Settings
from storage import lessons as q
from storage import votes as v
from trainer import dataset

MAX_QUESTION_CHARS = 1000
MAX_REPEAT = 16  # lessons `classroom lesson --repeat` runs at once


def ending(event: LessonFinished) -> str:
    """How a lesson ended, for the terminal: "finished (syllabus covered): 12 turns stored."."""
    why = f" ({event.reason})" if event.reason else ""
    return f"{event.status}{why}: {event.turns} turns stored."


class TerminalTranscript:
    """Prints a lesson as it streams: a header per turn, then its text line by line."""

    def __init__(self, app: AppContext, out: TextIO = sys.stdout):
        self.app = app
        self.out = out
        self.printed = ""

    async def __call__(self, event: LessonEvent) -> None:
        if isinstance(event, LessonStarted):
            titles = "; ".join(s["title"] for s in event.syllabus)
            self._write(f"Lesson {event.lesson_id}: {event.topic}\nSyllabus: {titles}\n")
        elif isinstance(event, TurnStarted):
            name = self.app.models.spec(event.speaker).display_name
            self._write(f"\n[{name} · {event.role}]\n")
            self.printed = ""
        elif isinstance(event, TokenStreamed):
            # print whole lines as they complete; the stored turn (guards applied) finishes it off
            complete = event.text[: event.text.rfind("\n") + 1]
            if len(complete) > len(self.printed):
                self._write(complete[len(self.printed) :])
                self.printed = complete
        elif isinstance(event, TurnFinished):
            content = event.turn["content"]
            if content.startswith(self.printed.strip()) and self.printed.strip():
                self._write(content[len(self.printed.strip()) :] + "\n")
            elif not self.printed.strip():
                self._write(content + "\n")
            else:
                self._write(f"\n(stored as: {content})\n")
        elif isinstance(event, LessonFinished):
            self._write(f"\nLesson {event.lesson_id} {ending(event)}\n")

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


class TurnLines:
    """Prints each turn of one of several lessons running together, whole, once it is stored."""

    def __init__(self, app: AppContext, lesson_id: int, out: TextIO = sys.stdout):
        self.app, self.lesson_id, self.out = app, lesson_id, out

    async def __call__(self, event: LessonEvent) -> None:
        if isinstance(event, TurnFinished):
            name = self.app.models.spec(event.turn["speaker"]).display_name
            self.out.write(f"[lesson {self.lesson_id}] {name} · {event.turn['role']}: {event.turn['content']}\n")
        elif isinstance(event, LessonFinished):
            self.out.write(f"[lesson {self.lesson_id}] {ending(event)}\n")
        self.out.flush()


async def cmd_lesson(settings: Settings, args: argparse.Namespace) -> int:
    """Run one lesson to its end, streaming it; print the lesson id (and a JSON summary with --json).
    With --repeat N, N lessons of it at once."""
    if not 1 <= args.repeat <= MAX_REPEAT:
        raise CliError(f"--repeat must be between 1 and {MAX_REPEAT} (got {args.repeat})")
    source_name = source_text = None
    if args.source:
        source_name, source_text = read_source(args.source, settings.lessons.max_source_bytes)
    teachers = args.teacher or [settings.default_teacher]
    students = args.student or [settings.default_student]
    turns = args.turns or settings.lessons.turn_limit(grounded=source_text is not None)
    async with open_app(settings) as app:
        for name in teachers + students:
            app.models.spec(name)
        direction = await asyncio.to_thread(lesson_direction, app.models, teachers, students,
                                            grounded=source_text is not None)
        print(f"direction: {direction.label} ({describe_sizes(direction)})", file=sys.stderr)
        for warning in direction.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if source_text is None and not direction.warnings and all(app.models.size_class(t) == "SLM" for t in teachers):
            print(
                f"note: teacher {', '.join(teachers)} is a small model and no --source was given; a small teacher "
                "is only useful when grounded in a document (pass --source notes.md) or use an API teacher.",
                file=sys.stderr,
            )
        request = LessonRequest(
            topic=args.topic, teachers=teachers, students=students, max_turns=turns,
            source_name=source_name, source_text=source_text,
            mode=args.mode or ("rotate" if len(teachers) > 1 else "single"), started_by="cli",
        )
        out = sys.stderr if args.json else sys.stdout
        if args.repeat > 1:
            return await _lessons_at_once(app, request, args.repeat, direction, args.json, out)
        lesson_id = await app.engine.open(request)
        outcome = await app.engine.run(lesson_id, TerminalTranscript(app, out))
        if args.json:
            print(json.dumps({"lesson_id": lesson_id, "turns": outcome.turns, "status": outcome.status, "reason": outcome.reason,
                              "direction": direction.label}))
        else:
            print(f"lesson id: {lesson_id}")
        return 0 if outcome.status in ("finished", "stopped") else 1


async def _lessons_at_once(app: AppContext, request: LessonRequest, n: int, direction: Direction, as_json: bool,
                           out: TextIO) -> int:
    """`n` lessons of one request, run together: a local model's worker batches their turns (three
    grounded lessons of the bundled model on 2 cores: 203 s, against 402 one after another, and
    word for word the same turns). Each samples with its own seed (its id), as when run one after
    another; ids are taken in order before any starts. Turns print whole as they are stored."""
    lesson_ids = [await app.engine.open(request) for _ in range(n)]
    outcomes = await asyncio.gather(*(app.engine.run(i, TurnLines(app, i, out)) for i in lesson_ids))
    if as_json:
        print(json.dumps({"lesson_ids": lesson_ids, "turns": [o.turns for o in outcomes],
                          "status": [o.status for o in outcomes], "reason": [o.reason for o in outcomes],
                          "direction": direction.label}))
    else:
        print(f"lesson ids: {' '.join(map(str, lesson_ids))}")
    return 0 if all(o.status in ("finished", "stopped") for o in outcomes) else 1


async def cmd_lessons(settings: Settings, args: argparse.Namespace) -> int:
    """A table of recent lessons."""
    async with open_app(settings) as app:
        rows = await app.store.call(q.list_lessons, limit=50)
    if not rows:
        print("no lessons yet: run `classroom lesson --topic \"...\"`")
        return 0
    print(f"{'id':>4}  {'status':<11} {'turns':>5} {'score':>5}  {'approved':<8}  topic")
    for r in rows:
        print(f"{r['id']:>4}  {r['status']:<11} {r['turn_count']:>5} {r['score']:>5}  {'yes' if r['approved'] else 'no':<8}  {r['topic']}")
    return 0


async def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    """One lesson: header, syllabus, and each turn with its votes."""
    async with open_app(settings) as app:
        lesson = await app.store.call(q.get_lesson, args.lesson_id)
        if lesson is None:
            raise CliError(f"no lesson with id {args.lesson_id}")
        turns = await app.store.call(q.turns, args.lesson_id)
        tallies = [await app.store.call(v.tally, "turn", t["id"]) for t in turns]
        score = await app.store.call(v.tally, "lesson", args.lesson_id)
        people = await app.store.call(q.participants, args.lesson_id)
    reason = f" ({lesson['reason']})" if lesson["reason"] else ""
    print(f"Lesson {lesson['id']}: {lesson['topic']}")
    print(f"status: {lesson['status']}{reason}; approved: {'yes' if lesson['approved'] else 'no'}; lesson votes +{score.up}/-{score.down}")
    print("teachers: " + ", ".join(p.model for p in people if p.role == "teacher")
          + "; students: " + ", ".join(p.model for p in people if p.role == "student"))
    for t, tally in zip(turns, tallies, strict=True):
        print(f"\n#{t['seq']} [{t['speaker']} · {t['role']} · {t['kind']}] (+{tally.up}/-{tally.down})\n{t['content']}")
    return 0


async def cmd_approve(settings: Settings, args: argparse.Namespace) -> int:
    """Record a curator decision on each lesson; ended lessons only."""
    decision = "reject" if args.reject else "approve"
    async with open_app(settings) as app:
        for lesson_id in args.lesson_ids:
            lesson = await app.store.call(q.get_lesson, lesson_id)
            if lesson is None:
                raise CliError(f"no lesson with id {lesson_id}")
            if lesson["status"] not in ("finished", "stopped"):
                raise CliError(f"lesson {lesson_id} is {lesson['status']}; only finished or stopped lessons can be approved")
            await app.store.call(v.record_decision, lesson_id, "cli", decision)
            print(f"lesson {lesson_id}: {decision}d")
    return 0


async def cmd_ballot(settings: Settings, args: argparse.Namespace) -> int:
    """Cast (or, repeated, take back) a ballot for the best panel answer; prints the question's standings."""
    async with open_app(settings) as app:
        turn = await app.store.call(q.get_turn, args.turn_id)
        if turn is None or turn["kind"] != "panel":
            raise CliError(f"turn {args.turn_id} is not a panel answer (`classroom show ID` lists them as 'panel')")
        choice = await app.store.call(v.cast_ballot, args.turn_id, args.member)
        counts = await app.store.call(v.ballot_counts, turn["lesson_id"])
        turns = await app.store.call(q.turns, turn["lesson_id"])
    print(f"ballot of {args.member}: " + (f"turn {choice}" if choice else "taken back"))
    for t in turns:
        if t["kind"] == "panel" and t["section"] == turn["section"]:
            print(f"  turn {t['id']} by {t['speaker']}: {counts.get(t['id'], 0)}")
    return 0


async def cmd_ask(settings: Settings, args: argparse.Namespace) -> int:
    """Ask a student, streaming its answer, exactly as a member's /ask does."""
    question = args.question.strip()
    if not question:
        raise CliError("the question is empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise CliError(f"the question is {len(question)} characters; keep it under {MAX_QUESTION_CHARS}")
    name = args.student or settings.default_student
    async with open_app(settings) as app:
        spec = app.models.spec(name)
        backend = await app.models.backend(name)
        messages = [*prompts.ask(spec.display_name), {"role": "user", "content": question}]
        async for delta in backend.stream(messages, app.models.params(name), Usage()):
            sys.stdout.write(delta)
            sys.stdout.flush()
        print()
    return 0


async def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    """Write lessons as chat JSONL for fine-tuning elsewhere. No Discord ids are included."""
    if args.format == "dpo":
        return await export_preferences(settings, args)
    convert = dataset.to_openai if args.format == "openai" else dataset.to_sharegpt
    async with open_app(settings) as app:
        if args.approved_only:
            ids = [r["id"] for r in await app.store.call(v.approved_lessons)]
        else:
            ids = [r["id"] for r in await app.store.call(q.list_lessons, limit=1_000_000)][::-1]
        blocked = [n for n, s in settings.models.items() if s.train_on_outputs is False]
        examples: list[dict[str, Any]] = []
        for lesson_id in ids:
            examples += await app.store.call(dataset.lesson_examples, lesson_id, no_train_teachers=blocked)
    out = Path(args.out)
    write_jsonl(out, [convert(ex) for ex in examples])
    print(f"wrote {len(examples)} examples from {len(ids)} lessons to {out}")
    return 0


async def export_preferences(settings: Settings, args: argparse.Namespace) -> int:
    """Write chosen/rejected pairs (panel ballots, 👍/👎 on alternative answers) for TRL's DPO trainer."""
    async with open_app(settings) as app:
        lessons = await app.store.call(v.approved_lessons) if args.approved_only else (
            await app.store.call(q.list_lessons, limit=1_000_000))[::-1]
        blocked = [n for n, s in settings.models.items() if s.train_on_outputs is False]
        pairs: list[dict[str, Any]] = []
        for lesson in lessons:
            pairs += await app.store.call(dataset.preference_examples, lesson["id"], no_train_teachers=blocked)
    out = Path(args.out)
    write_jsonl(out, [dataset.to_dpo(p) for p in pairs])
    print(f"wrote {len(pairs)} preference pairs from {len(lessons)} lessons to {out}")
    return 0


def describe_sizes(direction: Direction) -> str:
    """'prof: LLM; kid: SLM, 135M' for the CLI's direction line."""
    sizes = {**direction.teachers, **direction.students}
    return "; ".join(f"{name}: {size.label()}" for name, size in sizes.items())


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as JSON lines, creating the parent directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


async def cmd_models(settings: Settings, args: argparse.Namespace) -> int:
    """The configured models, their backend and role."""
    print(f"{'name':<16} {'role':<8} {'backend':<7} {'where':<40} persona")
    for name, spec in sorted(settings.models.items()):
        where = spec.model if spec.backend == "openai" else spec.path
        if spec.backend == "openai" and spec.base_url:
            where = f"{spec.model} @ {spec.base_url}"
        role = "student" if spec.trainable else "teacher"
        flag = "" if spec.train_on_outputs is not False else "  [outputs not used for training]"
        print(f"{name:<16} {role:<8} {spec.backend:<7} {str(where):<40} {spec.display_name}{flag}")
    print(f"\ndefault teacher: {settings.default_teacher}; default student: {settings.default_student}")
    return 0


async def cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    """Run the training job now; progress on stderr, and with --json the result object last on stdout."""
    from trainer import job

    def progress(event: dict[str, Any]) -> None:
        line = training_progress_line(event)
        if line:
            print(line, file=sys.stderr, flush=True)

    async with open_app(settings) as app:
        if args.student:
            results = [await job.train_student(app, args.student, "cli", progress)]
        else:
            results = await job.train_all(app, "cli", progress)
    if not results:
        raise CliError("no trainable students are configured")
    for r in results:
        if args.json:
            print(json.dumps(r.as_dict()))
        else:
            print(f"{r.student}: {r.status}" + (f" — {r.reason}" if r.reason else ""))
    return 0 if all(r.status != "failed" for r in results) else 1


def training_progress_line(event: dict[str, Any]) -> str | None:
    """One human line for a trainer progress event, or None for events not worth a line."""
    kind = event.get("event")
    if kind == "stage":
        return f"[{event['stage']}] {event.get('message', '')}"
    if kind == "start":
        return f"[train] {event.get('examples')} examples, {event.get('tokens')} tokens, {event.get('total_steps')} steps"
    if kind == "progress":
        return (f"[train] step {event.get('step')}/{event.get('total_steps')} loss {event.get('loss', 0):.3f} "
                f"{event.get('tokens_per_s', 0):.0f} tok/s ETA {event.get('eta_s', 0):.0f}s")
    return None


async def cmd_runs(settings: Settings, args: argparse.Namespace) -> int:
    """Recent training runs."""
    from storage import training as tq

    async with open_app(settings) as app:
        runs = await app.store.call(tq.list_runs, args.student, 20)
    if not runs:
        print("no training runs yet")
    for r in runs:
        scores = f" topic {_fmt(r['before'], 'topic')}→{_fmt(r['after'], 'topic')}" if r.get("after") else ""
        print(f"#{r['id']} {r['student']} {r['status']} {r['started_at'][:16]}{scores} {r['reason'] or ''}")
    return 0


async def cmd_versions(settings: Settings, args: argparse.Namespace) -> int:
    """A student's adapters, oldest first, with their held-out scores."""
    from storage import training as tq

    student = args.student or settings.default_student
    async with open_app(settings) as app:
        rows = await app.store.call(tq.adapters, student)
        shares = await app.store.call(tq.teacher_shares, student)
    if not rows:
        print(f"{student} has no adapters yet; it speaks with its base weights")
    for a in rows:
        ev = (a["metrics"] or {}).get("eval") or {}
        by = tq.taught_by(shares.get(a["run_id"]))
        print(f"v{a['version']:<3} {a['status']:<9} topic {_fmt(ev, 'topic')} control {_fmt(ev, 'control')}  "
              f"{a['created_at'][:16]}" + (f"  {by}" if by else ""))
    return 0


async def cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    """Switch back to an earlier adapter (or 'base'); a running bot picks it up before its next answer."""
    from trainer import job

    student = args.student or settings.default_student
    version = None if args.version == "base" else int(args.version.lstrip("v"))
    async with open_app(settings) as app:
        try:
            row = await job.rollback(app, student, version)
        except ValueError as e:
            raise CliError(str(e)) from None
    print(f"{student} now speaks with " + (f"adapter v{row['version']}" if row else "its base weights"))
    return 0


def _fmt(scores: dict[str, Any] | None, key: str) -> str:
    value = (scores or {}).get(key)
    return "–" if value is None else f"{value:.2f}"
