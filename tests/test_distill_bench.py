"""The distillation benchmark, CI-sized: one pack, a few questions, one lesson, one night of training.

It runs bench/distill/run.py --quick exactly as a developer would (every step a real `classroom`
command on the real bundled SmolLM2-135M, in a fresh data home) and checks that the student
knows more of the pack after training than before.
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
def test_the_student_scores_higher_on_the_pack_after_one_night(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "distill" / "run.py"), "--quick", "--home", str(tmp_path / "home"),
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=1450,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    pack = result["packs"][0]
    assert result["train"]["status"] == "promoted", result["train"]
    assert pack["turns"] >= 3 and pack["questions"] >= 5
    assert pack["after"] > pack["base"], pack
    assert "| vellmoor |" in run.stdout  # the table a developer reads
