"""Typed configuration: defaults, the example file, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from settings import BUNDLED_MODEL, ConfigError, load_settings

REPO = Path(__file__).resolve().parent.parent


def test_defaults_run_offline_on_the_bundled_model(tmp_path):
    s = load_settings(env={"CLASSROOM_HOME": str(tmp_path)})
    assert s.default_student == "smol" and s.models["smol"].trainable
    assert s.models["smol"].path == BUNDLED_MODEL
    assert s.default_teacher == "smol-teacher"
    assert s.home == tmp_path and s.db_path == tmp_path / "classroom.db"


def test_an_openai_key_makes_gpt_the_default_teacher():
    s = load_settings(env={"OPENAI_API_KEY": "sk-x"})
    assert s.default_teacher == "gpt" and s.models["gpt"].backend == "openai"


def test_example_config_is_valid():
    s = load_settings(REPO / "classroom.example.toml", env={"OPENAI_API_KEY": "sk-x"})
    assert set(s.models) == {"gpt", "smol", "smol-teacher"}
    assert s.training.schedule == "03:00" and s.lessons.approval_threshold == 3


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.toml", env={})


def test_fine_tune_options_on_a_local_model_are_refused(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[models.x]\nbackend = "local"\npath = "p"\ntrainable = true\nfine_tune = { suffix = "x" }\n')
    with pytest.raises(ConfigError, match=r"models\.x: `fine_tune` is only for trainable models with backend 'openai'"):
        load_settings(cfg, env={})


def test_world_readable_config_with_secrets_is_refused_in_strict_mode(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('token = "abc"\n[models.x]\nbackend = "local"\npath = "p"\ntrainable = true\n')
    os.chmod(cfg, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_settings(cfg, env={}, strict_permissions=True)
