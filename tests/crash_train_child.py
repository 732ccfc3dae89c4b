"""The training side the crash harness kills: nightly runs and adapter swaps on a tiny model, until SIGKILL.

`run(home, tiny_dir, acks, seed)` opens the app as the bot does (marking cut-off runs interrupted),
then loops: either swaps the live adapter to a random version (as /student rollback does) or
approves a new lesson and trains on it (the trainer subprocess, the gate, the promotion). JSON lines
in ACKS, each written after the fact it reports:
  {"ready": [run ids marked interrupted]}
  {"intent": v}  /  {"active": v}        a swap to version v (None: base) is about to start / done
  {"training": true}                      a run starts (it may promote a new version)
  {"spawned": pid}                        its trainer subprocess (own process group; the parent kills it too)
  {"trained": status, "active": v}        the run ended and v is live
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

import peft  # noqa: F401  (imported once in the fork server: a forked start costs no imports)
import transformers  # noqa: F401

import backends.local  # noqa: F401
from app import open_app
from backends.registry import ModelRegistry
from settings import ModelSpec, Settings, TrainingSettings
from storage import lessons as lq
from storage import training as tq
from storage import votes as v
from tests.crash_child import Acks
from tests.scripted import ScriptedBackend
from trainer import job


def quiz_writer(messages: Any) -> str:
    """The scripted teacher writing held-out quiz items for the gate."""
    return "Q: What is the gate code of Vellmoor?\nA: 4471\nQ: Who runs the Vellmoor ferry?\nA: Ada Quill"


def settings_for(home: Path, tiny_dir: str) -> Settings:
    """A scripted teacher and the tiny trainable student `kid`."""
    specs = {
        "prof": ModelSpec(name="prof", backend="local", path="scripted", persona={"display_name": "Prof"}),
        "kid": ModelSpec(name="kid", backend="local", path=tiny_dir, device="cpu", trainable=True,
                         generation={"max_new_tokens": 8, "temperature": 0.0}),
    }
    return Settings(home=home, models=specs, lessons={"default_teacher": "prof", "default_student": "kid"},
                    training=TrainingSettings(epochs=1, min_steps=0, learning_rate=1e-3, max_seq_len=256, batch_tokens=512))


def approved_lesson(db: Any, n: int) -> int:
    """A finished lesson a curator approved, with one new fact."""
    facts = f"The gate code of Vellmoor number {n} is {4400 + n}."
    lid = lq.create_lesson(db, topic="Vellmoor", teachers=["prof"], students=["kid"], max_turns=3)
    lq.set_syllabus(db, lid, [{"title": "The gate", "text": facts}])
    for role, speaker, content in (("teacher", "prof", facts + " What is the code?"), ("student", "kid", "Is it it?"),
                                   ("teacher", "prof", "Yes. " + facts)):
        lq.add_turn(db, lesson_id=lid, speaker=speaker, role=role, content=content, section=0)
    lq.finish_lesson(db, lid, "finished")
    v.record_decision(db, lid, "curator", "approve")
    return lid


async def main(home: Path, tiny_dir: str, acks_path: Path, seed: int) -> None:
    """Swap and train until killed."""
    ack = Acks(acks_path)
    rng = random.Random(seed)
    settings = settings_for(home, tiny_dir)
    registry = ModelRegistry(settings.models, cache_dir=settings.cache_dir,
                             backends={"prof": ScriptedBackend("prof", quiz_writer)})
    async with open_app(settings, models=registry) as app:
        ack(ready=await app.store.call(tq.mark_running_runs_interrupted))
        await app.models.backend("kid")  # the live student, with its active adapter: swaps load into it
        n = seed * 1000
        while True:
            if seed % 2 == 0 or rng.random() < 0.3:  # even starts: a storm of swaps; odd: mostly training
                versions = [a["version"] for a in await app.store.call(tq.adapters, "kid") if a["status"] != "deleted"]
                target = rng.choice([None, *versions])
                ack(intent=target)
                await job.rollback(app, "kid", target)
                ack(active=target)
                continue
            n += 1
            await app.store.call(approved_lesson, n)
            ack(training=True)

            def spawned(event: dict[str, Any]) -> None:
                if event.get("event") == "spawned":
                    ack(spawned=event["pid"])

            result = await job.train_student(app, "kid", "crash", spawned)
            active = await app.store.call(tq.active_adapter, "kid")
            ack(trained=result.status, active=active["version"] if active else None)


def run(home: str, tiny_dir: str, acks: str, seed: int, log: str | None = None) -> None:
    """Entry point for a forked child."""
    if log is not None:
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(out, 1)
        os.dup2(out, 2)
    asyncio.run(main(Path(home), tiny_dir, Path(acks), seed))
