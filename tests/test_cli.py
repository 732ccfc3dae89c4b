"""The CLI end to end, as a subprocess, against a local OpenAI-compatible server (the only fake: a remote edge)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakeopenai import refused_url

REPO = Path(__file__).resolve().parent.parent


def teacher_reply(messages):
    last = messages[-1]["content"]
    if "key points" in last:
        return "1. What a share is\n2. How prices move\n3. Dividends"
    if last.startswith("Teach me this point:"):
        return f"Lesson on {last.split(':', 1)[1].splitlines()[0].strip()}. What do you think?"
    if messages[0]["content"].startswith("You are Kid"):
        return "I think a share is a small piece of a company."
    return "Right. A share is a piece of a company."


def write_config(tmp_path: Path, base_url: str, **extra: str) -> Path:
    cfg = tmp_path / "classroom.toml"
    cfg.write_text(
        f"""
home = "{tmp_path / 'home'}"

[lessons]
default_teacher = "prof"
default_student = "kid"

[models.prof]
backend = "openai"
model = "fake-teacher"
base_url = "{base_url}"
max_retries = 1
timeout = 5
persona.display_name = "Prof"

[models.kid]
backend = "openai"
model = "fake-student"
base_url = "{base_url}"
max_retries = 1
timeout = 5
persona.display_name = "Kid"
""" + "".join(extra.values()),
        encoding="utf-8",
    )
    return cfg


def classroom(cfg: Path | None, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: val for k, val in os.environ.items() if k not in ("OPENAI_API_KEY", "CLASSROOM_HOME", "CLASSROOM_CONFIG")}
    pre = ["--config", str(cfg)] if cfg else []
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *pre, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
    )


@pytest.fixture
def cfg(tmp_path, fake_openai):
    fake_openai.set_reply(teacher_reply)
    return write_config(tmp_path, fake_openai.base_url)


def test_lesson_streams_stores_and_exports(cfg, tmp_path):
    run = classroom(cfg, "lesson", "--topic", "what a stock is", "--turns", "6", "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["turns"] == 6 and summary["status"] == "finished"
    assert "[Prof · teacher]" in run.stderr and "[Kid · student]" in run.stderr  # transcript streamed
    lesson_id = summary["lesson_id"]

    listing = classroom(cfg, "lessons")
    assert "what a stock is" in listing.stdout and "finished" in listing.stdout

    shown = classroom(cfg, "show", str(lesson_id))
    assert "Lesson on What a share is" in shown.stdout and "#6" in shown.stdout

    out = tmp_path / "export.jsonl"
    assert classroom(cfg, "export", "--approved-only", "--out", str(out)).stdout.startswith("wrote 0 examples")
    assert classroom(cfg, "approve", str(lesson_id)).returncode == 0
    assert classroom(cfg, "export", "--approved-only", "--format", "openai", "--out", str(out)).returncode == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # two sections taught in six turns: each dialogue, then its check question asked directly
    assert len(rows) == 4
    qa = rows[1]["messages"]
    # asked alone, a question that doesn't name the lesson's topic is asked about it
    assert [m["role"] for m in qa] == ["system", "user", "assistant"]
    assert qa[1]["content"] == "About what a stock is: What do you think?"
    roles = [m["role"] for m in rows[0]["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert rows[0]["messages"][2]["content"] == "Lesson on What a share is. What do you think?"
    assert rows[0]["messages"][3]["content"] == "I think a share is a small piece of a company."

    share = tmp_path / "share.jsonl"
    classroom(cfg, "export", "--format", "sharegpt", "--out", str(share))
    first = json.loads(share.read_text().splitlines()[0])
    assert [c["from"] for c in first["conversations"]][:3] == ["system", "human", "gpt"]


def test_repeat_runs_several_lessons_of_one_request_at_once(cfg):
    run = classroom(cfg, "lesson", "--topic", "what a stock is", "--turns", "6", "--repeat", "3", "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["lesson_ids"] == [1, 2, 3] and summary["turns"] == [6, 6, 6]
    assert summary["status"] == ["finished"] * 3
    lines = [line for line in run.stderr.splitlines() if line.startswith("[lesson ")]
    assert "[lesson 1] Prof · teacher: Lesson on What a share is. What do you think?" in lines
    # together, not one after another: the others' turns come before the first lesson's last one
    firsts = [lines.index(next(x for x in lines if x.startswith(f"[lesson {i}]"))) for i in (1, 2, 3)]
    last_of_first = max(i for i, x in enumerate(lines) if x.startswith("[lesson 1]") and "·" in x)
    assert max(firsts) < last_of_first
    assert sum(" finished" in x and x.endswith(": 6 turns stored.") for x in lines) == 3
    listing = classroom(cfg, "lessons").stdout
    assert listing.count("what a stock is") == 3


@pytest.mark.parametrize("n", ["0", "17"])
def test_repeat_out_of_range_is_one_clear_line_and_stores_nothing(cfg, n):
    run = classroom(cfg, "lesson", "--topic", "x", "--repeat", n)
    assert run.returncode != 0
    assert run.stderr.strip() == f"error: --repeat must be between 1 and 16 (got {n})"
    assert "no lessons yet" in classroom(cfg, "lessons").stdout


def test_ask_streams_the_students_answer(cfg):
    run = classroom(cfg, "ask", "What is a share?")
    assert run.returncode == 0, run.stderr
    assert "a share is a small piece of a company" in run.stdout


def test_unknown_model_is_one_clear_line_listing_known_models(cfg):
    run = classroom(cfg, "lesson", "--topic", "x", "--teacher", "nobody")
    assert run.returncode != 0
    assert run.stderr.strip() == "error: unknown model 'nobody' (known: kid, prof)"


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [(b"\x00\x01binary", "notes.txt", "looks binary"), (b"x" * 1_000_001, "big.md", "the limit is 1,000,000 bytes"),
     (b"\xff\xfe\xfa", "latin.txt", "not UTF-8"), (b"hello", "slides.pdf", "not a text or markdown file")],
)
def test_bad_source_files_are_refused(cfg, tmp_path, content, name, message):
    src = tmp_path / name
    src.write_bytes(content)
    run = classroom(cfg, "lesson", "--topic", "x", "--source", str(src))
    assert run.returncode != 0 and message in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert "no lessons yet" in classroom(cfg, "lessons").stdout  # nothing half-stored


def test_endpoint_down_fails_the_lesson_with_a_reason(tmp_path):
    cfg = write_config(tmp_path, refused_url())
    run = classroom(cfg, "lesson", "--topic", "stocks", "--turns", "3", "--json")
    assert run.returncode == 1
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["status"] == "failed"
    assert "unreachable" in summary["reason"] and "prof" in summary["reason"]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[models.x]\nbackend = "magic"\n', "models.x.backend"),
        ('[models.x]\nbackend = "openai"\n', "needs `model`"),
        ('[models.x]\nbackend = "local"\npath = "p"\n[lessons]\ndefault_teacher = "x"\ndefault_student = "ghost"\n',
         "lessons.default_student: model 'ghost' is not defined"),
        ('[lessons]\ndefault_student = "x"\n[models.x]\nbackend = "openai"\nmodel = "m"\napi_key_env = "NO_SUCH_KEY_VAR"\n',
         "models.x.api_key_env: environment variable NO_SUCH_KEY_VAR is not set"),
        ("this is = = not toml", "not valid TOML"),
    ],
)
def test_bad_config_is_reported_naming_file_and_key(tmp_path, toml, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    run = classroom(cfg, "models")
    assert run.returncode == 2
    assert str(cfg) in run.stderr and message in run.stderr


def test_approving_an_unknown_lesson_fails_cleanly(cfg):
    run = classroom(cfg, "approve", "99")
    assert run.returncode == 2 and run.stderr.strip() == "error: no lesson with id 99"
