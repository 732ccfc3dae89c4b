"""Classes: one lesson, several students. Each trainable student is trained on the approved lesson
with its own adapter lineage and gate; a teacher marked `train_on_outputs = false` contributes no
training targets. Real SQLite, real trainer and evaluation subprocesses on a tiny model; the
teachers are scripted.
"""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from app import open_app
from backends.registry import ModelRegistry
from cli.commands import cmd_versions
from settings import ModelSpec, Settings, TrainingSettings
from storage import lessons as lq
from storage import training as tq
from storage import votes as v
from tests.scripted import ScriptedBackend
from tests.tiny import build_tiny_model
from trainer import job
from trainer.data import IGNORE, tokenize_example

GATE = "The gate code of Vellmoor is 4471."
FERRY = "Ada Quill runs the Vellmoor ferry."


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), with_eos=True)


def quiz_writer(messages):
    return "Q: What is the gate code of Vellmoor?\nA: 4471"


@pytest.fixture
async def app(tmp_path, tiny_dir):
    def student(name: str) -> ModelSpec:
        return ModelSpec(name=name, backend="local", path=tiny_dir, device="cpu", trainable=True,
                         generation={"max_new_tokens": 8, "temperature": 0.0})

    specs = {
        "prof": ModelSpec(name="prof", backend="local", path="scripted"),
        "lawyer": ModelSpec(name="lawyer", backend="local", path="scripted", train_on_outputs=False),
        "kid": student("kid"),
        "kat": student("kat"),
    }
    settings = Settings(home=tmp_path / "home", models=specs, lessons={"default_teacher": "prof", "default_student": "kid"},
                        training=TrainingSettings(epochs=2, min_steps=0, learning_rate=1e-3, max_seq_len=256, batch_tokens=512,
                                                  control_margin=1.0))  # a random tiny model's control answers are noise
    backends = {"prof": ScriptedBackend("prof", quiz_writer), "lawyer": ScriptedBackend("lawyer", quiz_writer)}
    async with open_app(settings, models=ModelRegistry(specs, cache_dir=settings.cache_dir, backends=backends)) as ctx:
        yield ctx


async def approved_class_lesson(app, students: list[str], sections: list[tuple[str, str, str]],
                                corrector: str | None = None) -> int:
    """A finished, approved rotate lesson; each section is (teacher, student, fact). A `corrector`
    teacher gives the third turn of every section instead."""
    teachers = list(dict.fromkeys([*(t for t, _, _ in sections), *([corrector] if corrector else [])]))
    lid = await app.store.call(lq.create_lesson, topic="Vellmoor", teachers=teachers, students=students,
                               max_turns=3 * len(sections), mode="rotate")
    await app.store.call(lq.set_syllabus, lid, [{"title": f"Part {i}", "text": f} for i, (_, _, f) in enumerate(sections)])
    for i, (teacher, student, fact) in enumerate(sections):
        for role, speaker, content in (("teacher", teacher, fact + " Got it?"), ("student", student, "Can you repeat?"),
                                       ("teacher", corrector or teacher, "Yes. " + fact)):
            await app.store.call(lq.add_turn, lesson_id=lid, speaker=speaker, role=role, content=content, section=i,
                                 kind="explain" if role == "teacher" else "reply")
    await app.store.call(lq.finish_lesson, lid, "finished")
    await app.store.call(v.record_decision, lid, "curator", "approve")
    return lid


def learned_text(tokenizer, record: dict) -> str:
    """The characters a training record actually puts loss on."""
    ids, labels = tokenize_example(tokenizer, record["messages"], 4096)
    return tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != IGNORE])


@pytest.mark.slow  # two real training runs, each with its evaluation subprocess
async def test_two_students_each_train_and_promote_independently_and_a_blocked_teacher_trains_nothing(app, tiny_dir, capsys):
    lesson = await approved_class_lesson(app, ["kid", "kat"], [("prof", "kid", GATE), ("prof", "kat", FERRY)],
                                         corrector="lawyer")

    first = await job.train_all(app, "test")
    assert [(r.student, r.status) for r in first] == [("kid", "promoted"), ("kat", "promoted")], [r.reason for r in first]
    kid = await app.store.call(tq.active_adapter, "kid")
    kat = await app.store.call(tq.active_adapter, "kat")
    assert kid["version"] == kat["version"] == 1 and kid["path"] != kat["path"] and kid["run_id"] != kat["run_id"]
    assert Path(kid["path"]).parent.name == "kid" and Path(kat["path"]).parent.name == "kat"
    for result in first:
        run = await app.store.call(tq.get_run, result.run_id)
        assert run["student"] == result.student and run["lesson_ids"] == [lesson]
        assert run["sources"] == {"prof": 1.0}  # provenance: the lawyer's turns trained no one
        assert (Path(result.adapter) / "evaluation.json").is_file()  # each student passed its own gate

    # the lawyer's corrections are in the data as context, but not one of their tokens is learned
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    rows = [json.loads(line) for line in (app.settings.home / "runs" / str(first[1].run_id) / "dataset.jsonl").open()]
    lawyer = [m["content"] for r in rows for m in r["messages"] if m["content"].startswith("Yes. ")]
    assert set(lawyer) == {"Yes. " + FERRY, "Yes. " + GATE}
    learned = "".join(learned_text(tokenizer, r) for r in rows)
    assert GATE + " Got it?" in learned and FERRY + " Got it?" in learned  # prof's explanations
    assert "Yes." not in learned

    # provenance, as `classroom versions` shows it
    capsys.readouterr()
    await cmd_versions(app.settings, Namespace(student="kat"))
    assert "taught by prof 100%" in capsys.readouterr().out.splitlines()[0]


def test_models_shows_the_train_on_outputs_flag_and_api_teachers_without_it_are_warned_about(tmp_path):
    from plugins.models._cog import _describe
    from settings import terms_warnings

    def api(name: str, **extra) -> ModelSpec:
        return ModelSpec(name=name, backend="openai", model="m", base_url="http://x", **extra)

    models = {"open": api("open"), "closed": api("closed", train_on_outputs=False), "fine": api("fine", train_on_outputs=True),
              "kid": ModelSpec(name="kid", backend="local", path="p", trainable=True)}
    settings = Settings(home=tmp_path, models=models, lessons={"default_teacher": "open", "default_student": "kid"})
    [warning] = terms_warnings(settings)
    assert warning.startswith("models.open: API teacher without `train_on_outputs`") and "terms" in warning
    assert "train_on_outputs = false: its outputs are never used for training" in _describe(models["closed"], {})
    assert "the provider's terms apply" in _describe(models["open"], {})
    assert "train_on_outputs" not in _describe(models["fine"], {})
