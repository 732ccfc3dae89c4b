"""The trained student served by llama.cpp (`classroom gguf`) against the same student in our host.

A student's adapter is written as a GGUF LoRA file and applied by llama.cpp to the bundled
4-bit GGUF; our host runs the same base (dequantised to fp32) with the peft adapter. Both
answer the same quiz as /ask does (the student's system prompt, greedy, 64 tokens, repetition
penalty 1.1), the reference grader marks both, and the script prints, per question set and for
the base and the student on each side: accuracy, how often the two sides agree on a question's
verdict, and decode speed. llama.cpp's numbers are not bit-equal to fp32 (it multiplies with
8-bit activations), so "judged equivalent" here means: the same verdicts, question by question.

    .venv/bin/python bench/distill/run.py --quick --home /tmp/distill      # a classroom home with a trained student
    .venv/bin/python bench/llamacpp_student.py --home /tmp/distill --threads 1

Questions: the held-out items stored in the home's database, the pack questions given with
--questions (JSONL with "question" and "answer" or "keywords"), and the general control set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backends.base import GenParams, Message, Usage  # noqa: E402
from backends.bundled import bundled_gguf_path, resolve_model_dir  # noqa: E402
from backends.local import LocalBackend, LocalModelHost  # noqa: E402
from lessons.guards import clean_reply  # noqa: E402
from quiz.answering import ANSWER_TOKENS, ask_messages  # noqa: E402
from quiz.grading import grade_reference  # noqa: E402
from settings import BUNDLED_MODEL, ModelSpec  # noqa: E402
from storage import open_db  # noqa: E402
from trainer.gguf_lora import base_config, write_gguf_lora  # noqa: E402

NAME = "Student"


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def question_sets(home: Path, student: str, extra: list[Path]) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """The student's newest adapter directory, and the question sets to put to both sides."""
    db = open_db(home / "classroom.db")
    try:
        rows = [dict(r) for r in db.query("SELECT path, version, status FROM adapters WHERE student = ? AND status != 'deleted'"
                                          " ORDER BY version DESC", [student])]
        heldout = [dict(r) for r in db.query("SELECT question, answer, keywords FROM quiz_items WHERE split = 'heldout'")]
    finally:
        db.conn.close()
    if not rows:
        raise SystemExit(f"{home} holds no adapter of {student}: run bench/distill/run.py first")
    for item in heldout:
        item["keywords"] = json.loads(item["keywords"]) if item["keywords"] else None
    sets = {"held-out (stored quiz items)": heldout}
    for path in extra:
        sets[path.stem] = load_jsonl(path)
    sets["control (general)"] = load_jsonl(REPO / "quiz" / "control.jsonl")
    print(f"adapter: v{rows[0]['version']} ({rows[0]['status']}) at {rows[0]['path']}", file=sys.stderr)
    return rows[0]["path"], sets


def llamacpp_answer(llm: Any, question: str) -> tuple[str, int]:
    llm.reset()
    out = llm.create_chat_completion(ask_messages(NAME, question), max_tokens=ANSWER_TOKENS, temperature=0.0, top_k=1,
                                     repeat_penalty=1.1)
    text = out["choices"][0]["message"]["content"] or ""
    return text, int(out["usage"]["completion_tokens"])


async def ours_answer(backend: LocalBackend, question: str) -> tuple[str, int]:
    usage = Usage()
    messages: list[Message] = ask_messages(NAME, question)
    text = await backend.chat(messages, GenParams(max_new_tokens=ANSWER_TOKENS, temperature=0.0), usage)
    return text, usage.completion_tokens


def grade(text: str, item: dict[str, Any]) -> bool:
    answer = clean_reply(text, own_labels=[NAME, "assistant"], other_labels=["user"]) or text.strip()
    return bool(grade_reference(answer, item.get("answer"), item.get("keywords")).correct)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from llama_cpp import Llama

    adapter, sets = question_sets(args.home, args.student, args.questions)
    model_dir = resolve_model_dir(BUNDLED_MODEL, REPO / ".cache" / "models")
    tmp = tempfile.TemporaryDirectory()
    lora = write_gguf_lora(adapter, base_config(model_dir), Path(tmp.name) / "student.lora.gguf", name="student")
    gguf = str(bundled_gguf_path())
    llama = {
        "base": Llama(gguf, n_ctx=2048, n_threads=args.threads, seed=0, verbose=False),
        "student": Llama(gguf, n_ctx=2048, n_threads=args.threads, seed=0, verbose=False, lora_path=str(lora)),
    }
    host = LocalModelHost(model_dir, device="cpu", max_batch=1)
    spec = ModelSpec(name="smol", backend="local", path=model_dir, device="cpu")
    ours = {"base": LocalBackend(spec, host), "student": LocalBackend(spec, host, adapter_name="student")}
    await host.set_adapter("student", adapter)
    result: dict[str, Any] = {"threads": args.threads, "sets": {}}
    speed: dict[str, list[float]] = {}
    for set_name, items in sets.items():
        row: dict[str, Any] = {"n": len(items)}
        for who in ("base", "student"):
            verdicts: dict[str, list[bool]] = {}
            for side in ("ours", "llamacpp"):
                marks, tokens, started = [], 0, time.perf_counter()
                for item in items:
                    if side == "ours":
                        text, n = await ours_answer(ours[who], item["question"])
                    else:
                        text, n = await asyncio.to_thread(llamacpp_answer, llama[who], item["question"])
                    marks.append(grade(text, item))
                    tokens += n
                speed.setdefault(f"{side}_{who}", []).append(tokens / (time.perf_counter() - started))
                verdicts[side] = marks
                row[f"{who}_{side}"] = sum(marks)
            row[f"{who}_same_verdicts"] = sum(a == b for a, b in zip(verdicts["ours"], verdicts["llamacpp"], strict=True))
        result["sets"][set_name] = row
        print(set_name, row, file=sys.stderr)
    result["tokens_per_s"] = {k: round(sum(v) / len(v), 1) for k, v in speed.items()}
    await host.aclose()
    tmp.cleanup()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True, help="a classroom home whose student has an adapter")
    parser.add_argument("--student", default="smol")
    parser.add_argument("--questions", type=Path, action="append", default=[], help="more quiz questions (JSONL)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    text = json.dumps(asyncio.run(run(args)), indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
