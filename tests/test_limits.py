"""Abuse limits: per-member cooldowns, the per-server cap on running lessons, daily token budgets for paid teachers."""

from __future__ import annotations

import pytest

import backends.openai_backend  # noqa: F401  (imported up front: the bot's first import of openai takes seconds)
from lessons.budget import BudgetExceeded, TokenBudget
from settings import ModelSpec
from storage import AsyncStore, open_db
from storage import lessons as q
from storage import usage as uq
from tests import discord_fixtures as fixtures
from tests.discord_fixtures import reply_to
from tests.fakeopenai import _usage
from tests.test_discord_quiz import seed_lessons

pytestmark = pytest.mark.simcord(settle_timeout=fixtures.SETTLE)


def lesson_count(classroom) -> int:
    with classroom.db() as db:
        return db.execute("SELECT COUNT(*) FROM lessons").fetchone()[0]


# ---- cooldowns


@pytest.mark.parametrize("classroom_settings", [{"discord": {"lesson_cooldown_seconds": 60}}], indirect=True)
async def test_a_member_waits_between_two_lessons_and_others_do_not(classroom):
    await classroom.start_lesson(turns=1)
    await classroom.run_out()

    again = reply_to(await classroom.start_lesson(topic="bonds", turns=1))
    assert again.ephemeral
    assert again.content.startswith("One lesson at a time: you can start another in ")
    assert lesson_count(classroom) == 1, "a refused lesson stores nothing"
    assert "started" in reply_to(await classroom.start_lesson(classroom.bob, topic="bonds", turns=1)).content
    await classroom.run_out()

    await classroom.env.advance_time(60)
    assert "started" in reply_to(await classroom.start_lesson(topic="gold", turns=1)).content
    assert lesson_count(classroom) == 3


@pytest.mark.parametrize("classroom_settings", [{"discord": {"lesson_cooldown_seconds": 60}}], indirect=True)
async def test_a_refused_lesson_does_not_start_the_cooldown(classroom):
    refused = reply_to(await classroom.start_lesson(topic=""))
    assert refused.content == "That lesson can't start: the topic is empty."
    assert "started" in reply_to(await classroom.start_lesson(turns=1)).content


@pytest.fixture(autouse=True)
def no_nightly_schedule(monkeypatch):
    monkeypatch.setenv("CLASSROOM_NO_SCHEDULER", "1")


@pytest.mark.parametrize("classroom_settings", [{"discord": {"quiz_cooldown_seconds": 120}}], indirect=True)
async def test_a_member_waits_between_two_quizzes(classroom):
    seed_lessons(classroom)
    quiz = classroom.guild.create_text_channel("quiz")
    first = await classroom.alice.slash(classroom.channel, "quiz start", topic="Vellmoor", seconds=10)
    assert "Quiz #1" in first.response.content

    again = await classroom.alice.slash(quiz, "quiz start", topic="Vellmoor", seconds=10)
    assert again.ephemeral and again.response.content.startswith("One quiz at a time: you can start another in ")
    other = await classroom.bob.slash(quiz, "quiz start", topic="Vellmoor", seconds=10)
    assert "Quiz #2" in other.response.content
    await classroom.alice.slash(classroom.channel, "quiz stop")
    await classroom.bob.slash(quiz, "quiz stop")
    await classroom.env.advance_time(120)
    assert "Quiz #3" in (await classroom.alice.slash(quiz, "quiz start", topic="Vellmoor", seconds=10)).response.content
    await classroom.alice.slash(quiz, "quiz stop")


# ---- concurrent lessons per server


@pytest.mark.parametrize("classroom_settings", [{"lessons": {"max_concurrent_per_guild": 2}}], indirect=True)
async def test_a_server_runs_at_most_its_limit_of_lessons_at_once(classroom):
    classroom.teacher.word_seconds = 5  # lessons stay running while the others ask
    other = classroom.guild.create_text_channel("other")
    assert "started" in reply_to(await classroom.start_lesson()).content
    assert "started" in reply_to(await classroom.bob.slash(other, "lesson start", topic="bonds")).content

    third = reply_to(await classroom.carol.slash(other, "lesson start", topic="gold"))
    assert third.ephemeral and third.content == (
        "2 lessons are already running in this server (the limit is 2). "
        "Wait for one to finish, or stop one with `/lesson stop`."
    )
    assert lesson_count(classroom) == 2
    await classroom.alice.slash(classroom.channel, "lesson stop", id=1)
    await classroom.bob.slash(other, "lesson stop", id=2)
    await classroom.run_out()
    assert "started" in reply_to(await classroom.carol.slash(other, "lesson start", topic="gold", turns=1)).content


# ---- daily token budgets


def paid_settings(tmp_path, base_url: str, *, model_budget: int | None = None, server_budget: int | None = None):
    """A paid teacher `prof` at the fake OpenAI server, the scripted student `kid`."""
    settings = fixtures.make_settings(tmp_path / "home", lessons={"daily_token_budget": server_budget})
    prof = ModelSpec(name="prof", backend="openai", model="fake-model", base_url=base_url, max_retries=0,
                     daily_token_budget=model_budget, persona={"display_name": fixtures.PERSONAS["prof"]})
    return settings.model_copy(update={"models": {**settings.models, "prof": prof}})


@pytest.fixture
def budget_server(fake_openai):
    fake_openai.set_reply(lambda messages: fixtures.teacher_reply(messages))
    return fake_openai


async def use_paid_teacher(classroom, settings) -> None:
    """Restart the bot with the teacher `prof` served by the fake server (only the student stays scripted)."""
    classroom.factory.settings = settings
    classroom.factory.backends = {"kid": classroom.student}
    await classroom.restart()


def spent(classroom, model: str = "prof") -> int:
    with classroom.db() as db:
        return uq.tokens_used(db, classroom.guild.id, uq.utc_day(), model)


HTTP_SETTLE = pytest.mark.simcord(settle_timeout=0.9)
"""The paid teacher answers over real HTTP: give each step more real time, still under the 1 s edit interval."""


@HTTP_SETTLE
@pytest.mark.parametrize("scope", ["model", "server"])
async def test_a_spent_budget_stops_the_running_lesson_and_refuses_new_ones(classroom, budget_server, monkeypatch,
                                                                          tmp_path, scope):
    # Measure what planning and one teaching turn cost, then allow a bit more than that.
    budget = 120
    limits = {"model_budget": budget} if scope == "model" else {"server_budget": budget}
    await use_paid_teacher(classroom, paid_settings(tmp_path, budget_server.base_url, **limits))

    await classroom.start_lesson(turns=9)
    await classroom.run_out()

    with classroom.db() as db:
        lesson = q.get_lesson(db, 1)
        turns = q.turns(db, 1)
    assert lesson["status"] == "stopped"
    assert lesson["reason"].startswith("this server has used its daily token budget for ")
    assert lesson["reason"].endswith("; it resets at midnight UTC")
    assert 0 < len(turns) < 9, "the lesson ran until the budget was spent, then stopped"
    used = spent(classroom)
    assert used >= budget
    # Every paid call counted: the plan plus each teacher turn, as the server reported the usage.
    plan = _usage(budget_server.chat_requests[0], fixtures.PLAN)["total_tokens"]
    teaching = sum(t["prompt_tokens"] + t["completion_tokens"] for t in turns if t["role"] == "teacher")
    assert used == plan + teaching
    assert "daily token budget" in classroom.summary().embeds[0].description

    refused = reply_to(await classroom.start_lesson(classroom.bob, topic="bonds"))
    assert refused.ephemeral and refused.content.startswith("That lesson can't start: this server has used its daily "
                                                            "token budget for ")
    assert lesson_count(classroom) == 1

    # A new UTC day resets the budget.
    monkeypatch.setattr(uq, "utc_day", lambda when=None: "2999-01-01")
    assert "started" in reply_to(await classroom.start_lesson(classroom.bob, topic="bonds", turns=1)).content
    await classroom.run_out()


async def test_free_models_and_other_servers_do_not_count(tmp_path):
    settings = paid_settings(tmp_path, "http://127.0.0.1:9/v1", model_budget=100)
    store = AsyncStore(open_db(tmp_path / "budget.db"))
    days = iter(["2026-01-01"] * 10)
    budget = TokenBudget(store, settings, today=lambda: next(days))
    try:
        from backends.base import Usage

        await budget.record(1, "kid", Usage(prompt_tokens=500, completion_tokens=500))  # local: free
        await budget.record(None, "prof", Usage(prompt_tokens=500, completion_tokens=500))  # the CLI: no server
        await budget.record(2, "prof", Usage(prompt_tokens=60, completion_tokens=50))  # another server
        await budget.check(1, ["prof", "kid"])
        with pytest.raises(BudgetExceeded, match=r"for 'prof' \(110 of 100 tokens today\)"):
            await budget.check(2, ["prof", "kid"])
        await budget.check(2, ["kid"])  # a lesson of free models only goes on
    finally:
        store.close()


@HTTP_SETTLE
async def test_budgets_are_off_by_default(classroom, budget_server, tmp_path):
    await use_paid_teacher(classroom, paid_settings(tmp_path, budget_server.base_url))
    await classroom.start_lesson(turns=4)
    await classroom.run_out()
    with classroom.db() as db:
        assert q.get_lesson(db, 1)["status"] == "finished"
    assert spent(classroom) > 0  # still counted, for the day someone sets a budget
