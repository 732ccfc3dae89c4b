"""Do 8-bit activations answer as fp32 activations do? The same quizzes, answer by answer.

The GGUF block kernels can round each row's activations to 8 bits (kernels.INT8_SWITCH,
CLASSROOM_INT8), which changes the sums and so, now and then, a greedy answer. This runs
`classroom quiz` on a fixed set of questions twice in one data home, with CLASSROOM_INT8=0 and
with CLASSROOM_INT8=1, one after the other, and compares: how many answers are word for word the
same, and how many the quiz's grader marks correct on each side.

The quizzes: the bundled student on the control set (general questions); the bundled teacher on
each default pack's questions with the pack as notes (the grounded answers lessons are made of);
and, with --trained, the student of the home's last training on each pack's questions, without
notes (point --home at a finished `bench/distill/run.py --home` run).

    .venv/bin/python bench/answers.py                              # a fresh home
    .venv/bin/python bench/answers.py --home /tmp/d8 --trained     # a distill run's home and student
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backends.local.kernels import INT8_SWITCH  # noqa: E402
from bench.distill.run import CONTROL, PACKS, Pack, Runner, link_model_cache  # noqa: E402


def quizzes(trained: bool) -> list[tuple[str, Path, str, Path | None]]:
    """(label, questions, model, notes) for each quiz."""
    packs = [Pack.load(p.stem) for p in sorted(PACKS.glob("*.md"))]
    out: list[tuple[str, Path, str, Path | None]] = [("control, student", CONTROL, "smol", None)]
    out += [(f"{p.name}, teacher with notes", p.questions, "smol-teacher", p.document) for p in packs]
    if trained:
        out += [(f"{p.name}, trained student", p.questions, "smol", None) for p in packs]
    return out


def compare(home: Path, trained: bool, verbose: bool) -> list[dict[str, object]]:
    work = home / "answers"
    work.mkdir(parents=True, exist_ok=True)
    link_model_cache(home)
    sides = {}
    for name, value in (("fp32", "0"), ("int8", "1")):
        runner = Runner(home, work, verbose)
        runner.env[INT8_SWITCH] = value
        sides[name] = runner
    results = []
    for label, questions, model, notes in quizzes(trained):
        slug = label.replace(", ", ".").replace(" ", "-")
        got = {name: r.quiz(questions, model, f"{slug}.{name}", notes)["rows"] for name, r in sides.items()}
        pairs = list(zip(got["fp32"], got["int8"], strict=True))
        results.append({
            "quiz": label, "questions": len(pairs),
            "same": sum(a["answer"] == b["answer"] for a, b in pairs),
            "fp32": sum(bool(a["correct"]) for a, _ in pairs), "int8": sum(bool(b["correct"]) for _, b in pairs),
            "differ": [{"question": a["question"], "fp32": a["answer"], "int8": b["answer"]}
                       for a, b in pairs if a["answer"] != b["answer"]],
        })
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=None, help="data home (default: a fresh temporary one)")
    parser.add_argument("--trained", action="store_true", help="also quiz the home's trained student on each pack")
    parser.add_argument("--json", type=Path, default=None, help="also write the results, with every differing answer")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="answers-") as tmp:
        results = compare(args.home or Path(tmp), args.trained, args.verbose)
    print("| quiz | questions | same answers | correct, fp32 activations | correct, 8-bit activations |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['quiz']} | {r['questions']} | {r['same']} | {r['fp32']} | {r['int8']} |")
    total = {k: sum(int(r[k]) for r in results) for k in ("questions", "same", "fp32", "int8")}  # type: ignore[call-overload]
    print(f"| all | {total['questions']} | {total['same']} | {total['fp32']} | {total['int8']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
