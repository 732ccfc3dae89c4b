"""The training job end to end on a tiny real model: dataset → subprocess LoRA → gate → registry → live swap.

The teacher that writes quiz items is scripted; everything else is real: SQLite, the trainer
and evaluation subprocesses, peft adapters on disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from app import open_app
from backends.base import GenParams
from backends.registry import ModelRegistry
from settings import ModelSpec, Settings, TrainingSettings
from storage import lessons as lq
from storage import training as tq
from storage import votes as v
from tests.scripted import ScriptedBackend
from tests.tiny import build_tiny_model, make_lora
from trainer import anchors, dataset, gate, job


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), with_eos=True)


def quiz_writer(messages):
    return "Q: What is the gate code of Vellmoor?\nA: 4471\nQ: Who runs the Vellmoor ferry?\nA: Ada Quill"


@pytest.fixture
async def app(tmp_path, tiny_dir):
    specs = {
        "prof": ModelSpec(name="prof", backend="local", path="scripted", persona={"display_name": "Prof"}),
        "kid": ModelSpec(name="kid", backend="local", path=tiny_dir, device="cpu", trainable=True,
                         generation={"max_new_tokens": 8, "temperature": 0.0}),
    }
    settings = Settings(home=tmp_path / "home", models=specs, lessons={"default_teacher": "prof", "default_student": "kid"},
                        training=TrainingSettings(epochs=2, min_steps=0, learning_rate=1e-3, max_seq_len=256, batch_tokens=512,
                                                  control_margin=1.0))  # a random tiny model's control answers are noise; the gate has its own tests
    registry = ModelRegistry(specs, cache_dir=settings.cache_dir, backends={"prof": ScriptedBackend("prof", quiz_writer)})
    async with open_app(settings, models=registry) as ctx:
        yield ctx


async def approved_lesson(app, facts: str = "The gate code of Vellmoor is 4471.") -> int:
    lid = await app.store.call(lq.create_lesson, topic="Vellmoor", teachers=["prof"], students=["kid"], max_turns=3)
    await app.store.call(lq.set_syllabus, lid, [{"title": "The gate", "text": facts}])
    for role, speaker, content in (("teacher", "prof", facts + " What is the code?"), ("student", "kid", "Is it 4471?"),
                                   ("teacher", "prof", "Yes. " + facts)):
        await app.store.call(lq.add_turn, lesson_id=lid, speaker=speaker, role=role, content=content, section=0)
    await app.store.call(lq.finish_lesson, lid, "finished")
    await app.store.call(v.record_decision, lid, "curator", "approve")
    return lid


def approved_correction(db, question: str, correction: str) -> int:
    """A student's wrong quiz answer, corrected by the teacher and approved by a curator (as /quiz leaves it)."""
    from storage import now

    item = db.execute("INSERT INTO quiz_items (topic, question, answer, split, created_at) VALUES ('Vellmoor', ?, 'Ada Quill',"
                      " 'game', ?)", [question, now()]).lastrowid
    answer = db.execute("INSERT INTO quiz_answers (item_id, answerer, answerer_kind, answer, correct, created_at)"
                        " VALUES (?, 'kid', 'model', 'Bob', 0, ?)", [item, now()]).lastrowid
    return db.execute("INSERT INTO quiz_corrections (answer_id, student, teacher, system, question, correction, status,"
                      " created_at) VALUES (?, 'kid', 'prof', 'You are Kid.', ?, ?, 'approved', ?)",
                      [answer, question, correction, now()]).lastrowid


async def test_nightly_lifecycle_train_skip_kill_continue(app):
    """One student's life over several nights, in one test because every run spawns real subprocesses:
    two concurrent triggers train once; nothing new skips; a killed run changes nothing live; the next
    run continues from the active adapter with replayed old data."""
    lid = await approved_lesson(app)
    events = []
    first, concurrent = await asyncio.gather(job.train_student(app, "kid", "test", events.append),
                                             job.train_student(app, "kid", "test"))
    assert concurrent.status == "skipped" and "already in progress" in concurrent.reason
    assert first.status == "promoted", first.reason
    assert first.examples == 1 and first.tokens > 0
    # beside the lesson, two general questions answered by the student itself (anchor_share 2.0 × 1)
    first_rows = [json.loads(x) for x in (app.settings.home / "runs" / str(first.run_id) / "dataset.jsonl").read_text().splitlines()]
    assert first.anchors == 2 and [r["id"].startswith("anchor-") for r in first_rows] == [False, True, True]
    # ...marked as anchors, so the trainer holds them to the student's own predictions (KL, anchor_kl)
    assert [r.get("anchor", False) for r in first_rows] == [False, True, True]
    run_job = json.loads((app.settings.home / "runs" / str(first.run_id) / "job.json").read_text())
    assert run_job["config"]["anchor_kl"] == app.settings.training.anchor_kl == 3.0
    assert {r["messages"][1]["content"] for r in first_rows[1:]} <= set(anchors.questions())
    assert first.before is not None and first.after is not None
    adapter_dir = Path(first.adapter)
    for name in ("adapter_config.json", "adapter_model.safetensors", "training_config.json", "metrics.json", "evaluation.json"):
        assert (adapter_dir / name).is_file(), name
    active = await app.store.call(tq.active_adapter, "kid")
    assert active["version"] == 1 and active["path"] == str(adapter_dir)
    run = await app.store.call(tq.get_run, first.run_id)
    assert run["status"] == "promoted" and run["lesson_ids"] == [lid] and len(run["data_hash"]) == 64
    assert run["sources"] == {"prof": 1.0}  # provenance: whose turns trained this adapter
    assert {e.get("event") for e in events} >= {"stage", "start", "progress", "done"}
    items = await app.store.call(gate.heldout_items, "kid")
    # the teacher's grounded item is kept; its hallucinated one ("Ada Quill" is not in these notes) is
    # replaced by a fill-in-the-blank item cut from the notes
    assert [i["answer"] for i in items] == ["4471", "4471"]
    assert items[1]["question"].startswith("About Vellmoor, fill in the blank:")

    again = await job.train_student(app, "kid")
    assert again.status == "skipped" and "no newly approved lessons" in again.reason

    await approved_lesson(app, "The mayor of Vellmoor is Ada Quill.")

    def kill_on_spawn(event):
        if event.get("event") == "spawned" and event.get("module") == "trainer":
            os.killpg(event["pid"], signal.SIGKILL)

    killed = await job.train_student(app, "kid", "test", kill_on_spawn)
    assert killed.status == "failed" and "SIGKILL" in killed.reason
    still = await app.store.call(tq.active_adapter, "kid")
    assert still["id"] == active["id"] and Path(still["path"]).is_dir()
    assert not (Path(app.settings.adapters_dir) / "kid" / "v2").exists()
    assert (await app.store.call(tq.get_run, killed.run_id))["status"] == "failed"

    correction = await app.store.call(approved_correction, "Who runs the ferry?", "Ada Quill runs the ferry.")
    second = await job.train_student(app, "kid")
    assert second.status == "promoted", second.reason
    # the new lesson and the approved quiz correction, plus one replayed old example (ceil(0.5 × 2) → 1)
    assert second.examples == 3 and second.anchors == 6
    dataset_rows = (app.settings.home / "runs" / str(second.run_id) / "dataset.jsonl").read_text()
    assert "Ada Quill runs the ferry." in dataset_rows
    assert (await app.store.call(tq.get_run, second.run_id))["correction_ids"] == [correction]
    cfg = json.loads((Path(second.adapter) / "training_config.json").read_text())
    assert first.adapter in json.dumps(cfg)  # continued from v1
    v1 = await app.store.call(tq.adapter_by_version, "kid", 1)
    assert (await app.store.call(tq.active_adapter, "kid"))["parent_id"] == v1["id"]
    assert v1["status"] == "retired"


def test_gate_rejects_a_worse_adapter():
    assert gate.gate({"topic": 0.5, "control": 0.8}, {"topic": 0.4, "control": 0.8}, 0.1)[0] is False
    ok, why = gate.gate({"topic": 0.5, "control": 0.8}, {"topic": 0.9, "control": 0.6}, 0.1)
    assert not ok and "control score fell" in why
    assert gate.gate({"topic": 0.5, "control": 0.8}, {"topic": 0.6, "control": 0.75}, 0.1)[0] is True


async def test_promoted_adapter_is_used_by_the_next_request_and_rollback_restores(app, tiny_dir, tmp_path):
    student = await app.models.backend("kid")
    params = GenParams(max_new_tokens=8, temperature=0.0)
    prompt = [{"role": "user", "content": "hello"}]
    base_answer = await student.chat(prompt, params)
    lora = make_lora(tiny_dir, tmp_path / "lora", std=0.5)
    row = await app.store.call(tq.add_adapter, student="kid", path=str(lora), run_id=None, parent_id=None, data_hash=None)
    await app.store.call(tq.activate_adapter, row["id"])  # as a training run in another process would
    changed = await (await app.models.backend("kid")).chat(prompt, params)
    assert changed != base_answer
    await job.rollback(app, "kid", None)
    assert await (await app.models.backend("kid")).chat(prompt, params) == base_answer
    await job.rollback(app, "kid", 1)
    assert await (await app.models.backend("kid")).chat(prompt, params) == changed


def dead_process_tag() -> str:
    """The owner tag of a process that has ended, as a killed `classroom train` leaves behind."""
    import subprocess

    proc = subprocess.Popen(["sleep", "5"])
    tag = tq.process_tag(proc.pid)
    proc.kill()
    proc.wait()
    return tag


async def test_runs_whose_process_died_are_marked_interrupted_at_startup_and_live_ones_kept(app):
    dead = await app.store.call(tq.start_run, "kid", "test")
    await app.store.call(lambda db: db.execute("UPDATE training_runs SET owner = ? WHERE id = ?", [dead_process_tag(), dead]))
    live = await app.store.call(tq.start_run, "prof", "test")  # this process: a CLI run going on beside the bot
    assert await app.store.call(tq.mark_running_runs_interrupted) == [dead]
    assert (await app.store.call(tq.get_run, dead))["status"] == "interrupted"
    assert (await app.store.call(tq.get_run, live))["status"] == "running"


async def test_a_run_left_running_by_a_killed_process_does_not_block_the_next_one(app):
    stale = await app.store.call(tq.start_run, "kid", "cli")
    await app.store.call(lambda db: db.execute("UPDATE training_runs SET owner = ? WHERE id = ?", [dead_process_tag(), stale]))
    assert await app.store.call(tq.running_run, "kid") is None
    run = await app.store.call(tq.get_run, stale)
    assert run["status"] == "interrupted" and "ended before it finished" in run["reason"]
    result = await job.train_student(app, "kid")  # nothing approved: skipped for that reason, not "in progress"
    assert result.status == "skipped" and "no newly approved" in result.reason


async def test_mask_flags_follow_votes_and_train_on_outputs(app):
    lid = await approved_lesson(app)
    turns = await app.store.call(lq.turns, lid)
    await app.store.call(v.toggle_vote, "turn", turns[2]["id"], "m1", -1)
    [ex] = await app.store.call(dataset.lesson_examples, lid)
    flags = [m.get("train") for m in ex["messages"] if m["role"] == "assistant"]
    assert flags == [True, False]
    [ex] = await app.store.call(dataset.lesson_examples, lid, no_train_teachers=["prof"])
    assert not any(m.get("train") for m in ex["messages"] if m["role"] == "assistant")


def test_the_job_file_carries_every_training_setting_the_trainer_has():
    """`[training]` settings reach the training subprocess by name; the trainer's other knobs are not settings."""
    from dataclasses import fields

    from settings import TrainingSettings
    from trainer.config import TrainConfig

    values = {"epochs": 2.5, "learning_rate": 3e-4, "lora_r": 8, "lora_alpha": 8, "lora_dropout": 0.1, "lora_targets": "mlp",
              "max_seq_len": 512, "batch_tokens": 512, "min_steps": 7, "max_passes": 3.0, "seed": 5, "anchor_kl": 1.5}
    config = TrainConfig.from_dict(job.train_config(TrainingSettings(**values)))
    assert {k: getattr(config, k) for k in values} == values
    assert {f.name for f in fields(TrainConfig)} - set(TrainingSettings.model_fields) == {
        "max_steps", "warmup_ratio", "min_lr_ratio", "weight_decay", "max_grad_norm", "autocast"}
