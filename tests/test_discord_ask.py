"""/ask, chat by mention, and /models, as members use them."""

from __future__ import annotations

import pytest

from plugins.common.context import BotOptions
from storage.db import now
from tests import discord_fixtures as fixtures
from tests.discord_fixtures import AVATARS, PERSONAS, STUDENT_ANSWER, reply_to

pytestmark = pytest.mark.simcord(settle_timeout=fixtures.SETTLE)


async def ask(classroom, member=None, question="What is a stock?", **options):
    result = await (member or classroom.alice).slash(classroom.channel, "ask", question=question, **options)
    await classroom.env.advance_time(2)  # the final edit waits out the stream interval
    return result


async def test_the_student_answers_in_the_channel_under_its_own_name(classroom):
    result = await ask(classroom, question="What is a stock?")

    assert not result.ephemeral and result.response.content == "**alice** asked Kid the Student:\n>>> What is a stock?"
    answer = classroom.webhook_messages()[-1]
    assert answer.author.name == PERSONAS["kid"] and answer.content == STUDENT_ANSWER
    execute = next(r for r in classroom.env.http_requests if "simcord_webhook_" in r.path and r.method == "POST")
    assert execute.json["avatar_url"] == AVATARS["kid"] and execute.json["allowed_mentions"] == {"parse": []}
    assert classroom.student.calls[0][-1] == {"role": "user", "content": "What is a stock?"}
    defer = next(i for i, r in enumerate(classroom.env.http_requests) if r.path.endswith("/callback"))
    assert classroom.env.http_requests[defer].json["type"] == 5 and defer < classroom.student.seen_at_call[0]


async def test_another_student_can_be_asked_by_name(classroom):
    await ask(classroom, student="prof")
    assert classroom.webhook_messages()[-1].author.name == PERSONAS["prof"]


async def test_each_member_waits_out_the_cooldown_between_questions(classroom):
    await ask(classroom)
    too_soon = await classroom.alice.slash(classroom.channel, "ask", question="And a bond?")
    other_member = await ask(classroom, member=classroom.bob, question="And a bond?")

    assert too_soon.ephemeral
    assert too_soon.response.content == "One question at a time: you can ask again in 18 seconds."
    assert not other_member.ephemeral
    assert len(classroom.student.calls) == 2

    await classroom.env.advance_time(18)
    again = await ask(classroom, question="And a bond?")
    assert not again.ephemeral and len(classroom.student.calls) == 3


async def test_a_question_over_1000_characters_is_refused(classroom):
    result = await classroom.alice.slash(classroom.channel, "ask", question="why " * 300)

    assert result.ephemeral and result.response.content == "Your question is 1199 characters; keep it under 1000."
    assert classroom.student.calls == []


async def test_an_unknown_student_is_refused(classroom):
    result = await classroom.alice.slash(classroom.channel, "ask", question="hi", student="nobody")
    assert result.ephemeral and result.response.content == "Unknown model 'nobody' (known: kid, prof)."


async def test_a_student_that_is_down_is_reported_privately_and_the_question_given_back(classroom):
    classroom.student.fail_on_call = 1
    result = await ask(classroom)

    failure = result.followups[-1]
    assert failure.ephemeral
    assert failure.content == "Kid the Student can't answer right now: model 'kid' at scripted://: scripted failure"
    classroom.student.fail_on_call = None
    assert not (await ask(classroom)).ephemeral  # no cooldown after a failed answer


async def test_answers_never_ping_anyone(classroom):
    classroom.student.replies = ["@everyone look <@123> @here"]
    await ask(classroom, question="@everyone hi")

    for r in classroom.env.http_requests:
        body = r.json.get("data", r.json) if isinstance(r.json, dict) else None
        if r.method in ("POST", "PATCH") and isinstance(body, dict) and "content" in body:
            assert body["allowed_mentions"] == {"parse": []}, r.path


@pytest.mark.parametrize("bot_options", [BotOptions(message_content=True)], indirect=True)
async def test_mentioning_the_bot_asks_the_student_when_message_content_is_on(classroom):
    me = classroom.guild.me
    await classroom.alice.send(classroom.channel, f"<@{me.id}> what is a dividend?")
    await classroom.env.advance_time(2)

    assert classroom.student.calls[0][-1]["content"] == "what is a dividend?"
    answer = classroom.webhook_messages()[-1]
    assert answer.author.name == PERSONAS["kid"]

    await classroom.bob.send(classroom.channel, "follow-up?", reply_to=answer)
    await classroom.env.advance_time(2)
    assert classroom.student.calls[1][-1]["content"] == "follow-up?"

    await classroom.bob.send(classroom.channel, "just chatting")
    assert len(classroom.student.calls) == 2


async def test_mentions_are_ignored_without_message_content(classroom):
    await classroom.alice.send(classroom.channel, f"<@{classroom.guild.me.id}> what is a dividend?")
    await classroom.env.advance_time(2)
    assert classroom.student.calls == []


async def test_models_lists_teachers_and_students_with_the_active_adapter(classroom):
    listed = reply_to(await classroom.alice.slash(classroom.channel, "models"))
    fields = {f.name: f.value for f in listed.embeds[0].fields}
    assert listed.ephemeral
    assert fields["Professor Prof (`prof`)"].startswith("teacher · local")
    assert "active adapter: none (base weights)" in fields["Kid the Student (`kid`)"]

    with classroom.db() as db:
        db.execute(
            "INSERT INTO adapters (student, version, path, status, created_at) VALUES ('kid', 3, '/a/v3', 'active', ?)",
            [now()],
        )
    listed = reply_to(await classroom.alice.slash(classroom.channel, "models"))
    assert "active adapter: v3" in {f.name: f.value for f in listed.embeds[0].fields}["Kid the Student (`kid`)"]
