"""The distillation benchmark's parts: its knowledge packs, each a fictional document with at least
15 questions whose answers are in it, asked in other words than its sentences (issue 5), and the
runner, whose `classroom` commands must run the benchmark's own checkout."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from quiz.grading import normalise
from tests.conftest import REPO

PACKS = REPO / "bench" / "distill" / "packs"
ALL = sorted(PACKS.glob("*.md")) + sorted((PACKS / "check").glob("*.md"))


def test_there_are_two_packs_for_the_run_and_one_kept_out_of_tuning():
    assert len([p for p in ALL if p.parent == PACKS]) >= 2
    assert len([p for p in ALL if p.parent.name == "check"]) >= 1


@pytest.mark.parametrize("document", ALL, ids=lambda p: p.stem)
def test_every_question_is_answered_by_its_document_in_other_words(document: Path):
    lines = document.with_suffix(".questions.jsonl").read_text(encoding="utf-8").splitlines()
    questions = [json.loads(line) for line in lines if line.strip()]
    text = document.read_text(encoding="utf-8")
    words = set(normalise(text))
    notes = " ".join(re.findall(r"\w+", text.lower()))
    assert len(questions) >= 15
    for q in questions:
        assert q["keywords"], q
        for keyword in q["keywords"]:
            assert any(set(normalise(alt)) <= words for alt in keyword.split("|")), f"{keyword!r} is not in {document.name}"
        # a question is not a sentence of the notes turned round: it may share a name or a noun
        # phrase ("the oldest building in Vellmoor", five words), not six words in a row
        said = re.findall(r"\w+", q["question"].lower())
        assert not any(" ".join(said[i:i + 6]) in notes for i in range(len(said) - 5)), q["question"]


def test_the_runners_commands_import_the_benchmarks_checkout(tmp_path: Path, monkeypatch):
    """A bench run from a worktree of another commit must measure that commit's code, not the
    code an editable install points at (every `classroom` command runs in the data home)."""
    monkeypatch.syspath_prepend(str(REPO / "bench" / "distill"))
    import run

    other = tmp_path / "elsewhere"
    (other / "cli").mkdir(parents=True)
    (other / "cli" / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(other))  # another checkout's code, found before ours unless the runner says
    runner = run.Runner(tmp_path / "home", tmp_path, verbose=False)
    found = subprocess.run([sys.executable, "-c", "import cli; print(cli.__file__)"], cwd=tmp_path, env=runner.env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(found).resolve() == (REPO / "cli" / "__init__.py").resolve()
