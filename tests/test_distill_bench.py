"""The distillation benchmark, CI-sized: one pack, a few questions, one lesson, one night of training.

It runs bench/distill/run.py --quick exactly as a developer would (every step a real `classroom`
command on the real bundled SmolLM2-135M, in a fresh data home) and checks that the trained student
knows more of the pack than the base student, on held-out questions it was never trained on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.mark.timeout(1500)
def test_the_trained_student_scores_higher_on_the_packs_held_out_questions(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "distill" / "run.py"), "--quick", "--home", str(tmp_path / "home"),
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=1450,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    pack, train = result["packs"][0], result["train"]
    assert pack["turns"] >= 3 and pack["questions"] >= 5 and train["examples"] >= 3
    # The trained student scores higher on the pack's held-out questions (written by the teacher from the
    # lessons, never trained on) than the base student did. Promotion also needs the control set to hold;
    # today it often doesn't (see bench/README.md), and then the live student stays as it was.
    assert train["status"] in ("promoted", "rejected"), train
    assert train["after"]["topic"] > train["before"]["topic"], train
    if train["status"] == "promoted":
        assert pack["after"] >= pack["base"], pack
    else:
        assert pack["after"] == pack["base"] and "control" in train["reason"], (pack, train)
    assert "| vellmoor |" in run.stdout  # the table a developer reads
