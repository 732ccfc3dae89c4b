"""Lesson directions (LLM→SLM, SLM→LLM, LLM→LLM, SLM→SLM) from model sizes, and the warning for a
small ungrounded teacher, in the engine's helpers, the Discord header and the CLI."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from backends.registry import ModelRegistry
from lessons.direction import lesson_direction, model_size, safetensors_parameters
from settings import BUNDLED_MODEL, ModelSpec
from tests import discord_fixtures as fixtures
from tests.discord_fixtures import make_settings, make_spec
from tests.test_cli import classroom, teacher_reply


def fake_checkpoint(directory: Path, *shapes: list[int]) -> str:
    """A model directory whose safetensors header declares `shapes` (no tensor data is needed to size it)."""
    directory.mkdir(parents=True, exist_ok=True)
    header = {f"w{i}": {"dtype": "BF16", "shape": shape, "data_offsets": [0, 0]} for i, shape in enumerate(shapes)}
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    return str(directory)


@pytest.fixture
def registry(tmp_path):
    big = fake_checkpoint(tmp_path / "big", [128_000, 8192], [32, 8192, 8192])  # 1.05B + 2.1B
    small = fake_checkpoint(tmp_path / "small", [49_152, 576], [30, 576, 1536])
    specs = {
        "api-big": ModelSpec(name="api-big", backend="openai", model="m", base_url="http://x", size_class="large"),
        "api-small": ModelSpec(name="api-small", backend="openai", model="m", base_url="http://x", size_class="small"),
        "api-unsized": ModelSpec(name="api-unsized", backend="openai", model="m", base_url="http://x"),
        "local-big": ModelSpec(name="local-big", backend="local", path=big, trainable=True),
        "local-small": ModelSpec(name="local-small", backend="local", path=small, trainable=True),
        "bundled": ModelSpec(name="bundled", backend="local", path=BUNDLED_MODEL),
        "local-declared": ModelSpec(name="local-declared", backend="local", path=small, size_class="large"),
    }
    return ModelRegistry(specs, cache_dir=tmp_path / "cache")


def test_sizes_come_from_parameter_counts_for_local_models_and_size_class_for_api_models(registry, tmp_path):
    assert safetensors_parameters(Path(registry.spec("local-small").path)) == 49_152 * 576 + 30 * 576 * 1536
    assert model_size(registry, "local-big").size_class == "LLM"
    assert model_size(registry, "local-big").parameters > 3_000_000_000
    assert model_size(registry, "local-small").label() == "SLM, 55M"
    assert model_size(registry, "bundled").label() == "SLM, 135M"
    assert model_size(registry, "api-big").label() == "LLM" and model_size(registry, "api-small").label() == "SLM"
    assert model_size(registry, "api-unsized").size_class == "LLM"  # an API model without a size class
    assert model_size(registry, "local-declared").size_class == "LLM"  # a configured size class wins


@pytest.mark.parametrize(
    ("teachers", "students", "label"),
    [(["api-big"], ["local-small"], "LLM→SLM"), (["local-small"], ["local-big"], "SLM→LLM"),
     (["api-big"], ["local-big"], "LLM→LLM"), (["bundled"], ["local-small"], "SLM→SLM"),
     (["api-big", "api-small"], ["local-small", "local-big"], "LLM+SLM→LLM+SLM")],
)
def test_every_direction_is_named(registry, teachers, students, label):
    assert lesson_direction(registry, teachers, students, grounded=True).label == label


def test_an_ungrounded_teacher_smaller_than_its_student_is_warned_about(registry):
    warned = lesson_direction(registry, ["local-small"], ["local-big"], grounded=False).warnings
    assert len(warned) == 1 and "teacher local-small (SLM, 55M) is smaller than student local-big" in warned[0]
    assert lesson_direction(registry, ["local-small"], ["local-big"], grounded=True).warnings == []
    # same class, compared by parameter count: the 135M bundled model is bigger than the 55M student
    assert lesson_direction(registry, ["bundled"], ["local-small"], grounded=False).warnings == []
    assert lesson_direction(registry, ["local-small"], ["bundled"], grounded=False).warnings != []


# ---- Discord: the header names the direction, and the member is warned


@pytest.fixture
def classroom_settings(tmp_path):
    settings = make_settings(tmp_path / "home")
    big_kid = make_spec("kid").model_copy(update={"size_class": "large"})
    small_prof = make_spec("prof").model_copy(update={"size_class": "small"})
    return settings.model_copy(update={"models": {"prof": small_prof, "kid": big_kid}})


@pytest.mark.simcord(settle_timeout=fixtures.SETTLE)
async def test_discord_header_names_the_direction_and_warns_about_a_small_ungrounded_teacher(classroom):
    result = await classroom.start_lesson(turns=3)
    await classroom.run_out()
    header = classroom.channel.history()[0]
    assert "Professor Prof teaches Kid the Student · **SLM→LLM**" in header.content
    reply = fixtures.reply_to(result).content
    assert "⚠️ teacher prof (SLM) is smaller than student kid (LLM)" in reply


# ---- CLI


def test_cli_lesson_prints_the_direction(tmp_path, fake_openai):
    fake_openai.set_reply(teacher_reply)
    cfg = tmp_path / "classroom.toml"
    models = "".join(
        f'[models.{n}]\nbackend = "openai"\nmodel = "fake"\nbase_url = "{fake_openai.base_url}"\nmax_retries = 1\n'
        f'size_class = "{size}"\npersona.display_name = "{n.capitalize()}"\n' for n, size in (("prof", "small"), ("kid", "large")))
    cfg.write_text(f'home = "{tmp_path / "home"}"\n[lessons]\ndefault_teacher = "prof"\ndefault_student = "kid"\n{models}')
    run = classroom(cfg, "lesson", "--topic", "what a stock is", "--turns", "3", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout.splitlines()[-1])["direction"] == "SLM→LLM"
    assert "direction: SLM→LLM (prof: SLM; kid: LLM)" in run.stderr
    assert "warning: teacher prof (SLM) is smaller than student kid (LLM)" in run.stderr
