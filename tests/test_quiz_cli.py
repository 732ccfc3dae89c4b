"""`classroom quiz` and `classroom report` end to end, as subprocesses, against a local OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage import open_db
from storage.db import now

REPO = Path(__file__).resolve().parent.parent
SYSTEM = "You are Kid. Answer briefly and accurately."


def student_reply(messages):
    question = messages[-1]["content"]
    if "capital of France" in question:
        return "Kid: Paris, of course."
    if "2 + 2" in question:
        return "It is five."
    return "I don't know."


def write_config(tmp_path: Path, base_url: str) -> Path:
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
max_retries = 0
timeout = 5
persona.display_name = "Prof"

[models.kid]
backend = "openai"
model = "fake-student"
base_url = "{base_url}"
max_retries = 0
timeout = 5
persona.display_name = "Kid"
generation.temperature = 0.8

[models.smol]
backend = "local"
path = "never-loaded"
trainable = true
persona.display_name = "Smol"
""",
        encoding="utf-8",
    )
    return cfg


def classroom(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: val for k, val in os.environ.items() if k not in ("OPENAI_API_KEY", "CLASSROOM_HOME", "CLASSROOM_CONFIG")}
    return subprocess.run([sys.executable, "-m", "cli.main", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env=env)


@pytest.fixture
def cfg(tmp_path, fake_openai):
    fake_openai.set_reply(student_reply)
    return write_config(tmp_path, fake_openai.base_url)


def questions_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


QUESTIONS = [
    json.dumps({"question": "What is the capital of France?", "answer": "Paris"}),
    "",
    json.dumps({"question": "What is 2 + 2?", "keywords": ["4|four"]}),
    json.dumps({"question": "Who are you?"}),
]


def test_quiz_writes_graded_answers_and_a_json_summary_last(cfg, tmp_path, fake_openai):
    out = tmp_path / "out" / "answers.jsonl"
    run = classroom(cfg, "quiz", "--student", "kid", "--questions", str(questions_file(tmp_path, QUESTIONS)),
                    "--out", str(out), "--json")

    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {
        "student": "kid", "adapter": None, "n": 3, "correct": 1, "accuracy": 0.5}
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == [
        {"question": "What is the capital of France?", "answer": "Paris, of course.", "correct": True},
        {"question": "What is 2 + 2?", "answer": "It is five.", "correct": False},
        {"question": "Who are you?", "answer": "I don't know.", "correct": None},
    ]
    # exactly as /ask: the student's system prompt and the bare question, greedy
    asked = [r for r in fake_openai.requests if r.path.endswith("/chat/completions")]
    assert len(asked) == 3
    for request in asked:
        assert request["messages"][0] == {"role": "system", "content": SYSTEM} and len(request["messages"]) == 2
        assert request["temperature"] == 0.0
    assert {r["messages"][1]["content"] for r in asked} == {json.loads(q)["question"] for q in QUESTIONS if q}


def test_quiz_with_notes_puts_the_document_before_each_question(cfg, tmp_path, fake_openai):
    notes = tmp_path / "notes.md"
    notes.write_text("# Facts\nThe capital of France is Paris.\n", encoding="utf-8")
    run = classroom(cfg, "quiz", "--student", "kid", "--questions", str(questions_file(tmp_path, QUESTIONS[:1])),
                    "--notes", str(notes), "--json")

    assert run.returncode == 0, run.stderr
    asked = [r for r in fake_openai.requests if r.path.endswith("/chat/completions")]
    assert len(asked) == 1 and asked[0]["messages"][0] == {"role": "system", "content": SYSTEM}
    content = asked[0]["messages"][1]["content"]
    assert content.index("The capital of France is Paris.") < content.index("What is the capital of France?")
    missing = classroom(cfg, "quiz", "--questions", str(questions_file(tmp_path, QUESTIONS[:1])),
                        "--notes", str(tmp_path / "nowhere.md"))
    assert missing.returncode != 0 and missing.stderr.startswith("error: ") and "nowhere.md" in missing.stderr


def test_quiz_without_out_prints_the_rows_then_the_summary(cfg, tmp_path):
    run = classroom(cfg, "quiz", "--questions", str(questions_file(tmp_path, QUESTIONS[:1])), "--json")

    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.strip().splitlines()]
    assert lines[0]["correct"] is True and lines[-1]["accuracy"] == 1.0 and len(lines) == 2


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (None, "does not exist"),
        (['{"question": "fine?"}', "not json at all"], "line 2 is not JSON"),
        (['{"answer": "Paris"}'], 'line 1 has no "question"'),
        (['["a list"]'], "line 1 is not a JSON object"),
        (['{"question": "x?", "keywords": "Paris"}'], '"keywords" must be a list of strings'),
        (["", "  "], "has no questions"),
    ],
)
def test_a_bad_questions_file_is_one_clear_error_line(cfg, tmp_path, fake_openai, lines, message):
    path = tmp_path / "missing.jsonl" if lines is None else questions_file(tmp_path, lines)
    run = classroom(cfg, "quiz", "--questions", str(path), "--json")

    assert run.returncode != 0 and run.stdout == ""
    assert run.stderr.startswith("error: ") and message in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert fake_openai.requests == []


# ---- report cards


def seed_history(cfg: Path) -> Path:
    """Two promoted runs of `smol` with stored evaluations: base → v1 → v2 (active)."""
    home = cfg.parent / "home"
    db = open_db(home / "classroom.db")
    for item_id, topic in ((1, "stocks"), (2, "stocks"), (3, "bonds")):
        db.execute("INSERT INTO quiz_items (id, topic, question, answer, split, created_at) VALUES (?, ?, ?, 'a',"
                   " 'heldout', ?)", [item_id, topic, f"question {item_id}?", now()])
    evals = {1: {"topic": 1.0, "control": 0.5}, 2: {"topic": 1.0, "control": 0.5}}
    for run_id, parent, status in ((1, None, "retired"), (2, 1, "active")):
        db.execute("INSERT INTO training_runs (id, student, status, before, after, started_at) VALUES"
                   " (?, 'smol', 'promoted', ?, ?, ?)",
                   [run_id, json.dumps({"topic": 0.0, "control": 0.5}), json.dumps(evals[run_id]), now()])
        db.execute("INSERT INTO adapters (id, student, version, parent_id, run_id, path, status, metrics, created_at)"
                   " VALUES (?, 'smol', ?, ?, ?, ?, ?, ?, ?)",
                   [run_id, run_id, parent, run_id, f"/a/v{run_id}", status, json.dumps({"eval": evals[run_id]}), now()])
    db.conn.close()

    def answers(right: dict[int, bool]) -> list[dict]:
        graded = [{"id": i, "split": "heldout", "correct": ok} for i, ok in right.items()]
        return graded + [{"id": "control-0", "split": "control", "correct": True},
                         {"id": "control-1", "split": "control", "correct": False}]

    results = {
        1: {"before": {"answers": answers({1: False, 2: False})}, "after": {"answers": answers({1: True, 2: False})}},
        2: {"before": {"answers": answers({1: True, 2: False, 3: False})},
            "after": {"answers": answers({1: True, 2: True, 3: True})}},
    }
    for run_id, result in results.items():
        (home / "runs" / str(run_id)).mkdir(parents=True)
        (home / "runs" / str(run_id) / "eval_results.json").write_text(json.dumps(result))
    return home


def test_report_shows_scores_per_topic_for_base_and_each_version_and_writes_the_chart(cfg, tmp_path):
    seed_history(cfg)
    chart = tmp_path / "charts" / "smol.png"
    run = classroom(cfg, "report", "--student", "smol", "--chart", str(chart))

    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert "Report card: Smol (smol), speaking with adapter v2" in text
    table = {line.split()[0]: line for line in text.splitlines() if line.startswith(("topic", "stocks", "bonds"))}
    assert table["topic"].split() == ["topic", "base", "v1", "v2*"]
    # v1 was evaluated twice: after run 1 (stocks only) and before run 2 (with bonds); the later one counts
    assert table["stocks"].split()[1:] == ["0/2", "0%", "1/2", "50%", "2/2", "100%"]
    assert table["bonds"].split()[1:] == ["–", "0/1", "0%", "1/1", "100%"]
    assert "Scores by version:" in text
    assert "v2 100% 50% active".split() in [line.split() for line in text.splitlines()]
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_report_of_a_student_never_trained_says_so(cfg):
    run = classroom(cfg, "report")

    assert run.returncode == 0, run.stderr
    assert "Report card: Smol (smol), speaking with its base weights" in run.stdout
    assert "No evaluations yet" in run.stdout


def test_report_of_an_unknown_student_is_one_error_line(cfg):
    run = classroom(cfg, "report", "--student", "ghost")
    assert run.returncode == 2 and run.stderr.strip() == "error: unknown model 'ghost' (known: kid, prof, smol)"
