"""Shared fixtures. Each area keeps its own fixtures in its own module, imported here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Converted bundled model and other expensive artefacts survive between test runs here (gitignored).
MODEL_CACHE = Path(os.environ.get("CLASSROOM_TEST_CACHE", REPO / ".cache" / "models"))


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """A cache directory shared by every test run, so the GGUF is converted once per machine."""
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    return MODEL_CACHE


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A fresh CLASSROOM_HOME for one test."""
    h = tmp_path / "home"
    h.mkdir()
    return h


from tests.discord_fixtures import (  # noqa: E402,F401  (Discord fixtures shared by the test_discord_* modules)
    bot_factory,
    bot_options,
    classroom,
    classroom_settings,
    scripted_models,
    simcord_bot,
)
from tests.fakeopenai import fake_openai  # noqa: E402,F401  (fixture shared by every test module)
