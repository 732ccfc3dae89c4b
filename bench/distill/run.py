"""The distillation benchmark: does a student taught in lessons know what its teacher's notes said?

One command, offline, on the bundled models (SmolLM2-135M as grounded teacher and as student):

    .venv/bin/python bench/distill/run.py            # every pack, writes the table into bench/README.md
    .venv/bin/python bench/distill/run.py --quick    # CI-sized: one pack's first 2 sections, 6 questions, quick.toml
    .venv/bin/python bench/distill/run.py --scenario two-teachers    # each pack taught by its own teacher
    .venv/bin/python bench/distill/run.py --scenario larger-student  # the 135M teacher teaches a 177M student

Every step is a `classroom` command run in a fresh CLASSROOM_HOME, exactly as a user would:
  1. quiz the base student on each pack's paraphrased questions (no notes)   -> "base"
  2. quiz the teacher with the pack in its context                          -> "teacher with notes"
  3. run grounded lessons on each pack (`classroom lesson --source`)
  4. approve them (`classroom approve`)
  5. one night of training (`classroom train`)
  6. quiz the student again, without notes                                  -> "student after"
  7. a control set of general questions before and after                    -> "control"

The questions are written apart from the documents and phrased differently; the packs are fictional,
so no model knows them before the lessons.

Scenarios (issue 7's directions and panels), the same steps with other people in the lesson:
  packs           one bundled teacher, three lessons per pack (the default; the table in bench/README.md)
  two-teachers    two teachers, each grounded in a different pack, teach one rotate lesson: its
                  syllabus alternates the packs' sections, so each teacher teaches (and gets the
                  notes of) its own pack only, and the one student must learn from both
  larger-student  the bundled 135M teacher teaches a larger local student: the bundled model
                  depth up-scaled to 42 layers, 177M parameters (bench/distill/upscale.py)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PACKS = HERE / "packs"
CONTROL = REPO / "quiz" / "control.jsonl"
SCENARIOS = ("packs", "two-teachers", "larger-student")
README = REPO / "bench" / "README.md"
sys.path.insert(0, str(REPO))
from bench.distill.upscale import upscaled_model  # noqa: E402
from lessons.syllabus import Section, sections_from_source  # noqa: E402
from storage import open_db  # noqa: E402
from storage.training import list_runs  # noqa: E402

BEGIN, END = "<!-- distill:begin -->", "<!-- distill:end -->"


@dataclass
class Pack:
    """A fictional document and the questions about it."""

    name: str
    document: Path
    questions: Path
    title: str

    @classmethod
    def load(cls, name: str) -> Pack:
        """A pack of the default run (packs/NAME.md), or a check pack (packs/check/NAME.md): one
        kept out of every run the defaults were tuned on, to see whether they carry over."""
        folder = next((d for d in (PACKS, PACKS / "check") if (d / f"{name}.md").is_file()), PACKS)
        document = folder / f"{name}.md"
        questions = folder / f"{name}.questions.jsonl"
        if not document.is_file() or not questions.is_file():
            raise SystemExit(f"pack '{name}': need {document} and {questions}")
        first = document.read_text(encoding="utf-8").splitlines()[0]
        return cls(name, document, questions, first.lstrip("# ").strip() or name)


@dataclass
class PackResult:
    """One pack's row of the table."""

    pack: str
    questions: int
    base: int = 0
    teacher: int = 0
    after: int = 0
    lessons: list[int] = field(default_factory=list)
    turns: int = 0


class Runner:
    """Runs `classroom` commands against one data home and keeps a log of what it ran."""

    def __init__(self, home: Path, work: Path, verbose: bool, config: Path | None = None):
        self.home, self.work, self.verbose = home, work, verbose
        self.env = {**os.environ, "CLASSROOM_HOME": str(home), "TQDM_DISABLE": "1"}
        # `classroom` runs this checkout's code, not whichever one the environment has installed
        # (an editable install of another worktree would otherwise answer `-m cli.main`)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        self.env.pop("CLASSROOM_CONFIG", None)
        if config is not None:  # otherwise the defaults, exactly what a fresh install runs
            self.env["CLASSROOM_CONFIG"] = str(config.resolve())
        self.env.pop("OPENAI_API_KEY", None)  # the bench is offline: the bundled model teaches
        self.log: list[str] = []

    def run(self, *args: str) -> list[str]:
        """Run `classroom ARGS`; its stdout lines. Exits the bench on failure, with the command's stderr."""
        self.log.append("classroom " + " ".join(args))
        started = time.monotonic()
        print(f"$ classroom {' '.join(args)}", file=sys.stderr, flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", "cli.main", *args], cwd=self.work, env=self.env,
            stdout=subprocess.PIPE, stderr=None if self.verbose else subprocess.PIPE, text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"`classroom {' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr or ''}")
        print(f"  ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
        return proc.stdout.splitlines()

    def quiz(self, questions: Path, model: str, label: str, notes: Path | None = None) -> dict[str, Any]:
        """Quiz `model` on a questions file; the summary, with the graded rows kept under work/."""
        out = self.work / f"{label}.jsonl"
        extra = ["--notes", str(notes)] if notes else []
        lines = self.run("quiz", "--student", model, "--questions", str(questions), "--out", str(out), "--json", *extra)
        summary = json.loads(lines[-1])
        summary["rows"] = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines() if x.strip()]
        return summary


def first_sections(document: Path, sections: int | None, work: Path) -> Path:
    """The document cut to its first `sections` sections (the text under the title counts as the first one)."""
    if not sections:
        return document
    parts = re.split(r"(?m)^(?=## )", document.read_text(encoding="utf-8"))
    out = work / f"{document.stem}.first{sections}.md"
    out.write_text("".join(parts[:sections]), encoding="utf-8")
    return out


def subset(path: Path, limit: int | None, work: Path) -> Path:
    """The first `limit` questions of a file (all of them without a limit)."""
    if not limit:
        return path
    lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()][:limit]
    out = work / f"{path.stem}.first{limit}.jsonl"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


@dataclass
class Cast:
    """Who teaches whom in a scenario, and the config that defines them."""

    student: str
    teachers: dict[str, str]  # pack name -> the teacher grounded in it
    config: Path | None
    shared_lesson: bool = False  # one rotate lesson teaches every pack


def _model_block(name: str, path: str, display: str, trainable: bool, max_new_tokens: int) -> str:
    return (f'[models.{name}]\nbackend = "local"\npath = "{path}"\ntrainable = {str(trainable).lower()}\n'
            f'generation = {{ max_new_tokens = {max_new_tokens}, temperature = 0.0 }}\n'
            f'persona = {{ display_name = "{display}" }}\n')


def cast_for(scenario: str, packs: list[Pack], work: Path, config: Path | None, models_cache: Path) -> Cast:
    """The models of a scenario; every scenario but the default writes its own classroom.toml (with
    `config`'s settings appended: it may set [training] and the like, not [models] or [lessons])."""
    if scenario == "packs":
        return Cast("smol", {p.name: "smol-teacher" for p in packs}, config)
    bundled = "bundled:smollm2-135m-instruct"
    if scenario == "two-teachers":
        if len(packs) != 2:
            raise SystemExit("--scenario two-teachers needs exactly two packs (--packs a b)")
        student = "smol"
        teachers = {p.name: f"teacher-{p.name}" for p in packs}
        blocks = [_model_block(student, bundled, "Smol (student)", True, 160)]
        blocks += [_model_block(teachers[p.name], bundled, f"Professor {p.title}", False, 200) for p in packs]
    else:
        big = upscaled_model(models_cache / "smollm2-upscaled-42L", models_cache)
        student = "big"
        teachers = {p.name: "smol-teacher" for p in packs}
        blocks = [_model_block(student, str(big), "Big Smol (177M student)", True, 160),
                  _model_block("smol-teacher", bundled, "Professor Smol", False, 200)]
    text = "\n".join(blocks) + f'\n[lessons]\ndefault_student = "{student}"\n'
    if config is not None:
        text += "\n" + config.read_text(encoding="utf-8")
    path = work / "classroom.toml"
    path.write_text(text, encoding="utf-8")
    return Cast(student, teachers, path, shared_lesson=scenario == "two-teachers")


def alternating_syllabus(packs: list[Pack], documents: dict[str, Path], work: Path) -> Path:
    """One document whose sections alternate between the packs (A1, B1, A2, B2, …), so that in a
    rotate lesson with the teachers in pack order each teacher teaches its own pack's sections
    and sees only their notes. A longer pack's extra sections are merged into its last one."""
    parts = [sections_from_source(documents[p.name].read_text(encoding="utf-8")) for p in packs]
    n = min(len(x) for x in parts)
    parts = [x[: n - 1] + [Section(" and ".join(s.title for s in x[n - 1:]), "\n\n".join(s.text for s in x[n - 1:]))]
             for x in parts]
    # the pack's name in each heading: "The factory" alone doesn't say whose factory it is
    parts = [[s if s.title == p.title else Section(f"{p.title}: {s.title}", s.text) for s in x]
             for p, x in zip(packs, parts, strict=True)]
    order = [section for group in zip(*parts, strict=True) for section in group]
    out = work / "alternating.md"
    out.write_text("".join(f"## {s.title}\n\n{s.text}\n\n" for s in order), encoding="utf-8")
    parsed = [s.title for s in sections_from_source(out.read_text(encoding="utf-8"))]
    if parsed != [s.title for s in order]:  # merged or split sections would hand a teacher the other pack
        raise SystemExit(f"the alternating syllabus parses into other sections: {parsed}")
    return out


def teacher_shares(home: Path, student: str) -> dict[str, float]:
    """The student's last training run's teacher shares (provenance), as the bot records them."""
    db = open_db(home / "classroom.db")
    try:
        runs = list_runs(db, student, 1)
    finally:
        db.conn.close()
    return (runs[0].get("sources") if runs else None) or {}


def link_model_cache(home: Path) -> Path:
    """Point `home`'s model cache at this checkout's, where the bundled model is converted once per
    machine (as the tests do); returns that shared folder."""
    shared = REPO / ".cache" / "models"
    if not (home / "cache").exists():
        shared.mkdir(parents=True, exist_ok=True)
        (home / "cache").symlink_to(shared, target_is_directory=True)
    return shared


def bench(
    packs: list[Pack], lessons_per_pack: int, limit: int | None, home: Path, verbose: bool, config: Path | None = None,
    sections: int | None = None, quick: bool = False, scenario: str = "packs",
) -> dict[str, Any]:
    """Run the whole loop; the figures for the table. `quick` leaves out the teacher's ceiling and the
    control quizzes (the training gate still checks the control set before promoting)."""
    work = home / "bench"
    work.mkdir(parents=True, exist_ok=True)
    shared = link_model_cache(home)
    started = time.monotonic()
    cast = cast_for(scenario, packs, work, config, shared)
    runner = Runner(home, work, verbose, cast.config)
    student = cast.student
    results = {p.name: PackResult(p.name, 0) for p in packs}
    questions = {p.name: subset(p.questions, limit, work) for p in packs}
    documents = {p.name: first_sections(p.document, sections, work) for p in packs}

    for p in packs:
        base = runner.quiz(questions[p.name], student, f"{p.name}.base")
        results[p.name].questions, results[p.name].base = base["n"], base["correct"]
        if not quick:
            results[p.name].teacher = runner.quiz(questions[p.name], cast.teachers[p.name], f"{p.name}.teacher",
                                                  notes=documents[p.name])["correct"]
    control_before = None if quick else runner.quiz(CONTROL, student, "control.before")

    directions = set()
    if cast.shared_lesson:
        teachers = [a for p in packs for a in ("--teacher", cast.teachers[p.name])]
        out = json.loads(runner.run("lesson", "--topic", " and ".join(p.title for p in packs), "--source",
                                    str(alternating_syllabus(packs, documents, work)), *teachers, "--student", student,
                                    "--mode", "rotate", "--turns", "400", "--json")[-1])
        directions.add(out["direction"])
        for p in packs:  # one lesson teaches both: each row shows it, with all its turns
            results[p.name].lessons.append(out["lesson_id"])
            results[p.name].turns = out["turns"]
    else:
        for p in packs:  # a pack's lessons run at once: the model's worker batches their turns
            out = json.loads(runner.run("lesson", "--topic", p.title, "--source", str(documents[p.name]), "--teacher",
                                        cast.teachers[p.name], "--student", student, "--turns", "200",
                                        "--repeat", str(lessons_per_pack), "--json")[-1])
            directions.add(out["direction"])
            results[p.name].lessons += out.get("lesson_ids", [out.get("lesson_id")])
            results[p.name].turns += sum(out["turns"]) if isinstance(out["turns"], list) else out["turns"]
    runner.run("approve", *sorted({str(i) for r in results.values() for i in r.lessons}))
    train = json.loads(runner.run("train", "--student", student, "--json")[-1])

    for p in packs:
        results[p.name].after = runner.quiz(questions[p.name], student, f"{p.name}.after")["correct"]
    control = None
    if control_before is not None:
        control_after = runner.quiz(CONTROL, student, "control.after")
        control = {"n": control_before["n"], "before": control_before["correct"], "after": control_after["correct"]}
    return {
        "scenario": scenario,
        "student": student,
        "teachers": cast.teachers,
        "directions": sorted(directions),
        "packs": [vars(r) for r in results.values()],
        "control": control,
        "sections": sections,
        # before/after: the gate's held-out items for these lessons (topic) and its control set, base vs candidate
        "train": {k: train.get(k) for k in ("status", "examples", "anchors", "tokens", "seconds", "version", "reason",
                                            "before", "after")},
        "teacher_shares": teacher_shares(home, student),
        "wall_s": round(time.monotonic() - started),
        "lessons_per_pack": lessons_per_pack,
        "config": str(config) if config else "defaults",
        "commands": runner.log,
    }


def table(result: dict[str, Any]) -> str:
    """The Markdown table for bench/README.md."""
    c, t = result["control"], result["train"]
    rows = [
        "| pack | questions | base student | teacher with notes | student after one night | lessons | turns |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in result["packs"]:
        n = p["questions"]
        teacher = _pct(p["teacher"], n) if c is not None else "–"
        rows.append(f"| {p['pack']} | {n} | {_pct(p['base'], n)} | {teacher} | "
                    f"**{_pct(p['after'], n)}** | {len(p['lessons'])} | {p['turns']} |")
    rows.append("")
    control = f"Control ({c['n']} general questions): {c['before']} → {c['after']} correct. " if c else ""
    gate = ""
    if t.get("before") and t.get("after"):
        gate = (f" Gate, base → candidate: held-out topic {t['before'].get('topic')} → {t['after'].get('topic')}, "
                f"control {t['before'].get('control')} → {t['after'].get('control')}.")
    rows.append(f"{control}Training: {t['status']}, {t['examples']} examples, {t['tokens']} tokens, "
                f"{t['seconds']:.0f} s.{gate} "
                f"Whole run: {result['wall_s'] / 60:.1f} min.")
    if result.get("scenario", "packs") != "packs":
        shares = ", ".join(f"{k} {v:.0%}" for k, v in sorted(result["teacher_shares"].items())) or "none"
        rows.append(f"Scenario {result['scenario']}: student {result['student']}, teachers "
                    f"{', '.join(sorted(set(result['teachers'].values())))}, lesson header {', '.join(result['directions'])}; "
                    f"teacher shares of the training data: {shares}.")
    return "\n".join(rows)


def _pct(correct: int, n: int) -> str:
    return f"{correct}/{n} ({correct / n:.0%})" if n else "–"


def measured(argv: list[str]) -> str:
    """The line above the table: when, on what machine, with which command, at which commit."""
    import platform
    from datetime import date
    from importlib.metadata import version

    from backends.cpus import usable_cpus

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += " with uncommitted changes"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"Measured {date.today().isoformat()} on {usable_cpus()} CPU cores of {platform.machine()} "
            f"({memory:.0f} GB, torch {version('torch')}), command `bench/distill/run.py {' '.join(argv)}`, "
            f"at commit {commit}:")


def write_readme(text: str) -> None:
    """Replace the block between the distill markers in bench/README.md (append it if missing)."""
    readme = README.read_text(encoding="utf-8")
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in readme:
        readme = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, readme, flags=re.S)
    else:
        readme += f"\n{block}\n"
    README.write_text(readme, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packs", nargs="*", default=None, help="pack names under bench/distill/packs (default: all of them; "
                        "packs/check holds packs kept out of tuning, run by name: --packs orrin)")
    parser.add_argument("--lessons", type=int, default=None,
                        help="lessons per pack, run at once (default 3, 1 with --quick): each lesson samples with its "
                        "own seed, so a second and third ask some of their questions in other words")
    parser.add_argument("--questions", type=int, default=None, help="only the first N questions of each pack")
    parser.add_argument("--sections", type=int, default=None, help="teach only the first N sections of each pack")
    parser.add_argument("--quick", action="store_true",
                        help="CI-sized: one pack's first 2 sections, its first 6 questions, no ceiling or control quizzes, "
                        "training sized to that (quick.toml)")
    parser.add_argument("--scenario", choices=SCENARIOS, default="packs",
                        help="who teaches whom (see above; default: one bundled teacher per pack)")
    parser.add_argument("--home", type=Path, default=None, help="data home to use (default: a fresh temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the full result here")
    parser.add_argument("--write-readme", action="store_true", help="put the table into bench/README.md")
    parser.add_argument("--config", type=Path, default=None, help="a classroom.toml to run with (default: none, the defaults)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the commands' own progress")
    args = parser.parse_args()

    names = args.packs or (["vellmoor"] if args.quick else sorted(p.stem for p in PACKS.glob("*.md")))
    packs = [Pack.load(n) for n in names]
    limit = args.questions or (6 if args.quick else None)
    sections = args.sections or (2 if args.quick else None)
    config = args.config or (HERE / "quick.toml" if args.quick else None)
    with tempfile.TemporaryDirectory(prefix="distill-") as tmp:
        home = args.home or Path(tmp)
        lessons = args.lessons or (1 if args.quick else 3)
        result = bench(packs, lessons, limit, home, args.verbose, config, sections, args.quick, args.scenario)
    text = table(result)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    if args.write_readme:
        if args.scenario != "packs":
            raise SystemExit("--write-readme is for the default scenario's table; copy a scenario's table by hand")
        write_readme(f"{measured(sys.argv[1:])}\n\n{text}")


if __name__ == "__main__":
    main()
