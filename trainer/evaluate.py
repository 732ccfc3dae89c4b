"""The evaluation gate's exam, run as a subprocess: `python -m trainer.evaluate --job EVAL.json`.

The job names a base model (and, when the bot serves it from a GGUF file's blocks, that file and
the kernels' directory, so the exam runs on the same kernels), a few variants (None for the base
weights, else an adapter directory), and quiz items. Every variant answers every item greedily, exactly as a
member's /ask would (same system prompt, no notes, no lesson context), and the answers
are graded against their references. One JSON object per line goes to stdout:
    {"event": "progress", "variant", "done", "total"}
    {"event": "done", "results": {variant: {"topic": acc, "control": acc, "answers": [...]}}}
    {"event": "error", "reason"}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from quiz.grading import grade_reference


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def load(base_model: str, variants: dict[str, str | None], device: str = "auto", gguf: str | None = None,
         kernel_dir: str | None = None) -> tuple[Any, Any, str]:
    """The base model with every variant's adapter loaded under the variant's name; with `gguf`, on
    that file's blocks as the bot serves it (fp32 if the kernels cannot run, said on stderr)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    dtype = torch.bfloat16 if dev == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype).to(dev)
    if gguf and kernel_dir and dev == "cpu":
        from backends.local.gguf_weights import use_gguf_blocks
        from backends.local.kernels import KernelsUnavailable

        try:
            print(use_gguf_blocks(model, gguf, Path(kernel_dir)), file=sys.stderr)
        except (KernelsUnavailable, ValueError, OSError) as e:
            print(f"GGUF blocks unavailable, evaluating in fp32: {e}", file=sys.stderr)
    first = True
    for name, path in variants.items():
        if path is None:
            continue
        if first:
            model = PeftModel.from_pretrained(model, path, adapter_name=name)
            first = False
        else:
            model.load_adapter(path, adapter_name=name)
    model.eval()
    return model, tokenizer, dev


def answer_all(model: Any, tokenizer: Any, dev: str, variant: str, adapter: str | None, system: str,
               questions: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers of one variant to every question, in batches."""
    import contextlib

    import torch
    from transformers import LogitsProcessorList

    from backends.local.generation import ReplyRepetitionPenalty

    answers: list[str] = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "system", "content": system}, {"role": "user", "content": q}],
                add_generation_prompt=True, tokenize=False,
            )
            for q in chunk
        ]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
        if adapter is None:
            ctx = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
        else:
            model.set_adapter(variant)
            ctx = contextlib.nullcontext()
        with ctx, torch.inference_mode():
            # The penalty the live student answers with: on the answer's own repeats, not the prompt's words.
            penalty = ReplyRepetitionPenalty(1.1, enc["input_ids"].shape[1])
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, logits_processor=LogitsProcessorList([penalty]))
        for row in out[:, enc["input_ids"].shape[1] :]:
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return answers


def evaluate(job: dict[str, Any]) -> dict[str, Any]:
    """Answer and grade every item with every variant; accuracy per split."""
    variants: dict[str, str | None] = job["variants"]
    items: list[dict[str, Any]] = job["items"]
    model, tokenizer, dev = load(job["base_model"], variants, job.get("device", "auto"), job.get("gguf"),
                                 job.get("kernel_dir"))
    results: dict[str, Any] = {}
    for variant, adapter in variants.items():
        started = time.monotonic()
        answers = answer_all(model, tokenizer, dev, variant, adapter, job["system"], [i["question"] for i in items],
                             job.get("max_new_tokens", 48), job.get("batch_size", 8))
        graded = []
        for item, answer in zip(items, answers, strict=True):
            grade = grade_reference(answer, item.get("answer"), item.get("keywords"))
            graded.append({"id": item.get("id"), "split": item.get("split", "heldout"), "question": item["question"],
                           "answer": answer, "correct": grade.correct, "grader": grade.grader})
        results[variant] = {
            "topic": _accuracy(graded, "heldout"),
            "control": _accuracy(graded, "control"),
            "answers": graded,
            "seconds": round(time.monotonic() - started, 2),
        }
        _emit({"event": "progress", "variant": variant, "done": len(items), "total": len(items)})
    return results


def _accuracy(graded: list[dict[str, Any]], split: str) -> float | None:
    scored = [g for g in graded if g["split"] == split and g["correct"] is not None]
    return round(sum(bool(g["correct"]) for g in scored) / len(scored), 4) if scored else None


def main(argv: list[str] | None = None) -> int:
    """Run an evaluation job file; exit 1 with an error event on failure."""
    p = argparse.ArgumentParser(prog="python -m trainer.evaluate")
    p.add_argument("--job", required=True)
    args = p.parse_args(argv)
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
