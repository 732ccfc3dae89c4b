"""What members are told when something is wrong, and that nothing stored is lost and the bot keeps running."""

from __future__ import annotations

import discord
import pytest

from lessons.steps import lesson_turns
from lessons.syllabus import Section
from storage import lessons as q
from tests import discord_fixtures as fixtures
from tests.discord_fixtures import PERSONAS, reply_to

pytestmark = pytest.mark.simcord(settle_timeout=fixtures.SETTLE)


def stored_counts(classroom) -> tuple[int, int]:
    with classroom.db() as db:
        lessons = db.execute("SELECT COUNT(*) FROM lessons").fetchone()[0]
        sources = db.execute("SELECT COUNT(*) FROM sources").fetchone()[0]
    return lessons, sources


async def refused(classroom, **options) -> str:
    """Start a lesson that must be refused privately; returns what the member was told."""
    result = await classroom.start_lesson(**options)
    told = reply_to(result)
    assert told.ephemeral
    assert stored_counts(classroom) == (0, 0), "a refused lesson must store nothing"
    assert classroom.teacher.calls == []
    return told.content


async def test_unknown_model_is_refused_with_the_known_names(classroom):
    told = await refused(classroom, teacher="gpt-9")
    assert told == "That lesson can't start: unknown model 'gpt-9' (known: kid, prof)."


async def test_a_topic_over_200_characters_is_refused(classroom):
    told = await refused(classroom, topic="stocks " * 40)
    assert told == "That lesson can't start: the topic is 279 characters; keep it under 200."


async def test_more_turns_than_the_server_allows_is_refused(classroom):
    told = await refused(classroom, turns=50)
    assert "at most 9 turns" in told


@pytest.mark.parametrize(
    ("filename", "data", "why"),
    [
        ("notes.pdf", b"%PDF-1.7 ...", "notes.pdf is not a text or markdown file (.txt or .md)"),
        ("notes.md", b"\x00\x01binary", "notes.md looks binary, not text"),
        ("notes.md", "caf\xe9".encode("latin-1"), "notes.md is not UTF-8 text"),
        ("notes.md", b"x" * 1_000_001, "notes.md is 1,000,001 bytes; the limit is 1,000,000 bytes (1 MB)"),
    ],
)
async def test_a_bad_source_file_is_refused_and_nothing_is_stored(classroom, filename, data, why):
    told = await refused(classroom, source=(filename, data))
    assert why in told


async def test_a_good_source_file_grounds_the_lesson(classroom):
    doc = "# Gate\n" + "The gate code of Vellmoor is 4471. " * 5 + "\n# Mayor\n" + "The mayor is Ada Quill. " * 5
    await classroom.start_lesson(topic="Vellmoor", source=("vellmoor.md", doc.encode()), turns=3)
    await classroom.run_out()

    assert any("4471" in m[-1]["content"] for m in classroom.teacher.calls)  # the notes, in the teacher's request
    with classroom.db() as db:
        assert db.execute("SELECT name FROM sources").fetchone()[0] == "vellmoor.md"
        assert q.get_lesson(db, 1)["syllabus"][0]["title"] == "Gate"


async def test_a_lesson_from_a_source_teaches_the_whole_document_past_max_turns(classroom):
    # lessons.max_turns is 9 here, fewer than these two sections of notes take (3 turns each, then question rounds)
    doc = "# Gate\nThe gate code of Vellmoor is 4471.\n# Mayor\nThe mayor of Vellmoor is Ada Quill.\n"
    await classroom.start_lesson(topic="Vellmoor", source=("vellmoor.md", doc.encode()))
    await classroom.run_out()

    with classroom.db() as db:
        lesson = q.get_lesson(db, 1)
        assert lesson["max_turns"] == 400
        assert (lesson["status"], lesson["reason"]) == ("finished", "syllabus covered")
        needed = lesson_turns([Section(**s) for s in lesson["syllabus"]], grounded=True)
        assert len(q.turns(db, 1)) == needed > 9


async def test_more_turns_than_a_source_lesson_allows_is_refused_naming_its_setting(classroom):
    told = await refused(classroom, topic="Vellmoor", source=("vellmoor.md", b"# Gate\nThe gate code is 4471."), turns=401)
    assert "at most 400 turns (`lessons.max_source_turns`)" in told


async def test_an_endpoint_going_down_fails_the_lesson_with_its_reason_and_keeps_the_turns(classroom):
    classroom.teacher.fail_on_call = 4  # plan, explain, correct, then the endpoint is down
    await classroom.start_lesson()
    await classroom.run_out()

    card = classroom.summary().embeds[0]
    assert "Failed" in card.description and "model 'prof' at scripted://: scripted failure" in card.description
    with classroom.db() as db:
        lesson = q.get_lesson(db, 1)
        assert lesson["status"] == "failed" and len(q.turns(db, 1)) == 3
    assert (await classroom.bob.slash(classroom.channel, "models")).acknowledged  # still running


async def test_without_send_messages_the_member_is_told_which_permission_is_missing(classroom):
    locked = classroom.guild.create_text_channel(
        "locked", overwrites={classroom.guild.me: discord.PermissionOverwrite(send_messages=False)}
    )
    result = await classroom.alice.slash(locked, "lesson start", topic="stocks")

    told = reply_to(result)
    assert told.ephemeral and told.content == f"I can't run a lesson in <#{locked.id}>: I need the Send Messages permission there."
    assert stored_counts(classroom) == (0, 0)


async def test_without_manage_webhooks_personas_post_as_embeds_and_admins_are_told_once(classroom):
    plain = classroom.guild.create_text_channel(
        "plain", overwrites={classroom.guild.me: discord.PermissionOverwrite(manage_webhooks=False)}
    )
    first = await classroom.alice.slash(plain, "lesson start", topic="stocks", turns=3)
    await classroom.run_out()
    await classroom.alice.slash(plain, "lesson start", topic="bonds", turns=3)
    await classroom.run_out()

    assert "appear as embeds from me" in reply_to(first).content
    thread = plain.threads[0]
    turns = [m for m in thread.history() if m.embeds and m.embeds[0].author.name in PERSONAS.values()]
    assert [m.embeds[0].author.name for m in turns] == [PERSONAS["prof"], PERSONAS["kid"], PERSONAS["prof"]]
    assert turns[0].embeds[0].author.icon_url == "https://example.com/avatars/prof.png"
    assert all(m.components for m in turns)  # bot messages carry the vote buttons
    notices = [m for t in plain.threads for m in t.history() if "For admins" in m.content]
    assert len(notices) == 1 and "Manage Webhooks" in notices[0].content
    assert not any(r.path.endswith("/webhooks") for r in classroom.env.http_requests)


async def test_an_unexpected_error_gets_a_private_apology_and_the_bot_keeps_running(classroom, monkeypatch):
    from plugins.models import _cog

    def broken(*args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(_cog, "models_embed", broken)
    result = await classroom.alice.slash(classroom.channel, "models")

    told = reply_to(result)
    assert told.ephemeral and told.content == "Something went wrong on my side. It was logged; please try again."
    assert [type(e.original) for e in classroom.env.errors] == [RuntimeError]
    monkeypatch.undo()
    assert reply_to(await classroom.alice.slash(classroom.channel, "models")).embeds


async def test_lessons_left_running_by_a_crash_are_marked_interrupted_at_startup_and_say_so(classroom):
    await classroom.start_lesson(turns=1)
    await classroom.run_out()
    thread = classroom.lesson_thread()
    with classroom.db() as db:  # as a killed process leaves it: still 'running'
        crashed = q.create_lesson(db, topic="bonds", teachers=["prof"], students=["kid"], max_turns=3,
                                  guild_id=classroom.guild.id, channel_id=classroom.channel.id)
        q.set_discord_ids(db, crashed, thread_id=thread.id)

    await classroom.restart()

    with classroom.db() as db:
        assert q.get_lesson(db, crashed)["status"] == "interrupted"
    notes = [m.content for m in thread.history() if "interrupted" in m.content]
    assert notes == [f"⚠️ Lesson #{crashed} was interrupted when the bot restarted. Its 0 turns are saved; "
                     f"resume it with `/lesson resume lesson:{crashed}`."]
    assert "started" in reply_to(await classroom.start_lesson(topic="bonds", turns=1)).content


async def test_closing_the_bot_interrupts_running_lessons_and_says_so(classroom):
    classroom.teacher.word_seconds = 5
    await classroom.start_lesson()
    await classroom.env.advance_time(1)
    thread = classroom.lesson_thread()

    await classroom.env.bot.close()

    with classroom.db() as db:
        assert q.get_lesson(db, 1)["status"] == "interrupted"
    assert any("the bot is shutting down" in m.content for m in thread.history())


async def test_a_deleted_persona_webhook_is_replaced(classroom):
    await classroom.start_lesson(turns=1)
    await classroom.run_out()
    directory = classroom.env.bot._classroom_personas
    for hook in list(directory._webhooks.values()):  # an admin deletes them in the channel settings
        await hook.delete()

    await classroom.start_lesson(topic="bonds", turns=1)
    await classroom.run_out()

    assert classroom.turn_messages()[-1].author.name == PERSONAS["prof"]
    with classroom.db() as db:
        assert q.turns(db, 2)[0]["message_id"] == classroom.turn_messages()[-1].id
    made = [r for r in classroom.requests("POST") if r.path.endswith("/webhooks") and r.json["name"] == "classroom prof"]
    assert len(made) == 2


async def test_without_create_threads_the_lesson_runs_in_the_channel_and_says_why(classroom):
    flat = classroom.guild.create_text_channel(
        "flat", overwrites={classroom.guild.me: discord.PermissionOverwrite(create_public_threads=False)}
    )
    result = await classroom.alice.slash(flat, "lesson start", topic="stocks", turns=1)
    await classroom.run_out()

    assert "I can't open threads here (I lack Create Public Threads)" in reply_to(result).content
    assert flat.threads == []
    assert [m.author.name for m in flat.history() if m.webhook_id] == [PERSONAS["prof"]]


async def test_when_discord_refuses_the_first_post_the_lesson_is_marked_failed_and_the_member_told(classroom):
    classroom.env.inject_error("POST", "/channels/*/messages", status=500)
    result = await classroom.start_lesson()

    assert "so the lesson did not start" in reply_to(result).content
    with classroom.db() as db:
        lesson = q.get_lesson(db, 1)
    assert lesson["status"] == "failed" and lesson["reason"].startswith("could not post in Discord")
    assert classroom.teacher.calls == []
