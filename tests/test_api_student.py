"""API students: approved lessons → chat JSONL upload → fine-tuning job → gate → the student's model id.

Everything is real but the provider: SQLite, the job, the registry and the OpenAI client, talking
HTTP to tests/fakeopenai.py, whose chat answers depend on the model a request names.
"""

from __future__ import annotations

import json

import pytest

from app import open_app
from backends.registry import ModelRegistry
from quiz import items as quiz_items
from settings import ConfigError, ModelSpec, Settings, load_settings
from storage import lessons as lq
from storage import training as tq
from storage import votes as v
from tests.scripted import ScriptedBackend
from tests.test_training_job import approved_lesson  # the same approved one-section lesson
from trainer import job

FACT = "The gate code of Vellmoor is 4471."
CONTROL = {c["question"]: " and ".join(k.split("|")[0] for k in c["keywords"]) for c in quiz_items.control_set()}


def quiz_writer(messages):
    return "Q: What is the gate code of Vellmoor?\nA: 4471"


def provider(knows_lesson: bool, keeps_general: bool = True):
    """A fake endpoint's reply function: the base model knows general facts only; a fine-tuned
    one knows the lesson (or not) and keeps its general knowledge (or not)."""
    def reply(messages, body):
        question = messages[-1]["content"]
        tuned = body["model"].startswith("ft:")
        if "Vellmoor" in question:  # the held-out items
            return "4471" if tuned and knows_lesson else "I don't know."
        if question in CONTROL:
            return CONTROL[question] if keeps_general or not tuned else "I don't know."
        return f"{body['model']} says hi"
    return reply


@pytest.fixture
async def app(tmp_path, fake_openai):
    specs = {
        "prof": ModelSpec(name="prof", backend="local", path="scripted", persona={"display_name": "Prof"}),
        "kid": ModelSpec(name="kid", backend="openai", model="base-chat", base_url=fake_openai.base_url, trainable=True,
                         persona={"display_name": "Kid"},
                         fine_tune={"base_model": "base-2024", "poll_seconds": 0.01, "hyperparameters": {"n_epochs": 3}}),
    }
    settings = Settings(home=tmp_path / "home", models=specs, lessons={"default_teacher": "prof", "default_student": "kid"})
    registry = ModelRegistry(specs, cache_dir=settings.cache_dir, env={},
                             backends={"prof": ScriptedBackend("prof", quiz_writer)})
    async with open_app(settings, models=registry) as ctx:
        yield ctx


async def model_asked(app, server) -> str:
    """The model id the live student's next request names."""
    await (await app.models.backend("kid")).chat([{"role": "user", "content": "hello"}])
    return server.chat_requests[-1]["model"]


async def test_approved_lesson_is_uploaded_fine_tuned_gated_and_promoted(app, fake_openai):
    lid = await approved_lesson(app)
    first = (await app.store.call(lq.turns, lid))[0]
    await app.store.call(v.set_vote, "turn", first["id"], "member-1", -1)  # kept as context, not learned
    fake_openai.set_reply(provider(knows_lesson=True))
    assert await model_asked(app, fake_openai) == "base-chat"  # the live student, built before training
    events = []

    result = await job.train_student(app, "kid", progress=events.append)

    assert result.status == "promoted", result.reason
    upload = next(iter(fake_openai.files.values()))
    assert upload.purpose == "fine-tune"
    assert [json.loads(line) for line in upload.content.decode().splitlines()] == [{"messages": [
        {"role": "system", "content": "You are Kid. Answer briefly and accurately."},
        {"role": "user", "content": "Teach me about The gate (Vellmoor)."},  # the notes are not in the prompt
        {"role": "assistant", "content": FACT + " What is the code?", "weight": 0},
        {"role": "user", "content": "Is it 4471?"},
        {"role": "assistant", "content": "Yes. " + FACT, "weight": 1},
    ]}]
    created = next(r for r in fake_openai.requests if r.path == "/v1/fine_tuning/jobs")
    assert created["model"] == "base-2024" and created["training_file"] == upload.id
    assert created["suffix"] == "classroom" and created["hyperparameters"] == {"n_epochs": 3}
    polls = [r for r in fake_openai.requests if r.method == "GET" and r.path.startswith("/v1/fine_tuning/jobs/")]
    assert len(polls) == 2  # running, then succeeded
    tuned = "ft:base-2024:fake:classroom:ftjob-1"
    assert result.adapter == tuned and result.version == 1
    assert result.before["topic"] == 0.0 and result.after["topic"] == 1.0
    assert [e["stage"] for e in events if e["stage"] in ("upload", "evaluate")] == ["upload", "evaluate"]
    assert any("succeeded" in e["message"] for e in events)
    run = await app.store.call(tq.get_run, result.run_id)
    assert run["status"] == "promoted" and run["adapter_id"] == result.adapter_id and run["examples"] == result.examples
    assert (await app.store.call(tq.active_adapter, "kid"))["path"] == tuned
    assert await model_asked(app, fake_openai) == tuned  # the very next request, no restart

    assert (await job.train_student(app, "kid")).status == "skipped"  # nothing new, no second job
    assert len(fake_openai.jobs) == 1
    assert await job.rollback(app, "kid", None) is None
    assert await model_asked(app, fake_openai) == "base-chat"
    await job.rollback(app, "kid", 1)
    assert await model_asked(app, fake_openai) == tuned


async def test_failed_job_leaves_the_student_unchanged(app, fake_openai):
    await approved_lesson(app)
    fake_openai.set_reply(provider(knows_lesson=True))
    fake_openai.set_fine_tune("validating_files", "failed", error="Training file has too few examples")

    result = await job.train_student(app, "kid")

    assert result.status == "failed"
    assert result.reason == "fine-tuning failed: job ftjob-1 failed: Training file has too few examples"
    run = await app.store.call(tq.get_run, result.run_id)
    assert run["status"] == "failed" and run["reason"] == result.reason
    assert await app.store.call(tq.adapters, "kid") == []
    assert await model_asked(app, fake_openai) == "base-chat"
    assert not any(r["model"].startswith("ft:") for r in fake_openai.chat_requests)  # never quizzed


async def test_worse_fine_tuned_model_is_rejected(app, fake_openai):
    await approved_lesson(app)
    fake_openai.set_reply(provider(knows_lesson=True, keeps_general=False))

    result = await job.train_student(app, "kid")

    assert result.status == "rejected"
    assert result.before["control"] == 1.0 and result.after["control"] == 0.0
    assert "control score fell" in result.reason
    assert [a["status"] for a in await app.store.call(tq.adapters, "kid")] == ["rejected"]
    assert await model_asked(app, fake_openai) == "base-chat"


async def test_job_past_its_time_limit_is_cancelled_and_the_run_fails(app, fake_openai):
    await approved_lesson(app)
    kid = app.models.specs["kid"]
    app.models.specs["kid"] = kid.model_copy(update={"fine_tune": kid.fine_tune.model_copy(update={"max_hours": 1e-5})})
    fake_openai.set_fine_tune("validating_files", "running")  # never ends

    result = await job.train_student(app, "kid")

    assert result.status == "failed" and "did not finish within" in result.reason
    assert fake_openai.jobs["ftjob-1"]["status"] == "cancelled"
    assert await app.store.call(tq.adapters, "kid") == []


def test_fine_tune_options_belong_to_trainable_api_models(tmp_path):
    cfg = tmp_path / "c.toml"
    api = '[lessons]\ndefault_student = "x"\n[models.x]\nbackend = "openai"\nmodel = "m"\nbase_url = "http://127.0.0.1:1/v1"\n'
    cfg.write_text(api + 'trainable = true\nfine_tune = { suffix = "kid", poll_seconds = 5 }\n')
    assert load_settings(cfg, env={}).models["x"].fine_tune.poll_seconds == 5
    cfg.write_text(api + 'fine_tune = { suffix = "kid" }\n')
    with pytest.raises(ConfigError, match=r"models\.x: `fine_tune` is only for trainable models with backend 'openai'"):
        load_settings(cfg, env={})
    cfg.write_text(api + 'trainable = true\nfine_tune = { poll_seconds = 0 }\n')
    with pytest.raises(ConfigError, match=r"models\.x\.fine_tune\.poll_seconds"):
        load_settings(cfg, env={})
