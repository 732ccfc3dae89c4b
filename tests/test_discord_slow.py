"""A lesson in Discord with the real bundled SmolLM2 as teacher and student (slow: loads the model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from settings import Settings, load_settings
from storage import lessons as q
from tests.discord_fixtures import reply_to

# Model work runs on the model's own thread, which settling waits for: give it real time.
pytestmark = [pytest.mark.slow, pytest.mark.simcord(settle_timeout=300)]


FAQ = b"""# Opening hours
The Vellmoor library opens at 9 and closes at 17 on weekdays.

# Membership
Membership costs 12 crowns a month and includes two loans at a time.
"""


@pytest.fixture
def classroom_settings(tmp_path: Path, model_cache_dir: Path) -> Settings:
    """The default settings (bundled `smol` student, `smol-teacher`), reusing the converted model cache."""
    home = tmp_path / "home"
    home.mkdir()
    settings = load_settings(path=None, env={"CLASSROOM_HOME": str(home)})
    settings.cache_dir.symlink_to(model_cache_dir, target_is_directory=True)
    return settings


@pytest.fixture
def scripted_models() -> dict:
    """No scripted models: the registry builds the real ones from settings."""
    return {}


async def test_a_three_turn_lesson_with_the_bundled_model(classroom):
    result = await classroom.start_lesson(topic="the Vellmoor library", turns=3, source=("faq.md", FAQ))
    await classroom.run_out(seconds=600)

    assert "Lesson #1 started" in reply_to(result).content
    with classroom.db() as db:
        lesson = q.get_lesson(db, 1)
        turns = q.turns(db, 1)
    assert lesson["status"] == "finished", lesson["reason"]
    assert [t["role"] for t in turns] == ["teacher", "student", "teacher"]
    assert all(t["content"].strip() for t in turns)

    posted = classroom.turn_messages()
    names = classroom.settings.models
    assert [m.author.name for m in posted] == [
        names["smol-teacher"].display_name, names["smol"].display_name, names["smol-teacher"].display_name
    ]
    assert [m.content for m in posted] == [t["content"] for t in turns]
    assert classroom.summary().embeds[0].title == "Lesson #1: the Vellmoor library"
    for r in classroom.env.http_requests:
        body = r.json.get("data", r.json) if isinstance(r.json, dict) else None
        if r.method in ("POST", "PATCH") and isinstance(body, dict) and "content" in body:
            assert body["allowed_mentions"] == {"parse": []}
