"""Lessons as members see them: /lesson start opens a thread where teacher and student post as themselves."""

from __future__ import annotations

import argparse
import re

import pytest

from cli.commands import cmd_show
from plugins.common.context import BotOptions
from storage import lessons as q
from tests import discord_fixtures as fixtures
from tests.discord_fixtures import AVATARS, PERSONAS, STUDENT_ANSWER, button_labels, reply_to

pytestmark = pytest.mark.simcord(settle_timeout=fixtures.SETTLE)


TURN_BUTTON = re.compile(r"classroom:vote:turn:(\d+):up")


def turn_id(message) -> int:
    """The turn a message's vote buttons point at."""
    for custom_id in button_labels(message):
        m = TURN_BUTTON.fullmatch(custom_id)
        if m:
            return int(m.group(1))
    raise AssertionError(f"message {message.id} has no turn buttons")


def executes(classroom):
    """Webhook executions (persona posts), in order."""
    return [r for r in classroom.requests("POST", "/webhooks/") if "simcord_webhook_" in r.path]


async def test_lesson_runs_in_a_thread_with_teacher_and_student_as_separate_personas(classroom):
    result = await classroom.start_lesson(topic="what a stock is")
    await classroom.run_out()

    thread = classroom.lesson_thread()
    assert thread.name == "Lesson #1: what a stock is"
    reply = reply_to(result)
    assert reply.ephemeral and f"Lesson #1 started in <#{thread.id}>" in reply.content

    posts = executes(classroom)
    assert {r.json["username"] for r in posts} == {PERSONAS["prof"], PERSONAS["kid"]}
    assert all(r.params.get("thread_id") == thread.id for r in posts)  # into the lesson thread
    by_persona = {r.json["username"]: (r.path.split("/")[2], r.json["avatar_url"]) for r in posts}
    assert by_persona[PERSONAS["prof"]][1] == AVATARS["prof"] and by_persona[PERSONAS["kid"]][1] == AVATARS["kid"]
    assert by_persona[PERSONAS["prof"]][0] != by_persona[PERSONAS["kid"]][0]  # one webhook per persona

    turns = classroom.turn_messages()
    assert [m.author.name for m in turns[:3]] == [PERSONAS["prof"], PERSONAS["kid"], PERSONAS["prof"]]
    assert turns[0].content == "Here is the point: What a share is. Do you follow?"
    assert turns[1].content == STUDENT_ANSWER
    assert len(turns) == 9

    summary = classroom.summary()  # the bot's own summary lands in the thread
    card = summary.embeds[0]
    assert card.title == "Lesson #1: what a stock is"
    assert "Finished" in card.description and "9 turns" in card.description
    syllabus = next(f.value for f in card.fields if f.name == "Syllabus")
    assert syllabus.splitlines() == ["✓ 1. What a share is", "✓ 2. How prices move", "✓ 3. Dividends"]
    assert set(button_labels(summary)) == {
        "classroom:vote:lesson:1:up", "classroom:vote:lesson:1:down",
        "classroom:decide:1:approve", "classroom:decide:1:reject",
    }

    with classroom.db() as db:
        lesson = q.get_lesson(db, 1)
        stored = q.turns(db, 1)
    assert lesson["status"] == "finished" and lesson["thread_id"] == thread.id
    assert lesson["summary_message_id"] == summary.id
    assert [t["message_id"] for t in stored] == [m.id for m in turns]
    assert [turn_id(m) for m in turns] == [t["id"] for t in stored]


SANDBOX = BotOptions(lesson_threads=False, seed_reactions=True)


@pytest.mark.parametrize("bot_options", [SANDBOX], indirect=True)
async def test_sandbox_mode_posts_the_lesson_in_the_channel_and_seeds_reactions(classroom):
    await classroom.start_lesson(turns=3)
    await classroom.run_out()

    assert classroom.channel.threads == []
    turns = classroom.turn_messages()
    assert len(turns) == 3 and all(m.channel.id == classroom.channel.id for m in turns)
    assert all({str(r.emoji) for r in m.reactions} == {"👍", "👎"} for m in turns)
    assert classroom.summary().channel.id == classroom.channel.id
    with classroom.db() as db:
        assert db.execute("SELECT COUNT(*) FROM votes").fetchone()[0] == 0  # the bot's own reactions don't count


async def test_command_defers_before_the_model_is_first_called(classroom):
    await classroom.start_lesson()
    await classroom.run_out()

    requests = classroom.env.http_requests
    defer = next(i for i, r in enumerate(requests) if r.path.endswith("/callback") and r.json["type"] == 5)
    assert classroom.teacher.seen_at_call, "the teacher was never called"
    assert defer < classroom.teacher.seen_at_call[0]
    assert defer == min(i for i, r in enumerate(requests) if r.path.startswith("/interactions/"))


async def test_turns_stream_with_edits_at_least_a_second_apart(classroom):
    classroom.teacher.replies = ["1. Shares", " ".join(f"word{i}" for i in range(12))]
    classroom.teacher.word_seconds = 0.6  # seven seconds of writing (virtual: longer than SETTLE)
    await classroom.start_lesson(turns=1)
    await classroom.run_out()

    message = classroom.turn_messages()[0]
    requests = classroom.env.http_requests
    post = next(i for i, r in enumerate(requests) if "simcord_webhook_" in r.path and r.json["content"].startswith("word0"))
    edits = [i for i, r in enumerate(requests) if r.method == "PATCH" and str(message.id) in r.path]
    assert 4 <= len(edits) <= 8  # streamed, but never more than once a second over ~7 s (+ the final edit)
    # A write happens right after a word went out; each word carries its (virtual) time and the request count.
    times = [max(t for t, seen in classroom.teacher.words if seen <= index) for index in [post, *edits[:-1]]]
    assert all(b - a >= 1.0 for a, b in zip(times, times[1:], strict=False)), times
    assert message.content == " ".join(f"word{i}" for i in range(12))


async def test_a_long_turn_is_split_at_clean_boundaries_with_code_fences_balanced(classroom):
    paragraph = "Shares are small pieces of a company. " * 20
    code = "```python\n" + "\n".join(f"price_{i} = {i} * 1.05" for i in range(120)) + "\n```"
    long_turn = "\n\n".join([paragraph, paragraph, code, "That is all for this point."])
    classroom.teacher.replies = ["1. Shares", long_turn]
    classroom.teacher.piece_chars = 300
    await classroom.start_lesson(turns=1)
    await classroom.run_out()

    parts = [m for m in classroom.webhook_messages() if m.author.name == PERSONAS["prof"]]
    assert len(parts) >= 3 and all(len(m.content) <= 2000 for m in parts)
    assert all(m.content.count("```") % 2 == 0 for m in parts)
    assert [bool(m.components) for m in parts] == [False] * (len(parts) - 1) + [True]  # buttons after the turn
    rejoined = " ".join(m.content for m in parts).replace("```python", "").replace("```", "")
    assert rejoined.split() == long_turn.replace("```python", "").replace("```", "").split()
    with classroom.db() as db:
        assert q.turns(db, 1)[0]["message_id"] == parts[0].id


async def test_model_output_never_pings_anyone(classroom):
    classroom.teacher.replies = ["1. Pings", "@everyone <@123> @here look at <@&456>!"]
    await classroom.start_lesson(topic="@everyone mentions", turns=3)
    await classroom.run_out()

    posts = [r for r in classroom.env.http_requests if r.method in ("POST", "PATCH") and isinstance(r.json, dict)]
    bodies = [(r, r.json.get("data", r.json)) for r in posts]
    with_text = [(r, b) for r, b in bodies if isinstance(b, dict) and ("content" in b or "embeds" in b)]
    assert any("@everyone" in (b.get("content") or "") for _, b in with_text)
    for request, body in with_text:
        assert body.get("allowed_mentions") == {"parse": []}, (request.method, request.path, body)
    assert not any(m.mention_everyone or m.raw_mentions for m in classroom.turn_messages())


@pytest.mark.parametrize("classroom_settings", [{"lessons": {"max_concurrent_per_guild": 1}}], indirect=True)
async def test_a_server_runs_at_most_the_configured_number_of_lessons(classroom):
    await classroom.start_lesson(topic="stocks")
    second = await classroom.start_lesson(member=classroom.bob, topic="bonds")

    assert reply_to(second).ephemeral
    assert "1 lesson is already running in this server (the limit is 1)" in reply_to(second).content
    await classroom.run_out()
    with classroom.db() as db:
        assert [r["topic"] for r in q.list_lessons(db)] == ["stocks"]
    third = await classroom.start_lesson(member=classroom.bob, topic="bonds", turns=1)
    assert "started" in reply_to(third).content


async def test_the_starter_or_a_curator_can_stop_a_lesson_but_no_one_else(classroom):
    await classroom.start_lesson()
    refused = await classroom.bob.slash(classroom.channel, "lesson stop", id=1)
    assert refused.ephemeral and "Only the member who started lesson #1 or a curator" in refused.response.content
    stopped = await classroom.alice.slash(classroom.channel, "lesson stop")
    assert "Stopping lesson #1" in stopped.response.content
    await classroom.run_out()

    with classroom.db() as db:
        lesson = q.get_lesson(db, 1)
    assert (lesson["status"], lesson["reason"]) == ("stopped", "stopped by request")
    assert "Stopped" in classroom.summary().embeds[0].description

    await classroom.start_lesson(topic="bonds")
    by_curator = await classroom.carol.slash(classroom.channel, "lesson stop", id=2)
    assert "Stopping lesson #2" in by_curator.response.content
    await classroom.run_out()


async def test_list_and_show_describe_recent_lessons(classroom):
    await classroom.start_lesson(topic="what a stock is", turns=3)
    await classroom.run_out()

    listed = await classroom.bob.slash(classroom.channel, "lesson list")
    line = reply_to(listed).embeds[0].description
    assert reply_to(listed).ephemeral
    assert "**#1** ✅ Finished · 3 turns · score +0" in line and "what a stock is" in line

    shown = await classroom.bob.slash(classroom.channel, "lesson show", id=1)
    card = reply_to(shown).embeds[0]
    assert card.title == "Lesson #1: what a stock is" and "3 turns" in card.description
    assert next(f.value for f in card.fields if f.name == "Where") == f"<#{classroom.lesson_thread().id}>"

    missing = await classroom.bob.slash(classroom.channel, "lesson show", id=99)
    assert "There is no lesson #99 in this server" in reply_to(missing).content


async def test_model_options_autocomplete_from_configured_models(classroom):
    choices = await classroom.alice.autocomplete(classroom.channel, "lesson start", "teacher", "prof")
    assert [c["value"] for c in choices] == ["prof"]
    everyone = await classroom.alice.autocomplete(classroom.channel, "lesson start", "student", "")
    assert [c["value"] for c in everyone] == ["kid", "prof"]


async def test_a_lesson_lands_in_the_database_the_cli_reads(classroom, capsys):
    await classroom.start_lesson(turns=3)
    await classroom.run_out()
    summary = classroom.summary()
    await classroom.alice.click(summary, custom_id="classroom:vote:lesson:1:up")
    await classroom.carol.click(summary, custom_id="classroom:decide:1:approve")

    assert await cmd_show(classroom.settings, argparse.Namespace(lesson_id=1)) == 0
    out = capsys.readouterr().out
    assert "status: finished (turn limit reached); approved: yes; lesson votes +1/-0" in out
    assert f"#2 [kid · student · reply] (+0/-0)\n{STUDENT_ANSWER}" in out
