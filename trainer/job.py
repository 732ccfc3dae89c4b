"""The nightly job, also run by `/train now` and `classroom train`: approved dialogues → LoRA → gate → swap.

Design choice: each run *continues from the student's active adapter* on the newly approved
lessons, mixed with a replayed share of earlier approved data. Cost grows with what is new,
not with everything ever approved; the lineage (parent → child) stays meaningful; replay
keeps old lessons from being forgotten; and the evaluation gate refuses any adapter that
does worse than the one it would replace. The first run, with no active adapter, trains a
fresh one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.context import AppContext
from storage import quiz as quiz_store
from storage import training as tq
from storage import votes as v
from trainer import anchors, dataset, preference
from trainer.config import TrainConfig
from trainer.gate import ensure_quiz_items, evaluate, gate
from trainer.process import run_module

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], Awaitable[None] | None]


def train_config(cfg: Any) -> dict[str, Any]:
    """The training subprocess's `config` from the `[training]` settings: every knob of `TrainConfig`
    that the settings also have, by name, so a new setting cannot be left out of the job file."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(cfg, f.name)}


@dataclass
class TrainResult:
    """What `classroom train --json` prints and the Discord report shows."""

    run_id: int | None
    student: str
    status: str  # promoted | rejected | skipped | failed
    adapter: str | None = None
    version: int | None = None
    examples: int = 0  # from lessons and quiz corrections (replay included)
    anchors: int = 0  # the student's own answers to general questions (trainer/anchors.py)
    tokens: int = 0
    seconds: float = 0.0
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    reason: str | None = None
    adapter_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("run_id", "student", "status", "adapter", "examples", "anchors", "tokens",
                                              "seconds", "before", "after", "reason")} | {"version": self.version}


async def train_all(app: AppContext, trigger: str, progress: Progress | None = None) -> list[TrainResult]:
    """Train every trainable student in turn (the scheduled job)."""
    return [await train_student(app, s.name, trigger, progress) for s in app.settings.students()]


async def train_student(app: AppContext, student: str, trigger: str = "manual",
                        progress: Progress | None = None) -> TrainResult:
    """One full run for one student. Never raises for training failures: they come back as status 'failed'."""
    spec = app.models.spec(student)
    if not spec.trainable:
        return TrainResult(None, student, "failed", reason=f"model '{student}' is not trainable")
    from trainer import api_student  # it builds on this module

    runner = api_student.run if spec.backend == "openai" else _run  # an API student is fine-tuned by its provider
    # one run at a time: training saturates a small machine, and runs share the data home. The lock
    # check and its acquisition happen with no await between them, so two triggers can't both pass.
    if app.training_lock.locked():
        return TrainResult(None, student, "skipped", reason="a training run is already in progress")
    async with app.training_lock:
        if await app.store.call(tq.running_run, student):  # another process (the CLI, the bot) is training
            return TrainResult(None, student, "skipped", reason="a training run is already in progress")
        run_id = await app.store.call(tq.start_run, student, trigger)
        started = time.monotonic()
        try:
            result = await runner(app, student, run_id, _safe(progress))
        except asyncio.CancelledError:
            await asyncio.shield(app.store.call(tq.finish_run, run_id, "interrupted", reason="cancelled"))
            raise
        except Exception as e:  # record any bug as a failed run; the active adapter is untouched
            log.exception("training run %s for %s crashed", run_id, student)
            result = TrainResult(run_id, student, "failed", reason=f"internal error: {type(e).__name__}: {e}")
        result.seconds = round(time.monotonic() - started, 1)
        await app.store.call(
            tq.finish_run, run_id, result.status, adapter_id=result.adapter_id, examples=result.examples,
            tokens=result.tokens, seconds=result.seconds, before=result.before, after=result.after, reason=result.reason,
        )
        return result


@dataclass
class Material:
    """What a student's run can train on: approved lessons and approved quiz corrections, and which are new."""

    approved: list[dict[str, Any]]
    seen: set[int]  # lesson ids an earlier finished run trained on
    corrections: list[dict[str, Any]]
    seen_corrections: set[int]
    blocked: list[str]  # models whose outputs may not be trained on

    @property
    def new(self) -> list[dict[str, Any]]:
        return [lesson for lesson in self.approved if lesson["id"] not in self.seen]

    @property
    def new_corrections(self) -> list[dict[str, Any]]:
        return [c for c in self.corrections if c["correction_id"] not in self.seen_corrections]


async def gather_material(app: AppContext, student: str, progress: Progress) -> Material | None:
    """The student's approved material, or None (after no event) when nothing is new since its last run."""
    blocked = [n for n, s in app.settings.models.items() if s.train_on_outputs is False]
    material = Material(
        approved=await app.store.call(v.approved_lessons, student=student),
        seen=await app.store.call(tq.trained_lesson_ids, student),
        # a student's wrong quiz answers, corrected by the teacher and approved by a curator
        corrections=await app.store.call(quiz_store.approved_corrections, student, no_train_teachers=blocked),
        seen_corrections=await app.store.call(tq.trained_correction_ids, student),
        blocked=blocked,
    )
    if not material.new and not material.new_corrections:
        return None
    await progress({"event": "stage", "stage": "dataset",
                    "message": f"{len(material.new)} new approved lessons, {len(material.new_corrections)} new corrections"})
    return material


NOTHING_NEW = "no newly approved lessons or corrections since the last run"


async def _run(app: AppContext, student: str, run_id: int, progress: Progress) -> TrainResult:
    settings = app.settings
    material = await gather_material(app, student, progress)
    if material is None:
        return TrainResult(run_id, student, "skipped", reason=NOTHING_NEW)
    approved, seen, blocked = material.approved, material.seen, material.blocked
    new, corrections, seen_corrections = material.new, material.corrections, material.seen_corrections
    new_corrections = material.new_corrections
    name = app.models.spec(student).display_name

    async def examples_of(lessons: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for lesson in lessons:
            out += await app.store.call(dataset.lesson_examples, lesson["id"], student_name=name, no_train_teachers=blocked)
        return out

    fresh = await examples_of(new) + new_corrections
    old = await examples_of([lesson for lesson in approved if lesson["id"] in seen])
    old += [c for c in corrections if c["correction_id"] in seen_corrections]
    rng = random.Random(settings.training.seed + run_id)
    replay = rng.sample(old, min(len(old), math.ceil(settings.training.replay_share * len(fresh))))
    examples = dataset.dedupe(fresh + replay)
    trainable = [e for e in examples if any(m.get("train") for m in e["messages"] if m["role"] == "assistant")]
    if not trainable:
        return TrainResult(run_id, student, "skipped", reason="the new lessons have no trainable teacher turns")
    n_anchors = anchors.how_many(len(trainable), settings.training.anchor_share)
    anchored: list[dict[str, Any]] = []
    if n_anchors:
        await progress({"event": "stage", "stage": "anchors",
                        "message": f"the student answers {n_anchors} general questions to keep its general answers"})
        anchored = await anchors.anchor_examples(await app.models.backend(student), student, name,
                                                 app.models.params(student), n_anchors, seed=settings.training.seed + run_id)
    data_hash = dataset.data_hash(trainable + anchored)
    await app.store.call(_record_inputs, run_id, [lesson["id"] for lesson in new],
                         [c["correction_id"] for c in new_corrections], _teacher_shares(trainable), data_hash)

    await progress({"event": "stage", "stage": "quiz", "message": "writing held-out quiz items"})
    await ensure_quiz_items(app, new)

    base_dir = await resolve_base(app, student)
    active = await app.store.call(tq.active_adapter, student)
    version = await app.store.call(tq.next_version, student)
    out_dir = settings.adapters_dir / student / f"v{version}"
    run_dir = settings.home / "runs" / str(run_id)
    cfg = settings.training
    init_adapter = active["path"] if active else None
    # Only the new lessons' pairs: DPO's loss keeps widening the margin of a pair it has already
    # learnt, so replaying pairs night after night would push the same answers ever further.
    pairs = [] if cfg.preference == "off" else await app.store.call(
        preference.lesson_pairs, [lesson["id"] for lesson in new], student_name=name, no_train_teachers=blocked)
    step = preference.plan(cfg, pairs, run_dir / "preference.jsonl")
    if step.reason:
        await progress({"event": "stage", "stage": "preference", "message": f"preference step skipped: {step.reason}"})
    job = {
        "base_model": base_dir,
        "dataset": str(run_dir / "dataset.jsonl"),
        "output_dir": str(out_dir),
        "init_adapter": init_adapter,
        "config": train_config(cfg),
        "preference": step.options,
        "meta": {"student": student, "run_id": run_id, "version": version, "data_hash": data_hash,
                 "lessons": [lesson["id"] for lesson in new], "parent_version": active["version"] if active else None},
    }
    await asyncio.to_thread(_write_run_files, run_dir, [dataset.for_trainer(ex) for ex in trainable + anchored], job,
                            step.rows)
    await progress({"event": "stage", "stage": "train",
                    "message": f"training on {len(trainable)} examples and {len(anchored)} anchors"})
    trained = await run_module("trainer", ["--job", str(run_dir / "job.json")], progress)
    result = TrainResult(run_id, student, "failed", examples=len(trainable), anchors=len(anchored))
    start = next((e for e in trained.events if e.get("event") == "start"), {})
    result.tokens = int(start.get("tokens") or 0)
    if trained.returncode != 0 or trained.last.get("event") != "done":
        result.reason = f"training failed: {trained.failure_reason()}"
        return result

    metrics = trained.last.get("metrics", {}) | ({"preference": step.skipped} if step.skipped else {})
    candidate = await app.store.call(
        tq.add_adapter, student=student, path=str(out_dir), run_id=run_id,
        parent_id=active["id"] if active else None, data_hash=data_hash, metrics={"train": metrics}, version=version,
    )
    result.adapter_id = candidate["id"]
    result.adapter, result.version = str(out_dir), version

    await progress({"event": "stage", "stage": "evaluate", "message": "held-out quiz: before and after"})
    scores = await evaluate(app, student, base_dir, active["path"] if active else None, str(out_dir), run_dir)
    if scores is None:
        await app.store.call(tq.set_adapter_status, candidate["id"], "rejected")
        result.reason = "evaluation failed; kept the current adapter"
        return result
    result.before, result.after = scores["before"], scores["after"]
    promote = await decide(app, student, candidate, result)
    verdict = {"before": result.before, "after": result.after, "promoted": promote, "reason": result.reason}
    await asyncio.to_thread((out_dir / "evaluation.json").write_text, json.dumps(verdict, indent=2))
    await app.store.call(prune_adapters, student, cfg.keep_adapters)
    return result


async def decide(app: AppContext, student: str, candidate: dict[str, Any], result: TrainResult) -> bool:
    """The gate on `result.before`/`after`: activate the candidate (and make the live student use it)
    or reject it. Sets the result's status and reason; True when promoted."""
    promote, result.reason = gate(result.before or {}, result.after or {}, app.settings.training.control_margin)
    status = "candidate" if promote else "rejected"
    await app.store.call(tq.set_adapter_status, candidate["id"], status, {"eval": result.after})
    if promote:
        await app.store.call(tq.activate_adapter, candidate["id"])
        await sync_student(app, student)
    result.status = "promoted" if promote else "rejected"
    return promote


def _write_run_files(run_dir: Path, rows: list[dict[str, Any]], job: dict[str, Any],
                     pairs: list[dict[str, Any]]) -> None:
    """The run's dataset, preference pairs (if any) and job file; a missing parent adapter means starting fresh."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if job["init_adapter"] and not Path(job["init_adapter"]).is_dir():
        log.warning("active adapter %s is missing on disk; training a fresh adapter", job["init_adapter"])
        job["init_adapter"] = None
    with (run_dir / "dataset.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if pairs:
        with (run_dir / "preference.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs)
    (run_dir / "job.json").write_text(json.dumps(job, indent=2), encoding="utf-8")


async def resolve_base(app: AppContext, student: str) -> str:
    """The plain model directory of the student's base model (converting a GGUF once, off the loop)."""
    from backends.bundled import resolve_model_dir

    spec = app.models.spec(student)
    return str(await asyncio.to_thread(resolve_model_dir, spec.path or "", app.settings.cache_dir))


async def sync_student(app: AppContext, student: str) -> None:
    """Make the live student speak with its active adapter (no restart; in-flight requests finish first)."""
    if app.models.is_built(student):  # a CLI process has no live student to swap; the bot syncs on next use
        await app.models.backend(student)


async def rollback(app: AppContext, student: str, version: int | None) -> dict[str, Any] | None:
    """Switch the live adapter to an earlier version (None: the base model); returns the now-active row."""
    if version is None:
        await app.store.call(tq.deactivate, student)
    else:
        row = await app.store.call(tq.adapter_by_version, student, version)
        local = app.models.spec(student).backend == "local"  # an API student's adapter is a model id at its provider
        if row is None or row["status"] == "deleted" or (local and not await asyncio.to_thread(Path(row["path"]).is_dir)):
            raise ValueError(f"{student} has no adapter v{version} on disk")
        await app.store.call(tq.activate_adapter, row["id"])
    await sync_student(app, student)
    return await app.store.call(tq.active_adapter, student)


def prune_adapters(db: Any, student: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` adapter directories (never the active one); return what was removed."""
    removed = []
    rows = [a for a in tq.adapters(db, student) if a["status"] not in ("active", "deleted")]
    for row in rows[: max(0, len(rows) - keep)]:
        shutil.rmtree(row["path"], ignore_errors=True)
        tq.set_adapter_status(db, row["id"], "deleted")
        removed.append(row["path"])
    return removed


def _record_inputs(db: Any, run_id: int, lesson_ids: list[int], correction_ids: list[int],
                   sources: dict[str, float], data_hash: str) -> None:
    db.execute("UPDATE training_runs SET lesson_ids = ?, correction_ids = ?, sources = ?, data_hash = ? WHERE id = ?",
               [json.dumps(lesson_ids), json.dumps(correction_ids), json.dumps(sources), data_hash, run_id])


def _teacher_shares(examples: list[dict[str, Any]]) -> dict[str, float]:
    """Which teachers' turns the run trains on, as shares of trained characters (provenance)."""
    counts: dict[str, int] = {}
    for ex in examples:
        for m in ex["messages"]:
            if m["role"] == "assistant" and m.get("train"):
                counts[m.get("speaker", "?")] = counts.get(m.get("speaker", "?"), 0) + len(m["content"])
    total = sum(counts.values()) or 1
    return {k: round(c / total, 4) for k, c in sorted(counts.items())}


def _safe(progress: Progress | None) -> Progress:
    async def call(event: dict[str, Any]) -> None:
        if progress is None:
            return
        try:
            result = progress(event)
            if asyncio.iscoroutine(result):
                await result
        except Exception:  # a report message that fails to edit must not fail the run
            log.exception("training progress callback failed")

    return call
