"""A run for a student hosted behind an OpenAI-compatible fine-tuning API (files + fine_tuning jobs).

The approved data is uploaded as chat JSONL (teacher turns weighted 1, the rest 0), a job is
created on the configured base model and polled until it ends; the fine-tuned model then sits
the same held-out quiz and control set as a local candidate, answering through the project's
OpenAI backend exactly as /ask would, and the student switches to it only if the gate passes.

Design choices:
- Each job trains the *base* model on every approved example, not the active fine-tuned model
  on the new ones: not every provider can continue from a fine-tuned model, and a job from the
  base with everything approved gives the same student whichever provider runs it.
- No anchors (trainer/anchors.py): they keep a 135M local model from forgetting; an API model is
  larger, each anchor would be a paid request, and the gate's control set still checks for drift.
- The "adapter" of an API student is its fine-tuned model id, kept in the adapters table's `path`,
  so the registry, /student versions and rollback treat it like a local adapter. Nothing is on
  disk to prune; rejected fine-tuned models stay at the provider until deleted there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import openai

from app.context import AppContext
from backends.base import BackendError
from backends.openai_backend import DEFAULT_ENDPOINT, NO_KEY_PLACEHOLDER, OpenAIBackend
from quiz import items as quiz_items
from quiz.answering import answer_question
from quiz.grading import grade_reference
from settings import FineTune, ModelSpec
from storage import training as tq
from trainer import dataset
from trainer.gate import ensure_quiz_items, heldout_items
from trainer.job import (
    NOTHING_NEW,
    Progress,
    TrainResult,
    _record_inputs,
    _teacher_shares,
    decide,
    gather_material,
)

log = logging.getLogger(__name__)

ENDED = ("succeeded", "failed", "cancelled")
"""Fine-tuning job statuses after which nothing changes."""
GATE_CONCURRENCY = 4
"""Quiz questions asked of one model at once during the gate: quick, without tripping rate limits."""


class FineTuneFailed(Exception):
    """The provider refused the upload or the job, or the job failed; the message says why."""


async def run(app: AppContext, student: str, run_id: int, progress: Progress) -> TrainResult:
    """One run for an API student, called by `job.train_student` (which holds the lock and records the run)."""
    spec = app.models.spec(student)
    ft = spec.fine_tune or FineTune()
    material = await gather_material(app, student, progress)
    if material is None:
        return TrainResult(run_id, student, "skipped", reason=NOTHING_NEW)
    approved, blocked, corrections = material.approved, material.blocked, material.corrections
    new, new_corrections = material.new, material.new_corrections
    examples: list[dict[str, Any]] = []
    for lesson in approved:
        examples += await app.store.call(dataset.lesson_examples, lesson["id"], student_name=spec.display_name,
                                         no_train_teachers=blocked)
    examples = dataset.dedupe(examples + corrections)
    trainable = [e for e in examples if any(m.get("train") for m in e["messages"] if m["role"] == "assistant")]
    if not trainable:
        return TrainResult(run_id, student, "skipped", reason="the approved lessons have no trainable teacher turns")
    data_hash = dataset.data_hash(trainable)
    await app.store.call(_record_inputs, run_id, [lesson["id"] for lesson in new],
                         [c["correction_id"] for c in new_corrections], _teacher_shares(trainable), data_hash)
    await progress({"event": "stage", "stage": "quiz", "message": "writing held-out quiz items"})
    await ensure_quiz_items(app, new)

    result = TrainResult(run_id, student, "failed", examples=len(trainable))
    run_dir = app.settings.home / "runs" / str(run_id)
    jsonl = "".join(json.dumps(dataset.to_openai(e), ensure_ascii=False) + "\n" for e in trainable).encode()
    await asyncio.to_thread(_write, run_dir / "dataset.jsonl", jsonl)
    base = ft.base_model or spec.model
    assert base is not None  # an openai spec always has `model`
    client = _client(spec, app.models.env)
    try:
        job = await _fine_tune(client, ft, base, jsonl, run_id, progress)
    except FineTuneFailed as e:
        result.reason = f"fine-tuning failed: {e}"
        return result
    finally:
        await client.close()
    model_id: str = job.fine_tuned_model
    result.tokens = int(getattr(job, "trained_tokens", None) or 0)
    await asyncio.to_thread(_write, run_dir / "job.json", json.dumps(
        {"base_model": base, "job": job.id, "fine_tuned_model": model_id, "suffix": ft.suffix,
         "hyperparameters": ft.hyperparameters, "data_hash": data_hash}, indent=2).encode())
    candidate = await app.store.call(
        tq.add_adapter, student=student, path=model_id, run_id=run_id, parent_id=None, data_hash=data_hash,
        metrics={"train": {"job": job.id, "base_model": base, "trained_tokens": result.tokens}},
    )
    result.adapter_id, result.adapter, result.version = candidate["id"], model_id, candidate["version"]
    return await _gate(app, student, spec, candidate, result, run_dir, progress)


async def _gate(app: AppContext, student: str, spec: ModelSpec, candidate: dict[str, Any], result: TrainResult,
                run_dir: Path, progress: Progress) -> TrainResult:
    """Quiz the live model and the fine-tuned one; promote the latter only if the gate passes."""
    await progress({"event": "stage", "stage": "evaluate", "message": "held-out quiz: before and after"})
    active = await app.store.call(tq.active_adapter, student)
    before = active["path"] if active else spec.model
    assert before is not None
    try:
        results = {name: await evaluate(app, student, model) for name, model in (("before", before),
                                                                                  ("after", candidate["path"]))}
    except BackendError as e:
        log.error("evaluation of %s for %s failed: %s", candidate["path"], student, e)
        await app.store.call(tq.set_adapter_status, candidate["id"], "rejected")
        result.reason = f"evaluation failed ({e}); kept the current model"
        return result
    await asyncio.to_thread(_write, run_dir / "eval_results.json", json.dumps(results, indent=2).encode())
    result.before = {k: results["before"][k] for k in ("topic", "control")}
    result.after = {k: results["after"][k] for k in ("topic", "control")}
    await decide(app, student, candidate, result)
    return result


async def evaluate(app: AppContext, student: str, model_id: str) -> dict[str, Any]:
    """`model_id` answers the student's held-out items and the control set as /ask would; graded answers
    and accuracy per split. Raises BackendError when the model can't answer."""
    spec = app.models.spec(student)
    items = await app.store.call(heldout_items, student)
    items += [{**c, "id": f"control-{i}", "split": "control"} for i, c in enumerate(quiz_items.control_set())]
    backend = OpenAIBackend(spec.model_copy(update={"model": model_id}), env=app.models.env)
    params = app.models.params(student)
    slots = asyncio.Semaphore(GATE_CONCURRENCY)

    async def answer(question: str) -> str:
        async with slots:
            return await answer_question(backend, student, spec.display_name, question, params)

    try:
        answers = await asyncio.gather(*(answer(item["question"]) for item in items))
    finally:
        await backend.aclose()
    graded = []
    for item, text in zip(items, answers, strict=True):
        grade = grade_reference(text, item.get("answer"), item.get("keywords"))
        graded.append({"id": item["id"], "split": item["split"], "question": item["question"], "answer": text,
                       "correct": grade.correct, "grader": grade.grader})
    return {"model": model_id, "topic": _accuracy(graded, "heldout"), "control": _accuracy(graded, "control"),
            "answers": graded}


def _accuracy(graded: list[dict[str, Any]], split: str) -> float | None:
    scored = [g for g in graded if g["split"] == split and g["correct"] is not None]
    return round(sum(bool(g["correct"]) for g in scored) / len(scored), 4) if scored else None


def _client(spec: ModelSpec, env: Mapping[str, str]) -> openai.AsyncOpenAI:
    """A client for the student's endpoint; its own retries cover a dropped upload or poll."""
    key = (env.get(spec.api_key_env) or "").strip()
    return openai.AsyncOpenAI(base_url=spec.base_url or DEFAULT_ENDPOINT, api_key=key or NO_KEY_PLACEHOLDER,
                              timeout=spec.timeout, max_retries=spec.max_retries)


async def _fine_tune(client: openai.AsyncOpenAI, ft: FineTune, base: str, jsonl: bytes, run_id: int,
                     progress: Progress) -> Any:
    """Upload, create the job and wait for it; the succeeded job, or FineTuneFailed."""
    try:
        await progress({"event": "stage", "stage": "upload", "message": f"uploading {len(jsonl)} bytes of chat JSONL"})
        file = await client.files.create(file=(f"classroom-run-{run_id}.jsonl", jsonl, "application/jsonl"),
                                         purpose="fine-tune")
        extra: dict[str, Any] = {"suffix": ft.suffix} if ft.suffix else {}
        if ft.hyperparameters:
            extra["hyperparameters"] = ft.hyperparameters
        job = await client.fine_tuning.jobs.create(model=base, training_file=file.id, **extra)
    except openai.OpenAIError as e:
        raise FineTuneFailed(_why(e, client.api_key)) from None
    await progress({"event": "stage", "stage": "train", "message": f"fine-tuning job {job.id} on {base}: {job.status}"})
    try:
        job = await _wait(client, job, ft, progress)
    except asyncio.CancelledError:  # the bot is stopping: don't leave a paid job running unwatched
        await asyncio.shield(_cancel(client, job.id))
        raise
    if job.status != "succeeded":
        error = getattr(job, "error", None)
        detail = getattr(error, "message", None) or "no reason given"
        raise FineTuneFailed(f"job {job.id} {job.status}: {detail}")
    if not job.fine_tuned_model:
        raise FineTuneFailed(f"job {job.id} succeeded but names no fine-tuned model")
    return job


async def _wait(client: openai.AsyncOpenAI, job: Any, ft: FineTune, progress: Progress) -> Any:
    """Poll until the job ends; a job past `max_hours` is cancelled. Brief outages are waited out."""
    deadline = time.monotonic() + ft.max_hours * 3600
    status = job.status
    while job.status not in ENDED:
        if time.monotonic() > deadline:
            await _cancel(client, job.id)
            raise FineTuneFailed(f"job {job.id} did not finish within {ft.max_hours:g} h; cancelled it")
        await asyncio.sleep(ft.poll_seconds)
        try:
            job = await client.fine_tuning.jobs.retrieve(job.id)
        except (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError) as e:
            log.warning("polling fine-tuning job %s: %s; trying again", job.id, _why(e, client.api_key))
            continue
        except openai.OpenAIError as e:
            raise FineTuneFailed(f"job {job.id}: {_why(e, client.api_key)}") from None
        if job.status != status:
            status = job.status
            await progress({"event": "stage", "stage": "train", "message": f"fine-tuning job {job.id}: {status}"})
    return job


async def _cancel(client: openai.AsyncOpenAI, job_id: str) -> None:
    try:
        await client.fine_tuning.jobs.cancel(job_id)
    except openai.OpenAIError as e:
        log.error("could not cancel fine-tuning job %s; cancel it at the provider: %s", job_id, _why(e, client.api_key))


def _why(e: openai.OpenAIError, key: str) -> str:
    """A failure in a few words, with the key scrubbed: a 401 answer echoes part of it."""
    if isinstance(e, openai.APIStatusError) and e.status_code in (401, 403):
        return f"API key rejected (HTTP {e.status_code})"
    if isinstance(e, openai.APIStatusError):
        body = e.body.get("error", e.body) if isinstance(e.body, dict) else e.body
        message = body.get("message") if isinstance(body, dict) else None
        text = f"HTTP {e.status_code}: {message or e.message}"
    else:
        text = f"{type(e).__name__}: {e}"
    if len(key) >= 4:
        text = text.replace(key, "***")
    return text[:300]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
