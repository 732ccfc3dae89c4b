"""The gate: held-out quiz items for approved lessons, and the before/after quiz that decides a promotion.

Every lesson's teacher writes a few held-out questions about it once it is approved; they are
never trained on. A candidate adapter is quizzed on them and on a fixed control set of general
questions, beside the adapter it would replace, in a subprocess (trainer/evaluate.py), and is
promoted only if its topic score holds and its control score falls by no more than a margin.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from app.context import AppContext
from lessons import prompts
from quiz import items as quiz_items
from storage import fetch_all
from trainer.process import run_module

log = logging.getLogger(__name__)


def gate(before: dict[str, Any], after: dict[str, Any], margin: float) -> tuple[bool, str]:
    """Promote only if the topic score did not drop and the control score fell by at most `margin`."""
    tb, ta = before.get("topic"), after.get("topic")
    cb, ca = before.get("control"), after.get("control")
    if tb is not None and ta is not None and ta < tb:
        return False, f"held-out score dropped from {tb:.2f} to {ta:.2f}"
    if cb is not None and ca is not None and ca < cb - margin - 1e-9:
        return False, f"control score fell from {cb:.2f} to {ca:.2f} (allowed margin {margin:.2f})"
    if tb is None or ta is None:
        return True, "no held-out quiz items yet; control score held"
    return True, f"held-out score {tb:.2f} → {ta:.2f}; control {cb:.2f} → {ca:.2f}"


async def evaluate(app: AppContext, student: str, base_dir: str, before: str | None, after: str | None,
                   run_dir: Path) -> dict[str, Any] | None:
    """Quiz the active adapter (or base) and the candidate in a subprocess; None if it failed."""
    items = await app.store.call(heldout_items, student)
    items += [{**c, "id": f"control-{i}", "split": "control"} for i, c in enumerate(quiz_items.control_set())]
    job = {"base_model": base_dir, "variants": {"before": before, "after": after},
           "system": prompts.ask(app.models.spec(student).display_name)[0]["content"], "items": items,
           **serving_blocks(app.models.spec(student), app.settings.cache_dir)}
    await asyncio.to_thread((run_dir / "eval.json").write_text, json.dumps(job, indent=2), "utf-8")
    run = await run_module("trainer.evaluate", ["--job", str(run_dir / "eval.json")])
    if run.returncode != 0 or run.last.get("event") != "done":
        log.error("evaluation for %s failed: %s", student, run.failure_reason())
        return None
    results = run.last["results"]
    await asyncio.to_thread((run_dir / "eval_results.json").write_text, json.dumps(results, indent=2), "utf-8")
    return {k: {"topic": r["topic"], "control": r["control"]} for k, r in results.items()}


def serving_blocks(spec: Any, cache_dir: Path) -> dict[str, str]:
    """The GGUF file and kernel directory when the live student is served from GGUF blocks (as the
    bundled one is on an AVX2 CPU), so the exam answers on the same weights and kernels; else {}."""
    from backends.local.pool import blocks_source, kernel_dir

    gguf = blocks_source(spec)
    return {"gguf": gguf, "kernel_dir": str(kernel_dir(cache_dir))} if gguf else {}


def heldout_items(db: Any, student: str) -> list[dict[str, Any]]:
    """Held-out items of every approved lesson the student took part in."""
    return fetch_all(
        db,
        "SELECT q.id, q.question, q.answer, q.keywords, 'heldout' AS split FROM quiz_items q JOIN lessons l ON l.id = q.lesson_id"
        " WHERE q.split = 'heldout' AND l.approved = 1 AND EXISTS (SELECT 1 FROM lesson_participants p"
        " WHERE p.lesson_id = l.id AND p.model = ? AND p.role = 'student') ORDER BY q.id",
        [student],
    )


async def ensure_quiz_items(app: AppContext, lessons: list[dict[str, Any]]) -> None:
    """Have each lesson's teacher write held-out items for lessons that have none yet."""
    from storage import lessons as lq

    for lesson in lessons:
        have = await app.store.call(lambda db, i=lesson["id"]: db.execute(
            "SELECT COUNT(*) FROM quiz_items WHERE lesson_id = ? AND split = 'heldout'", [i]).fetchone()[0])
        if have:
            continue
        people = await app.store.call(lq.participants, lesson["id"])
        teacher = next((p.model for p in people if p.role == "teacher"), None)
        if teacher is None or teacher not in app.models.specs:
            continue
        full = await app.store.call(lq.get_lesson, lesson["id"])
        material = await app.store.call(lesson_material, full)
        try:
            written = await quiz_items.write_items(await app.models.backend(teacher), app.models.spec(teacher).display_name,
                                                   lesson["topic"], material)
        except Exception as e:  # no quiz items means the gate relies on the control set; say so, go on
            log.warning("teacher %s could not write quiz items for lesson %s: %s", teacher, lesson["id"], e)
            continue
        await app.store.call(store_items, lesson["id"], lesson["topic"], written)


def lesson_material(db: Any, lesson: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, notes) per section: the source's text when grounded, else what the teacher said."""
    from storage import lessons as lq

    taught = {t["section"] for t in lq.turns(db, lesson["id"])}
    out = []
    for i, section in enumerate(lesson["syllabus"]):
        if i not in taught:
            continue
        notes = section.get("text") or "\n".join(
            t["content"] for t in lq.turns(db, lesson["id"]) if t["section"] == i and t["role"] == "teacher")
        out.append((section["title"], notes))
    return out


def store_items(db: Any, lesson_id: int, topic: str, written: list[dict[str, str]]) -> None:
    """Save teacher-written items as held-out for this lesson."""
    from storage import now

    for item in written:
        db.execute("INSERT INTO quiz_items (lesson_id, topic, question, answer, split, created_at)"
                   " VALUES (?, ?, ?, ?, 'heldout', ?)", [lesson_id, topic, item["question"], item["answer"], now()])
