"""Who may run what: every slash command, for a plain member, a curator and an admin, in a channel and in a DM.

Discord hides commands by `default_permissions` and by `guild_only`; simcord models both, so the visible sets
are checked exactly. Curator tools are also refused at run time, since a server's admin can open any command
to anyone in the integration settings. The command list comes from the bot's own tree: a new command that is
missing from POLICY fails the first test.
"""

from __future__ import annotations

import discord
import pytest
import simcord

from plugins.training._cog import TrainingCog
from storage import lessons as q
from storage import votes as v
from tests import discord_fixtures as fixtures
from tests.discord_fixtures import reply_to

pytestmark = pytest.mark.simcord(settle_timeout=fixtures.SETTLE)

ANYONE, CURATOR, ADMIN = "anyone", "curator", "admin"
POLICY = {  # who may run it; "admin" commands are hidden from others by default_permissions (Manage Server)
    "ask": ANYONE,
    "lesson list": ANYONE,
    "lesson show": ANYONE,
    "lesson start": ANYONE,
    "lesson stop": ANYONE,  # the starter, or a curator: checked per lesson at run time
    "lesson resume": ANYONE,  # the starter, or a curator: checked per lesson at run time
    "models": ANYONE,
    "privacy forget-me": ANYONE,
    "quiz start": ANYONE,
    "quiz stop": ANYONE,  # the starter, or a curator: checked per game at run time
    "student report": ANYONE,
    "student versions": ANYONE,
    "student rollback": CURATOR,  # visible (its group is shared), refused at run time
    "train now": ADMIN,  # hidden by default, and refused at run time for non-curators it is opened to
    "train status": ADMIN,
    "train history": ADMIN,
}
IN_DMS = {"models", "privacy forget-me"}  # every other command is guild_only
RUN_TIME_CHECKED = {  # curator tools: (options, refusal for non-curators)
    "train now": ({}, "Only curators can start training (members with Manage Server or the 'Curators' role)."),
    "student rollback": ({"version": "base"},
                         "Only curators can switch the student's adapter (members with Manage Server or the "
                         "'Curators' role)."),
}


@pytest.fixture(autouse=True)
def no_nightly_schedule(monkeypatch):
    monkeypatch.setenv("CLASSROOM_NO_SCHEDULER", "1")


def admin(classroom) -> simcord.MemberActor:
    """dave, who holds Administrator (so Manage Server) but not the curator role."""
    role = classroom.guild.create_role("Admins", permissions=discord.Permissions(administrator=True))
    return classroom.guild.add_member(classroom.env.create_user("dave"), roles=[role])


def slash_commands(bot) -> set[str]:
    return {c.qualified_name for c in bot.tree.walk_commands() if not isinstance(c, discord.app_commands.Group)}


def may_see(command: str, who: str, in_dm: bool) -> bool:
    if in_dm:
        return command in IN_DMS
    return POLICY[command] != ADMIN or who == ADMIN


async def test_every_command_is_shown_exactly_to_whom_it_should_be(classroom):
    assert slash_commands(classroom.env.bot) == set(POLICY), "a command is missing from POLICY (or gone)"
    actors = {"member": classroom.alice, CURATOR: classroom.carol, ADMIN: admin(classroom)}
    for who, actor in actors.items():
        for in_dm in (False, True):
            seen = set(actor.user.available_commands() if in_dm else actor.available_commands(classroom.channel))
            expected = {c for c in POLICY if may_see(c, who, in_dm)}
            assert seen == expected, (who, "DM" if in_dm else "channel", seen ^ expected)


async def test_guild_commands_cannot_be_run_in_a_dm_and_dm_commands_answer_there(classroom):
    with pytest.raises(simcord.SetupError, match="not visible"):
        await classroom.alice.user.slash("lesson start", topic="stocks")
    with pytest.raises(simcord.SetupError, match="not visible"):
        await classroom.carol.user.slash("student rollback", version="base")
    shown = await classroom.alice.user.slash("models")
    assert shown.ephemeral and shown.response.embeds
    with classroom.db() as db:
        assert db.execute("SELECT COUNT(*) FROM lessons").fetchone()[0] == 0


@pytest.mark.parametrize("command", sorted(RUN_TIME_CHECKED))
async def test_curator_tools_are_refused_at_run_time_even_when_opened_to_everyone(classroom, monkeypatch, command):
    launched = []
    monkeypatch.setattr(TrainingCog, "_launch", lambda self, live: launched.append(live))
    dave = admin(classroom)
    group = command.split()[0]
    synced = next(c for c in await classroom.env.bot.tree.fetch_commands() if c.name == group)
    everyone = [classroom.alice, classroom.bob, classroom.carol]
    classroom.guild.set_command_permissions(synced, {member: True for member in everyone})  # an admin opens it
    options, refusal = RUN_TIME_CHECKED[command]

    for member in (classroom.alice, classroom.bob):
        told = reply_to(await member.slash(classroom.channel, command, **options))
        assert told.ephemeral and told.content == refusal
    assert launched == []
    for member in (classroom.carol, dave):  # a curator by role, an admin by Manage Server
        told = reply_to(await member.slash(classroom.channel, command, **options))
        assert told.ephemeral and told.content != refusal and "Only curators" not in told.content


async def test_stopping_someone_elses_lesson_needs_a_curator(classroom):
    classroom.teacher.word_seconds = 5
    await classroom.start_lesson()
    refused = reply_to(await classroom.bob.slash(classroom.channel, "lesson stop", id=1))
    assert refused.content.startswith("Only the member who started lesson #1 or a curator")
    assert classroom.live_lessons() == [1]
    assert reply_to(await classroom.carol.slash(classroom.channel, "lesson stop", id=1)).content.startswith("Stopping")
    await classroom.run_out()
    with classroom.db() as db:
        assert q.get_lesson(db, 1)["status"] == "stopped"


# ---- votes and approval


def tally(classroom, target: str, target_id: int) -> v.Tally:
    with classroom.db() as db:
        return v.tally(db, target, target_id)


def approved(classroom, lesson_id: int = 1) -> bool:
    with classroom.db() as db:
        return bool(q.get_lesson(db, lesson_id)["approved"])


async def finished_lesson(classroom, member=None):
    await classroom.start_lesson(member, turns=3)
    await classroom.run_out()
    return classroom.turn_messages()[0], classroom.summary()


async def test_a_member_has_one_vote_whether_by_button_or_reaction(classroom):
    turn, _ = await finished_lesson(classroom)
    await classroom.bob.click(turn, custom_id="classroom:vote:turn:1:up")
    await classroom.bob.react(turn, "👍")
    await classroom.bob.react(turn, "👎")  # changes the one vote, never adds a second
    assert tally(classroom, "turn", 1) == v.Tally(up=0, down=1)
    await classroom.bob.click(turn, custom_id="classroom:vote:turn:1:down")  # the same button again takes it back
    assert tally(classroom, "turn", 1) == v.Tally(up=0, down=0)


async def test_bots_cannot_vote(classroom):
    turn, summary = await finished_lesson(classroom)
    robot = classroom.guild.add_member(classroom.env.create_user("robot", bot=True))
    told = await robot.click(summary, custom_id="classroom:vote:lesson:1:up")
    assert told.ephemeral and told.response.content == "Bots can't vote."
    await robot.react(turn, "👍")
    assert tally(classroom, "lesson", 1) == v.Tally(up=0, down=0)
    assert tally(classroom, "turn", 1) == v.Tally(up=0, down=0)


@pytest.mark.parametrize("classroom_settings", [{"lessons": {"approval_threshold": 1}}], indirect=True)
async def test_a_member_cannot_approve_their_own_lesson_but_a_curator_can(classroom):
    _, summary = await finished_lesson(classroom)  # alice's lesson
    await classroom.alice.click(summary, custom_id="classroom:vote:lesson:1:up")
    await classroom.alice.react(summary, "👍")
    assert not approved(classroom), "the starter's own vote reached the threshold alone"
    refused = await classroom.alice.click(summary, custom_id="classroom:decide:1:approve")
    assert refused.ephemeral and refused.response.content.startswith("Only curators can approve or reject lessons")
    assert not approved(classroom)
    await classroom.bob.click(summary, custom_id="classroom:vote:lesson:1:up")
    assert approved(classroom), "another member's vote counts"

    _, own = await finished_lesson(classroom, classroom.carol)  # a curator's own lesson
    decided = await classroom.carol.click(own, custom_id="classroom:decide:2:approve")
    assert "Lesson #2 approved" in reply_to(decided).content
    assert approved(classroom, 2)
