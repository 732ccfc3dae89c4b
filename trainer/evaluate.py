"""The evaluation gate's exam, run as a subprocess: `python -m trainer.evaluate --job EVAL.json`.

The job names a base model (and, when the bot serves it from a GGUF file's blocks, that file and
the kernels' directory), a few variants (None for the base weights, else an adapter directory),
and quiz items. Every variant answers every item greedily, exactly as a member's /ask would: same
system prompt, no notes, no lesson context, and the same serving code (backends/local: one
LocalModelHost with every variant's adapter loaded, its batching decode loop, the same kernels).
All the answers share that loop: rows of every variant decode together, and a short answer leaves
its row to the next question instead of waiting for the longest in a fixed batch. The answers
are graded against their references. One JSON object per line goes to stdout:
    {"event": "progress", "variant", "done", "total"}
    {"event": "done", "results": {variant: {"topic": acc, "control": acc, "answers": [...]}}}
    {"event": "error", "reason"}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from quiz.grading import grade_reference

MAX_BATCH = 16
"""Rows decoding at once. Every question of every variant is queued at once, so this is what the
decode loop runs with; on 2 CPU cores 16 rows of ~20-token answers beat 8 (the products are
compute-bound either way, the per-step overhead is paid half as often)."""


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def answer_all(job: dict[str, Any]) -> dict[str, list[str]]:
    """Every variant's greedy answer to every item's question, by variant; served as the bot serves the student."""
    from backends.base import GenParams
    from backends.local.batching import GenRequest
    from backends.local.host import LocalModelHost

    variants: dict[str, str | None] = job["variants"]
    questions = [i["question"] for i in job["items"]]
    gguf, kernel_dir = job.get("gguf"), job.get("kernel_dir")
    host = LocalModelHost(job["base_model"], device=job.get("device", "auto"), dtype="gguf" if gguf and kernel_dir else "auto",
                          max_batch=job.get("batch_size", MAX_BATCH), gguf=gguf,
                          kernel_dir=Path(kernel_dir) if kernel_dir else None)
    # The penalty the live student answers with (on the answer's own repeats), greedy.
    params = GenParams(max_new_tokens=job.get("max_new_tokens", 48), temperature=0.0, repetition_penalty=1.1)
    try:
        await host.ensure_loaded()
        for name, path in variants.items():
            if path is not None:
                await host.set_adapter(name, path)
        done = dict.fromkeys(variants, 0)

        async def one(variant: str, question: str) -> str:
            messages = [{"role": "system", "content": job["system"]}, {"role": "user", "content": question}]
            request = GenRequest(messages, params, variant if variants[variant] is not None else None, threading.Event())
            answer = await asyncio.wrap_future(host.generate(request))
            done[variant] += 1
            _emit({"event": "progress", "variant": variant, "done": done[variant], "total": len(questions)})
            return answer.completion.text

        answers = await asyncio.gather(*(one(v, q) for v in variants for q in questions))
    finally:
        await host.aclose()
    n = len(questions)
    return {v: answers[k * n : (k + 1) * n] for k, v in enumerate(variants)}


def evaluate(job: dict[str, Any]) -> dict[str, Any]:
    """Answer and grade every item with every variant; accuracy per split."""
    items: list[dict[str, Any]] = job["items"]
    started = time.monotonic()
    answers = asyncio.run(answer_all(job))
    results: dict[str, Any] = {}
    for variant, theirs in answers.items():
        graded = []
        for item, answer in zip(items, theirs, strict=True):
            grade = grade_reference(answer, item.get("answer"), item.get("keywords"))
            graded.append({"id": item.get("id"), "split": item.get("split", "heldout"), "question": item["question"],
                           "answer": answer, "correct": grade.correct, "grader": grade.grader})
        results[variant] = {
            "topic": _accuracy(graded, "heldout"),
            "control": _accuracy(graded, "control"),
            "answers": graded,
            "seconds": round(time.monotonic() - started, 2),  # the variants answer together: the exam's wall time
        }
    return results


def _accuracy(graded: list[dict[str, Any]], split: str) -> float | None:
    scored = [g for g in graded if g["split"] == split and g["correct"] is not None]
    return round(sum(bool(g["correct"]) for g in scored) / len(scored), 4) if scored else None


def main(argv: list[str] | None = None) -> int:
    """Run an evaluation job file; exit 1 with an error event on failure."""
    p = argparse.ArgumentParser(prog="python -m trainer.evaluate")
    p.add_argument("--job", required=True)
    args = p.parse_args(argv)
    # The host says on stderr how it serves the model (GGUF blocks, or why fp32).
    served = logging.getLogger("backends.local")
    served.setLevel(logging.INFO)
    served.addHandler(logging.StreamHandler(sys.stderr))
    try:
        job = json.loads(Path(args.job).read_text(encoding="utf-8"))
        results = evaluate(job)
    except Exception as e:  # the parent reads the reason from this line; the traceback goes to stderr
        import traceback

        traceback.print_exc(file=sys.stderr)
        _emit({"event": "error", "reason": f"{type(e).__name__}: {e}"})
        return 1
    _emit({"event": "done", "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
