"""Votes and approvals as members cast them: buttons, reactions, curators, the community threshold, restarts."""

from __future__ import annotations

import discord
import pytest

from storage import lessons as q
from storage import votes as v
from tests import discord_fixtures as fixtures
from tests.discord_fixtures import button_labels, reply_to

pytestmark = pytest.mark.simcord(settle_timeout=fixtures.SETTLE)


async def finished_lesson(classroom, turns: int = 3):
    """Run a short lesson to its end; returns (first turn message, summary message)."""
    await classroom.start_lesson(turns=turns)
    await classroom.run_out()
    return classroom.turn_messages()[0], classroom.summary()


def fresh(classroom, message):
    """The message as it is now."""
    for m in classroom.messages():
        if m.id == message.id:
            return m
    raise AssertionError(f"message {message.id} is gone")


def counts(classroom, message, target: str, target_id: int) -> tuple[str, str]:
    labels = button_labels(fresh(classroom, message))
    return labels[f"classroom:vote:{target}:{target_id}:up"], labels[f"classroom:vote:{target}:{target_id}:down"]


async def test_vote_buttons_toggle_and_count_each_member_once(classroom):
    turn, _ = await finished_lesson(classroom)
    up, down = "classroom:vote:turn:1:up", "classroom:vote:turn:1:down"

    await classroom.alice.click(turn, custom_id=up)
    assert counts(classroom, turn, "turn", 1) == ("1", "0")
    await classroom.alice.click(turn, custom_id=up)  # again: takes it back
    assert counts(classroom, turn, "turn", 1) == ("0", "0")
    await classroom.alice.click(turn, custom_id=down)
    await classroom.alice.click(turn, custom_id=up)  # the other one: changes it
    await classroom.bob.click(turn, custom_id=up)
    assert counts(classroom, turn, "turn", 1) == ("2", "0")

    with classroom.db() as db:
        assert v.tally(db, "turn", 1) == v.Tally(up=2, down=0)
        voters = {r[0] for r in db.execute("SELECT member_id FROM votes WHERE target_type = 'turn'")}
    assert voters == {str(classroom.alice.id), str(classroom.bob.id)}


async def test_a_reaction_and_a_button_are_one_vote(classroom):
    turn, _ = await finished_lesson(classroom)

    await classroom.alice.react(turn, "👍")
    assert counts(classroom, turn, "turn", 1) == ("1", "0")  # the reaction refreshed the button counts
    await classroom.alice.click(turn, custom_id="classroom:vote:turn:1:up")  # same row: the click takes it back
    assert counts(classroom, turn, "turn", 1) == ("0", "0")
    await classroom.alice.click(turn, custom_id="classroom:vote:turn:1:down")
    await classroom.alice.unreact(turn, "👍")  # removing the old 👍 must not clear the newer 👎
    await classroom.bob.react(turn, "👎")
    await classroom.bob.react(turn, "🎉")  # not a vote

    with classroom.db() as db:
        assert v.tally(db, "turn", 1) == v.Tally(up=0, down=2)
        rows = db.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
    assert rows == 2
    assert counts(classroom, turn, "turn", 1) == ("0", "2")


async def test_a_reaction_on_any_part_of_a_split_turn_counts_for_that_turn(classroom):
    classroom.teacher.replies = ["1. Shares", "Shares are pieces of a company. " * 120]
    classroom.teacher.piece_chars = 300
    await classroom.start_lesson(turns=1)
    await classroom.run_out()
    first, *_, last = classroom.webhook_messages()

    await classroom.bob.react(first, "👍")

    assert button_labels(fresh(classroom, last))["classroom:vote:turn:1:up"] == "1"


async def test_votes_and_buttons_survive_a_restart(classroom):
    turn, summary = await finished_lesson(classroom)
    await classroom.alice.click(turn, custom_id="classroom:vote:turn:1:up")

    await classroom.restart()
    await classroom.bob.click(turn, custom_id="classroom:vote:turn:1:up")
    await classroom.alice.click(turn, custom_id="classroom:vote:turn:1:up")  # toggled off after the restart
    await classroom.carol.click(summary, custom_id="classroom:decide:1:approve")
    await classroom.bob.react(turn, "👎")

    assert counts(classroom, turn, "turn", 1) == ("0", "1")
    with classroom.db() as db:
        assert v.tally(db, "turn", 1) == v.Tally(up=0, down=1)
        assert q.get_lesson(db, 1)["approved"] == 1


async def test_a_curator_approves_and_others_are_refused(classroom):
    _, summary = await finished_lesson(classroom)
    # From here on the bot never sleeps, so a longer settle only gives the clicks' store and REST round trips
    # more real time on a loaded machine (it flaked at 0.5 s); it waits for nothing virtual.
    classroom.env.settle_timeout = 5.0

    refused = await classroom.alice.click(summary, custom_id="classroom:decide:1:approve")
    assert refused.ephemeral and "Only curators can approve or reject lessons" in refused.response.content
    with classroom.db() as db:
        assert v.latest_decision(db, 1) is None and q.get_lesson(db, 1)["approved"] == 0

    approved = await classroom.carol.click(summary, custom_id="classroom:decide:1:approve")
    assert "Lesson #1 approved: it will train the student" in reply_to(approved).content
    card = fresh(classroom, summary).embeds[0]
    assert f"Approved by curator <@{classroom.carol.id}>" in next(f.value for f in card.fields if f.name == "Training")
    with classroom.db() as db:
        decision = v.latest_decision(db, 1)
        assert (decision["curator"], decision["decision"]) == (str(classroom.carol.id), "approve")
        assert q.get_lesson(db, 1)["approved"] == 1
        assert [r["id"] for r in v.approved_lessons(db, student="kid")] == [1]

    await classroom.carol.click(summary, custom_id="classroom:decide:1:reject")
    with classroom.db() as db:
        assert q.get_lesson(db, 1)["approved"] == 0
        assert db.execute("SELECT COUNT(*) FROM approvals").fetchone()[0] == 2  # every decision is kept


async def test_manage_server_makes_a_curator_even_without_the_role(classroom):
    _, summary = await finished_lesson(classroom)
    admins = classroom.guild.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
    dana = classroom.guild.add_member(classroom.env.create_user("dana"), roles=[admins])

    await dana.click(summary, custom_id="classroom:decide:1:reject")

    with classroom.db() as db:
        assert v.latest_decision(db, 1)["decision"] == "reject"


@pytest.mark.parametrize("classroom_settings", [{"lessons": {"approval_threshold": 2}}], indirect=True)
async def test_the_community_approves_a_lesson_by_reaching_the_threshold(classroom):
    _, summary = await finished_lesson(classroom)

    await classroom.alice.click(summary, custom_id="classroom:vote:lesson:1:up")
    with classroom.db() as db:
        assert q.get_lesson(db, 1)["approved"] == 0
    await classroom.bob.react(summary, "👍")  # a reaction on the summary counts as a lesson vote too

    with classroom.db() as db:
        assert q.get_lesson(db, 1)["approved"] == 1
    card = fresh(classroom, summary).embeds[0]
    assert "Approved by community vote" in next(f.value for f in card.fields if f.name == "Training")
    assert counts(classroom, summary, "lesson", 1) == ("2", "0")

    await classroom.bob.unreact(summary, "👍")
    with classroom.db() as db:
        assert q.get_lesson(db, 1)["approved"] == 0


async def test_a_failed_lesson_cannot_be_approved(classroom):
    classroom.teacher.fail_on_call = 2  # plans, then the endpoint goes down
    await classroom.start_lesson()
    await classroom.run_out()
    summary = classroom.summary()

    refused = await classroom.carol.click(summary, custom_id="classroom:decide:1:approve")

    assert "only finished or stopped lessons can be approved" in refused.response.content
    with classroom.db() as db:
        assert v.latest_decision(db, 1) is None
