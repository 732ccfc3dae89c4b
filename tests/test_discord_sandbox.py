"""The offline sandbox: the same bot in simcord's simulated server, served to a browser page (real time, ~5 s)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from simcord import SetupError

from backends.registry import ModelRegistry
from bot import create_bot
from plugins import sandbox
from tests.discord_fixtures import PERSONAS, TimedScript, make_settings, student_reply, teacher_reply

REPO = Path(__file__).resolve().parent.parent


async def act(action, *args, **kwargs):
    """Do what the page does for a member; like the page, try again when the clock pump is mid-tick."""
    for _ in range(50):
        try:
            return await action(*args, **kwargs)
        except SetupError as e:
            if "overlaps" not in str(e):
                raise
            await asyncio.sleep(0.02)
    raise AssertionError("the clock pump never let go")


def test_help_explains_both_modes():
    out = subprocess.run([sys.executable, "bot.py", "--help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "DISCORD_TOKEN" in out and "OFFLINE" in out and "--sync-guild" in out


def test_personas_without_avatars_get_drawn_ones_served_offline(tmp_path):
    settings = make_settings(tmp_path)
    bare = settings.model_copy(update={"models": {
        n: s.model_copy(update={"persona": s.persona.model_copy(update={"avatar_url": None})})
        for n, s in settings.models.items()
    }})

    drawn, assets = sandbox.with_avatars(bare)

    url = drawn.models["prof"].persona.avatar_url
    assert url == f"{sandbox.AVATAR_HOST}/prof.png"
    assert assets[url][1].startswith(b"\x89PNG")


async def test_a_member_runs_a_lesson_and_votes_in_the_sandbox_page(tmp_path, monkeypatch):
    sandbox.model_app_owned_webhooks(monkeypatch)
    settings, assets = sandbox.with_avatars(make_settings(tmp_path / "home"))
    models = {"prof": TimedScript("prof", teacher_reply), "kid": TimedScript("kid", student_reply)}
    running: dict = {}
    bot = create_bot(
        settings,
        models=ModelRegistry(settings.models, cache_dir=settings.cache_dir, backends=models),
        options=sandbox.sandbox_options(running),
    )
    try:
        async with sandbox.open_sandbox(bot, assets, port=0) as page:
            running["env"] = page.env
            pump = asyncio.create_task(sandbox.pump_clock(page.env, every=0.2))
            started = await act(page.you.slash, page.channel, "lesson start", topic="stocks", turns=3)
            assert "Lesson #1 started" in started.response.content  # answered at once: the lesson runs on
            for _ in range(100):
                await asyncio.sleep(0.1)
                if not bot.get_cog("LessonsCog").live:
                    break
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)

            snapshot = await page.preview.snapshot()
            shown = sorted(snapshot["messages"].values(), key=lambda m: int(m["id"]))
            authors = [m["author"] for m in shown if m["author"]["webhook"]]
            assert [a["name"] for a in authors][-3:] == [PERSONAS["prof"], PERSONAS["kid"], PERSONAS["prof"]]
            assert all(a["avatar_available"] for a in authors[-3:])  # drawn avatars, served offline
            turn = next(m for m in page.channel.history() if m.webhook_id and m.components)
            assert {str(r.emoji) for r in turn.reactions} == {"👍", "👎"}  # seeded: the page has no emoji picker
            voted = await act(page.guest.click, turn, custom_id="classroom:vote:turn:1:up")
            assert voted.acknowledged
    finally:
        await bot.close_app()
