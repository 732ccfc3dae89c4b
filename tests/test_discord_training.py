"""Training as members see it: /train now, status and history, /student versions and rollback, the nightly job.

The student is a tiny real model and training runs in a real subprocess (one run in this
module: it costs tens of seconds); the teacher that writes quiz items is scripted. The
other tests seed runs and adapters in SQLite, which is all the commands read.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import discord
import pytest
import simcord

from plugins.training.progress import ProgressBoard, ProgressState, Throttle, render_progress
from plugins.training.report import report_text
from settings import ModelSpec, Settings, TrainingSettings
from storage import lessons as lq
from storage import training as tq
from storage import votes as v
from tests import discord_fixtures as fixtures
from tests.discord_fixtures import TimedScript, reply_to
from tests.tiny import build_tiny_model
from trainer import job, schedule
from trainer.job import TrainResult

pytestmark = pytest.mark.simcord(settle_timeout=fixtures.SETTLE)

# The shared fixtures, made visible to this module's tests (classroom_settings and scripted_models are this module's own).

TRAINING_SETTLE = 240.0
"""Real seconds `/train now` may take to settle when it really trains: the run is bot work simcord waits for."""
FACTS = "The gate code of Vellmoor is 4471."


def quiz_writer(messages) -> str:
    """The scripted teacher writing held-out quiz items for a lesson."""
    return "Q: What is the gate code of Vellmoor?\nA: 4471\nQ: Who runs the Vellmoor ferry?\nA: Ada Quill"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), with_eos=True)


@pytest.fixture
def scripted_models() -> dict[str, TimedScript]:
    """Only the teacher is scripted; the student `kid` is the tiny real model."""
    return {"prof": TimedScript("prof", quiz_writer)}


@pytest.fixture
def classroom_settings(tmp_path: Path, tiny_dir: str) -> Settings:
    """A scripted teacher and a trainable tiny student, with small training settings."""
    kid = ModelSpec(
        name="kid", backend="local", path=tiny_dir, device="cpu", trainable=True,
        persona={"display_name": "Kid the Student"}, generation={"max_new_tokens": 8, "temperature": 0.0},
    )
    return Settings(
        home=tmp_path / "home",
        models={"prof": fixtures.make_spec("prof"), "kid": kid},
        lessons={"default_teacher": "prof", "default_student": "kid"},
        discord={"curator_role": "Curators"},
        training=TrainingSettings(epochs=1, min_steps=0, learning_rate=2e-4, max_seq_len=256, batch_tokens=512),
    )


async def allow(classroom, group: str, *who) -> None:
    """An admin lets these members use a command group hidden by default_permissions (Server Settings → Integrations)."""
    commands = await classroom.env.bot.tree.fetch_commands()
    command = next(c for c in commands if c.name == group)
    classroom.guild.set_command_permissions(command, {member: True for member in who})


def approve_lesson(classroom) -> int:
    """A finished lesson about Vellmoor that a curator approved, stored as the bot would."""
    with classroom.db() as db:
        lid = lq.create_lesson(db, topic="Vellmoor", teachers=["prof"], students=["kid"], max_turns=3)
        lq.set_syllabus(db, lid, [{"title": "The gate", "text": FACTS}])
        for role, speaker, content in (("teacher", "prof", FACTS + " What is the code?"),
                                       ("student", "kid", "Is it 4471?"), ("teacher", "prof", "Yes. " + FACTS)):
            lq.add_turn(db, lesson_id=lid, speaker=speaker, role=role, content=content, section=0)
        lq.finish_lesson(db, lid, "finished")
        v.record_decision(db, lid, "curator", "approve")
    return lid


def bot_messages(channel) -> list[discord.Message]:
    return [m for m in channel.history() if m.author.bot]


@pytest.mark.slow
@pytest.mark.simcord(settle_timeout=TRAINING_SETTLE)
async def test_train_now_defers_trains_in_the_background_with_progress_and_reports_with_a_chart(classroom):
    approve_lesson(classroom)
    await allow(classroom, "train", classroom.carol)
    await allow(classroom, "student", classroom.carol)
    start = len(classroom.env.http_requests)

    result = await classroom.carol.slash(classroom.channel, "train now")

    requests = classroom.env.http_requests[start:]
    assert requests[0].path.endswith("/callback") and requests[0].json["type"] == 5  # deferred before any work
    assert f"progress and the report will show in <#{classroom.channel.id}>" in reply_to(result).content.lower()
    progress = [m for m in bot_messages(classroom.channel) if "Training Kid the Student" in m.content]
    assert len(progress) == 1, "one progress message per run"
    edits = [r for r in requests if r.method == "PATCH" and r.path.endswith(f"/messages/{progress[0].id}")]
    assert edits, "the progress message is edited while training runs"
    assert "promoted" in progress[0].content and "step" in progress[0].content
    [report] = [m for m in bot_messages(classroom.channel) if m.attachments]
    assert "adapter v1 promoted" in report.content and "Held-out quiz" in report.content
    assert report.attachments[0].filename == "kid-scores.png"
    posts = [r for r in requests if r.method in ("POST", "PATCH") and r.path.startswith("/channels/")]
    assert posts and all((r.json or {}).get("allowed_mentions") == {"parse": []} for r in posts)
    with classroom.db() as db:
        assert tq.active_adapter(db, "kid")["version"] == 1
        [run] = tq.list_runs(db)
    assert run["status"] == "promoted" and run["trigger"] == "manual"

    status = reply_to(await classroom.carol.slash(classroom.channel, "train status")).content
    assert "Last run" in status and "#1" in status and "promoted" in status and "Next nightly run" in status
    history = reply_to(await classroom.carol.slash(classroom.channel, "train history")).embeds[0].description
    assert "**#1** ✅ promoted" in history and "1 example ·" in history and "held-out" in history
    versions = reply_to(await classroom.carol.slash(classroom.channel, "student versions")).embeds[0].description
    assert "`v1` 🟢 **active**" in versions

    rolled = reply_to(await classroom.carol.slash(classroom.channel, "student rollback", version="base")).content
    assert rolled == "`kid` now speaks with its base weights."
    with classroom.db() as db:
        assert tq.active_adapter(db, "kid") is None


async def test_train_and_student_are_hidden_from_members_and_a_non_curator_is_refused_at_run_time(classroom):
    tree = classroom.env.bot.tree
    assert tree.get_command("train").default_permissions == discord.Permissions(manage_guild=True)
    # /student is public (versions, report card); its rollback is guarded at run time only
    assert tree.get_command("student").default_permissions is None
    assert "train now" not in classroom.bob.available_commands(classroom.channel)
    assert "lesson start" in classroom.bob.available_commands(classroom.channel)
    assert "student versions" in classroom.bob.available_commands(classroom.channel)
    with pytest.raises(simcord.SetupError, match="not visible"):
        await classroom.bob.slash(classroom.channel, "train now")

    await allow(classroom, "train", classroom.bob)  # an admin opened the group to bob, say to read /train status
    refused = reply_to(await classroom.bob.slash(classroom.channel, "train now"))
    assert refused.ephemeral and refused.content.startswith("Only curators can start training")
    refused = reply_to(await classroom.bob.slash(classroom.channel, "student rollback", version="base"))
    assert refused.content.startswith("Only curators can switch")
    with classroom.db() as db:
        assert tq.list_runs(db) == []


async def test_a_run_already_in_progress_here_or_in_another_process_is_refused(classroom):
    await allow(classroom, "train", classroom.carol)
    async with classroom.env.bot.app.training_lock:  # a run of this bot holds the lock
        busy = reply_to(await classroom.carol.slash(classroom.channel, "train now")).content
    assert busy.startswith("A training run is already in progress")

    with classroom.db() as db:
        tq.start_run(db, "kid", "cli")  # `classroom train` is running in a terminal
    busy = reply_to(await classroom.carol.slash(classroom.channel, "train now")).content
    assert "`kid` is training in another process (run #1)" in busy
    status = reply_to(await classroom.carol.slash(classroom.channel, "train status")).content
    assert "in another process" in status
    with classroom.db() as db:
        assert len(tq.list_runs(db)) == 1


async def test_versions_show_the_lineage_and_a_curator_rolls_back_with_clear_refusals(classroom, tmp_path):
    await allow(classroom, "student", classroom.carol)
    with classroom.db() as db:
        ids = []
        taught = {1: {"old_sage": 0.2, "prof": 0.8}, 2: {"prof": 1.0}}  # as the job records them per run
        for version, topic in ((1, 0.5), (2, 0.75), (3, 0.25), (4, 0.6)):
            path = tmp_path / f"v{version}"
            path.mkdir()
            parent = ids[-1] if ids else None
            run_id = tq.start_run(db, "kid", "manual")
            tq.finish_run(db, run_id, "promoted", **({"sources": taught[version]} if version in taught else {}))
            row = tq.add_adapter(db, student="kid", path=str(path), run_id=run_id, parent_id=parent, data_hash=None,
                                 metrics={"eval": {"topic": topic, "control": 0.8}})
            ids.append(row["id"])
        tq.activate_adapter(db, ids[0])
        tq.activate_adapter(db, ids[1])
        tq.set_adapter_status(db, ids[2], "rejected")
        tq.set_adapter_status(db, ids[3], "deleted")

    lineage = reply_to(await classroom.carol.slash(classroom.channel, "student versions")).embeds[0].description
    lines = lineage.splitlines()
    assert lines[0].startswith("`v1` ⚪ **retired** · held-out 50% · control 80% · from base")
    assert lines[1].startswith("`v2` 🟢 **active** · held-out 75% · control 80% · from v1")
    assert lines[2].startswith("`v3` ⛔ **rejected**") and lines[3].startswith("`v4` 🗑️ **deleted**")
    # provenance, worded as `classroom versions` words it: largest share first, a name's _ kept literal
    assert lines[0].endswith(" · taught by prof 80%, old\\_sage 20%") and lines[1].endswith(" · taught by prof 100%")
    assert "taught by" not in lines[2]

    async def rollback(version: str) -> str:
        return reply_to(await classroom.carol.slash(classroom.channel, "student rollback", version=version)).content

    assert await rollback("v1") == "`kid` now speaks with adapter v1."
    with classroom.db() as db:
        assert tq.active_adapter(db, "kid")["version"] == 1
    assert "has no adapter v9" in await rollback("9")
    assert "was deleted from disk" in await rollback("4")
    assert "is not a version" in await rollback("latest")
    assert await rollback("base") == "`kid` now speaks with its base weights."
    with classroom.db() as db:
        assert tq.active_adapter(db, "kid") is None
    choices = await classroom.carol.autocomplete(classroom.channel, "student rollback", "version", "")
    assert [c["value"] for c in choices] == ["base", "3", "2", "1"]  # the deleted v4 is not offered


async def test_status_and_history_before_any_run_say_so_and_name_the_next_nightly_run(classroom):
    await allow(classroom, "train", classroom.carol)
    status = reply_to(await classroom.carol.slash(classroom.channel, "train status")).content
    assert status.startswith("No training runs yet.") and "Next nightly run: <t:" in status
    history = reply_to(await classroom.carol.slash(classroom.channel, "train history")).content
    assert history.startswith("No training runs yet")


async def test_student_options_autocomplete_trainable_models_only(classroom):
    await allow(classroom, "train", classroom.carol)
    choices = await classroom.carol.autocomplete(classroom.channel, "train now", "student", "")
    assert [c["value"] for c in choices] == ["kid"]
    unknown = reply_to(await classroom.carol.slash(classroom.channel, "train now", student="prof")).content
    assert unknown == "`prof` is not a trainable student. Students: `kid`."


async def with_report_channel(classroom) -> simcord.ChannelHandle:
    """Configure a #training-reports channel and restart the bot with it."""
    reports = classroom.guild.create_text_channel("training-reports")
    settings = classroom.settings
    discord_settings = settings.discord.model_copy(update={"report_channel_id": reports.id})
    classroom.factory.settings = settings.model_copy(update={"discord": discord_settings})
    await classroom.restart()
    return reports


async def test_train_now_reports_in_the_report_channel_and_says_why_nothing_trained(classroom):
    reports = await with_report_channel(classroom)
    await allow(classroom, "train", classroom.carol)
    reply = reply_to(await classroom.carol.slash(classroom.channel, "train now")).content
    assert f"will show in <#{reports.id}>" in reply
    [report] = bot_messages(reports)
    assert report.content.startswith("⏭️ **Kid the Student (`kid`): training skipped** — no newly approved lessons")
    assert bot_messages(classroom.channel) == []  # no progress message: the run never started training


async def test_the_nightly_schedule_fires_the_job_and_records_the_run(classroom):
    reports = await with_report_channel(classroom)
    cog = classroom.env.bot.get_cog("TrainingCog")
    assert cog.scheduler is not None and cog.scheduler.get_job(schedule.JOB_ID) is not None

    cog.scheduler.modify_job(schedule.JOB_ID, next_run_time=datetime.now(UTC) + timedelta(seconds=0.2))
    for _ in range(200):
        with classroom.db() as db:
            runs = tq.list_runs(db)
        if runs and runs[0]["status"] != "running":
            break
        await asyncio.sleep(0.05)
    assert [(r["trigger"], r["status"]) for r in runs] == [("schedule", "skipped")]
    await classroom.env.settle()
    assert bot_messages(reports) == []  # a night with nothing approved stays quiet; the run is recorded
    assert cog.live is None


async def test_closing_the_bot_stops_the_schedule_and_interrupts_a_run_in_progress(classroom, monkeypatch):
    cancelled = asyncio.Event()

    async def endless_job(app, student, trigger, progress):
        await progress({"event": "stage", "stage": "train", "message": "training on 1 example"})
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    monkeypatch.setattr(job, "train_student", endless_job)
    await allow(classroom, "train", classroom.carol)
    await classroom.carol.slash(classroom.channel, "train now")
    cog = classroom.env.bot.get_cog("TrainingCog")
    assert cog.live is not None and cog.scheduler is not None
    [progress] = bot_messages(classroom.channel)
    assert "Stage: training — training on 1 example" in progress.content

    closing = asyncio.create_task(classroom.env.bot.close())
    await classroom.env.advance_time(2)  # the last edit waits out a second
    await closing

    assert cancelled.is_set() and cog.live is None and cog.scheduler is None
    [progress] = bot_messages(classroom.channel)
    assert "Interrupted: the bot shut down" in progress.content


def test_progress_shows_a_bar_the_stage_step_loss_speed_and_eta():
    state = ProgressState("kid", "Kid the Student", "schedule")
    for event in ({"event": "stage", "stage": "train", "message": "training on 12 examples"},
                  {"event": "start", "examples": 12, "tokens": 3400, "total_steps": 40},
                  {"event": "progress", "step": 10, "total_steps": 40, "loss": 1.23456, "tokens_per_s": 850.4, "eta_s": 95}):
        assert state.apply(event)
    assert not state.apply({"event": "spawned", "pid": 1, "module": "trainer"})
    assert render_progress(state).splitlines() == [
        "🏋️ **Training Kid the Student** (`kid`) · nightly run",
        "`█████░░░░░░░░░░░░░░░` 25% · step 10/40",
        "Stage: training — training on 12 examples",
        "Loss 1.235 · 850 tokens/s · ETA 1:35",
    ]
    state.outcome = "promoted"
    assert "✅ Finished: the new adapter was promoted" in render_progress(state)


def test_the_preference_step_shows_as_its_own_stage_with_its_own_steps():
    state = ProgressState("kid", "Kid the Student", "manual")
    for event in ({"event": "progress", "step": 40, "total_steps": 40, "loss": 0.2},
                  {"event": "stage", "stage": "preference", "message": "DPO on 9 pairs"},
                  {"event": "progress", "stage": "preference", "step": 1, "total_steps": 4, "loss": 0.69}):
        assert state.apply(event)
    lines = render_progress(state).splitlines()
    assert lines[1:3] == ["`█████░░░░░░░░░░░░░░░` 25% · step 1/4",
                          "Stage: preference step (DPO/KTO on members' chosen/rejected answers) — DPO on 9 pairs"]


async def test_progress_edits_are_throttled_and_the_newest_state_is_always_shown():
    clock = FakeClock()
    shown: list[tuple[float, str]] = []

    async def show(text: str) -> None:
        shown.append((clock.now, text))

    assert Throttle(0.1).interval == 1.0  # never faster than once a second
    board = ProgressBoard(ProgressState("kid", "Kid", "manual"), show, interval=3.0, clock=clock.time, sleep=clock.sleep)
    await board.on_event({"event": "start", "examples": 2, "tokens": 100, "total_steps": 100})
    for step in range(1, 101):
        await clock.advance(0.1)  # ten steps a second, for ten seconds
        await board.on_event({"event": "progress", "step": step, "total_steps": 100, "loss": 1.0, "eta_s": 100 - step})
    finishing = asyncio.create_task(board.finish("promoted"))
    for _ in range(40):
        await clock.advance(0.1)
    assert finishing.done()

    times = [t for t, _ in shown]
    assert 3 <= len(shown) <= 6, "about one edit every three seconds, not one per event"
    assert all(b - a >= 3.0 - 1e-9 for a, b in zip(times, times[1:], strict=False))
    assert "step 100/100" in shown[-1][1] and "promoted" in shown[-1][1]
    assert len({text for _, text in shown}) == len(shown)  # an unchanged text is never re-sent


class FakeClock:
    """Time that moves only when the test moves it; a sleeper wakes once it has moved far enough."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        wake = asyncio.get_running_loop().create_future()
        self.sleepers.append((self.now + seconds, wake))
        await wake

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for at, wake in [s for s in self.sleepers if s[0] <= self.now]:
            self.sleepers.remove((at, wake))
            if not wake.done():
                wake.set_result(None)
        for _ in range(3):  # let the woken sleepers run
            await asyncio.sleep(0)


def test_the_report_says_why_a_run_was_not_promoted_and_what_stays_live():
    rejected = TrainResult(7, "kid", "rejected", version=3, examples=12, tokens=3400, seconds=95.0,
                           before={"topic": 0.5, "control": 0.8}, after={"topic": 0.4, "control": 0.8},
                           reason="held-out score dropped from 0.50 to 0.40")
    assert report_text(rejected, "Kid", 2).splitlines() == [
        "↩️ **Kid (`kid`): adapter v3 not promoted** — it keeps v2.",
        "12 examples · 3,400 tokens · 1m 35s",
        "Held-out quiz 50% → 40% · control set 80% → 80%",
        "Why: held-out score dropped from 0.50 to 0.40",
    ]
    failed = TrainResult(8, "kid", "failed", examples=12, reason="training failed: killed by signal SIGKILL")
    assert report_text(failed, "Kid", None).splitlines()[0] == "❌ **Kid (`kid`): training failed** — it keeps its base weights."
    assert "Why: training failed: killed by signal SIGKILL" in report_text(failed, "Kid", None)
