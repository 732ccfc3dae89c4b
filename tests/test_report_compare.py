"""Report cards compare students: one table and one chart, in the CLI and in /student report; and
`classroom versions` says which teachers taught each adapter.

Two trainable students of one class have trained on the same lessons and scored differently;
their runs, adapters and quiz items are recorded through the storage functions the training
job uses, and each run's evaluation file is written where the job writes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest

from app import open_app
from backends.registry import ModelRegistry
from cli.commands import cmd_versions
from quiz import compare
from quiz.report_card import read_card
from settings import Settings
from storage import lessons as lq
from storage import open_db
from storage import training as tq
from tests import discord_fixtures as fixtures
from tests.discord_fixtures import reply_to
from trainer.gate import store_items

pytestmark = pytest.mark.simcord(settle_timeout=fixtures.SETTLE)

REPO = Path(__file__).resolve().parent.parent
CONTROL = [True, False]  # the control set's two answers, the same for every variant unless a test says otherwise


def class_settings(home: Path) -> Settings:
    """The teacher `prof` and two trainable students, `kid` and `kat` (scripted, never loaded)."""
    settings = fixtures.make_settings(home)
    kat = fixtures.make_spec("kat").model_copy(update={"trainable": True})
    return settings.model_copy(update={"models": {**settings.models, "kat": kat}})


def seed_class(db: Any, home: Path) -> None:
    """Items 1-2 on Vellmoor, 3 on the Harbour. kid: base → v1 (live). kat: base → v1 (live) → v2 (rejected)."""
    for topic, items in (("Vellmoor", ["gate code?", "ferry?"]), ("Harbour", ["lighthouse?"])):
        lesson = lq.create_lesson(db, topic=topic, teachers=["prof"], students=["kid", "kat"], max_turns=3)
        store_items(db, lesson, topic, [{"question": q, "answer": "a"} for q in items])
    kid = train(db, home, "kid", None, {1: False, 2: False, 3: False}, {1: True, 2: True, 3: False}, promote=True)
    assert kid["version"] == 1
    kat = train(db, home, "kat", None, {1: True, 2: False, 3: False}, {1: True, 2: False, 3: True}, promote=True,
                sources={"prof": 0.25, "sage": 0.75})
    train(db, home, "kat", kat, {1: True, 2: False, 3: True}, {1: False, 2: False, 3: False}, promote=False)


def train(db: Any, home: Path, student: str, parent: dict[str, Any] | None, before: dict[int, bool],
          after: dict[int, bool], *, promote: bool, sources: dict[str, float] | None = None) -> dict[str, Any]:
    """One training run as the job records it: run, candidate adapter, gate verdict, evaluation file."""
    run_id = tq.start_run(db, student, "manual")
    results = {"before": graded(before), "after": graded(after)}
    scores = {k: {"topic": v["topic"], "control": v["control"]} for k, v in results.items()}
    adapter = tq.add_adapter(db, student=student, path=str(home / "adapters" / student / str(run_id)), run_id=run_id,
                             parent_id=parent["id"] if parent else None, data_hash="h", metrics={"eval": scores["after"]})
    tq.finish_run(db, run_id, "promoted" if promote else "rejected", before=scores["before"], after=scores["after"],
                  sources=sources or {"prof": 1.0})
    if promote:
        tq.activate_adapter(db, adapter["id"])
    else:
        tq.set_adapter_status(db, adapter["id"], "rejected")
    run_dir = home / "runs" / str(run_id)
    run_dir.mkdir(parents=True)
    (run_dir / "eval_results.json").write_text(json.dumps(results), encoding="utf-8")
    return adapter


def graded(right: dict[int, bool]) -> dict[str, Any]:
    """One variant's graded answers, as trainer.evaluate reports them."""
    answers = [{"id": i, "split": "heldout", "correct": ok} for i, ok in right.items()]
    answers += [{"id": f"control-{i}", "split": "control", "correct": ok} for i, ok in enumerate(CONTROL)]
    return {"topic": sum(right.values()) / len(right), "control": sum(CONTROL) / len(CONTROL), "answers": answers}


def table_rows(text: str) -> dict[str, list[str]]:
    """The comparison table's rows by their first word."""
    return {line.split()[0]: line.split()[1:] for line in text.splitlines()
            if line.startswith(("topic", "Vellmoor", "Harbour", "all held-out", "control set"))}


async def test_the_table_and_chart_set_each_students_base_and_live_scores_side_by_side(tmp_path):
    settings = class_settings(tmp_path / "home")
    async with open_app(settings, models=ModelRegistry(settings.models, cache_dir=settings.cache_dir)) as app:
        await app.store.call(seed_class, settings.home)
        cards = [await read_card(app, "kid"), await read_card(app, "kat")]

    text = compare.compare_text(cards)
    assert "  Kid the Student (kid): speaks with adapter v1" in text.splitlines()
    assert "  kat (kat): speaks with adapter v1" in text.splitlines()  # v2 was rejected: v1 stays live
    rows = table_rows(text)
    assert rows["topic"] == ["kid", "base", "kid", "v1*", "kat", "base", "kat", "v1*"]
    assert rows["Harbour"] == ["0/1", "0%", "0/1", "0%", "0/1", "0%", "1/1", "100%"]
    assert rows["Vellmoor"] == ["0/2", "0%", "2/2", "100%", "1/2", "50%", "1/2", "50%"]
    assert rows["all"] == ["held-out", "0/3", "0%", "2/3", "67%", "1/3", "33%", "2/3", "67%"]

    groups, series = compare.chart_data(cards)
    assert groups == ["Harbour", "Vellmoor", "all held-out", "control set"]
    assert [(s["name"], s["live"], s["base"]) for s in series] == [
        ("Kid the Student (v1)", [0.0, 1.0, 2 / 3, 0.5], [0.0, 0.0, 0.0, 0.5]),
        ("kat (v1)", [1.0, 0.5, 2 / 3, 0.5], [0.0, 0.5, 1 / 3, 0.5]),
    ]
    assert compare.chart_png(cards).startswith(b"\x89PNG")


def test_classroom_report_with_two_students_prints_one_table_and_writes_one_chart(tmp_path):
    home = tmp_path / "home"
    cfg = tmp_path / "classroom.toml"
    students = "".join(f'\n[models.{name}]\nbackend = "local"\npath = "never-loaded"\ntrainable = true\n'
                       for name in ("kid", "kat"))
    cfg.write_text(f'home = "{home}"\n[lessons]\ndefault_student = "kid"\n{students}', encoding="utf-8")
    home.mkdir()
    db = open_db(home / "classroom.db")
    seed_class(db, home)
    db.conn.close()
    chart = tmp_path / "charts" / "class.png"

    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "CLASSROOM_HOME", "CLASSROOM_CONFIG")}
    run = subprocess.run([sys.executable, "-m", "cli.main", "--config", str(cfg), "report", "--student", "kat",
                          "--student", "kid", "--student", "kat", "--chart", str(chart)],
                         capture_output=True, text=True, timeout=60, cwd=REPO, env=env)

    assert run.returncode == 0, run.stderr
    assert run.stdout.count("Report cards compared:") == 1 and "Report card:" not in run.stdout
    rows = table_rows(run.stdout)
    assert rows["topic"] == ["kat", "base", "kat", "v1*", "kid", "base", "kid", "v1*"]  # in the order asked, once each
    assert rows["Vellmoor"] == ["1/2", "50%", "1/2", "50%", "0/2", "0%", "2/2", "100%"]
    assert run.stderr.strip() == f"chart: {chart}"
    assert chart.read_bytes().startswith(b"\x89PNG") and list(chart.parent.iterdir()) == [chart]


async def test_classroom_versions_says_which_teachers_taught_each_adapter_largest_share_first(tmp_path, capsys):
    settings = class_settings(tmp_path / "home")
    async with open_app(settings, models=ModelRegistry(settings.models, cache_dir=settings.cache_dir)) as app:
        await app.store.call(seed_class, settings.home)

    await cmd_versions(settings, Namespace(student="kat"))

    v1, v2 = capsys.readouterr().out.splitlines()
    assert v1.startswith("v1   active") and v1.endswith("  taught by sage 75%, prof 25%")
    assert v2.startswith("v2   rejected") and v2.endswith("  taught by prof 100%")


# ---- /student report students:


@pytest.fixture
def classroom_settings(tmp_path: Path) -> Settings:
    return class_settings(tmp_path / "home")


@pytest.fixture
def scripted_models() -> dict[str, fixtures.TimedScript]:
    return {name: fixtures.TimedScript(name, "Hmm.") for name in ("prof", "kid", "kat")}


@pytest.fixture(autouse=True)
def no_nightly_schedule(monkeypatch):
    monkeypatch.setenv("CLASSROOM_NO_SCHEDULER", "1")


async def test_student_report_compares_students_in_one_embed_with_one_chart(classroom):
    with classroom.db() as db:
        seed_class(db, classroom.settings.home)
    await allow_student(classroom, classroom.alice)

    result = await classroom.alice.slash(classroom.channel, "student report", students="kid, kat")
    posted = reply_to(result)

    assert not posted.ephemeral and len(posted.embeds) == 1
    embed = posted.embeds[0]
    assert embed.title == "📋 Report cards compared: Kid the Student, kat"
    rows = table_rows(embed.description)
    assert rows["topic"] == ["kid", "base", "kid", "v1*", "kat", "base", "kat", "v1*"]
    assert rows["Harbour"][-2:] == ["1/1", "100%"]
    [chart] = posted.attachments
    assert chart.filename == "compare-kid-kat.png" and embed.image.url == "attachment://compare-kid-kat.png"
    assert (await chart.read()).startswith(b"\x89PNG")

    choices = await classroom.alice.autocomplete(classroom.channel, "student report", "students", "kid,")
    assert [c["value"] for c in choices] == ["kid,kat"]


async def test_an_unknown_student_gets_a_clear_private_answer_and_nothing_is_posted(classroom):
    await allow_student(classroom, classroom.alice)
    before = len(classroom.channel.history())

    result = await classroom.alice.slash(classroom.channel, "student report", students="kid,ghost,prof")

    assert result.ephemeral and result.followups == []
    assert result.response.content == "Not trainable students: `ghost`, `prof`. Students: `kid`, `kat`."
    assert result.response.attachments == [] and result.response.embeds == []
    assert len(classroom.channel.history()) == before


async def allow_student(classroom, member) -> None:
    """/student may be hidden by default_permissions; an admin opens it to `member`."""
    commands = await classroom.env.bot.tree.fetch_commands()
    command = next(c for c in commands if c.name == "student")
    classroom.guild.set_command_permissions(command, {member: True})
