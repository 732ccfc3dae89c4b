"""Crashes lose nothing: /lesson resume in process, and a harness that SIGKILLs the bot at random points."""

from __future__ import annotations

import pytest

from storage import lessons as q
from tests import discord_fixtures as fixtures
from tests.discord_fixtures import reply_to

pytestmark = pytest.mark.simcord(settle_timeout=fixtures.SETTLE)


async def test_an_interrupted_lesson_says_so_and_its_starter_resumes_it(classroom):
    classroom.teacher.word_seconds = 1
    await classroom.start_lesson(turns=6)
    for _ in range(40):
        await classroom.env.advance_time(1)
        with classroom.db() as db:
            if len(q.turns(db, 1)) >= 2:
                break
    thread = classroom.lesson_thread()
    await classroom.env.bot.close()  # the bot goes down mid-lesson
    await classroom.restart()

    with classroom.db() as db:
        assert q.get_lesson(db, 1)["status"] == "interrupted"
        kept = [t["content"] for t in q.turns(db, 1)]
    assert 2 <= len(kept) < 6
    assert any("resume it with `/lesson resume lesson:1`" in m.content for m in thread.history())

    refused = reply_to(await classroom.bob.slash(classroom.channel, "lesson resume", lesson=1))
    assert "Only the member who started lesson #1 or a curator" in refused.content
    assert "no lesson #7" in reply_to(await classroom.alice.slash(classroom.channel, "lesson resume", lesson=7)).content

    resumed = reply_to(await classroom.alice.slash(classroom.channel, "lesson resume", lesson=1))
    assert f"Lesson #1 resumes in <#{thread.id}>" in resumed.content
    await classroom.run_out()

    with classroom.db() as db:
        lesson, turns = q.get_lesson(db, 1), q.turns(db, 1)
    assert lesson["status"] == "finished"
    assert [t["seq"] for t in turns] == list(range(1, 7)) and [t["content"] for t in turns[: len(kept)]] == kept
    assert any(f"resumes after turn {len(kept)}" in m.content for m in thread.history())
    assert classroom.summary(thread)
    again = reply_to(await classroom.carol.slash(classroom.channel, "lesson resume", lesson=1))
    assert "Lesson #1 is finished; only a lesson interrupted by a restart can be resumed." in again.content
