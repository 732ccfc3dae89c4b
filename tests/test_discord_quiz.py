"""Quiz games, answer votes, corrections and report cards, as members use them (scripted teacher and student)."""

from __future__ import annotations

import json

import pytest

from storage import lessons as lq
from storage import quiz as gq
from storage import votes as v
from storage.db import now
from tests import discord_fixtures as fixtures
from tests.discord_fixtures import PERSONAS, button_labels, reply_to

pytestmark = pytest.mark.simcord(settle_timeout=fixtures.SETTLE)


GATE = "What is the gate code of Vellmoor?"
FERRY = "Who runs the Vellmoor ferry?"
PHRASED = {GATE: "The gate code of Vellmoor is 4471.", FERRY: "Ada Quill runs the Vellmoor ferry."}


def teacher_reply(messages) -> str:
    """The scripted teacher phrasing the answer at each reveal (and, as a judge, accepting any answer)."""
    if "Reply with one word: yes or no" in messages[-1]["content"]:
        return "yes"
    return next((text for question, text in PHRASED.items() if messages[-1]["content"].startswith(question)),
                "Hmm.")


def student_reply(messages) -> str:
    """The scripted student: wrong about the gate code, right about the ferry."""
    return "It is 1234." if "gate code" in messages[-1]["content"] else "Ada Quill runs it."


@pytest.fixture
def scripted_models() -> dict[str, fixtures.TimedScript]:
    return {"prof": fixtures.TimedScript("prof", teacher_reply), "kid": fixtures.TimedScript("kid", student_reply)}


@pytest.fixture
def classroom_settings(tmp_path, request):
    """The shared settings; `@pytest.mark.parametrize("classroom_settings", ["large teacher"], indirect=True)`
    makes the teacher an LLM, which then judges the answers."""
    settings = fixtures.make_settings(tmp_path / "home")
    if getattr(request, "param", None) == "large teacher":
        prof = settings.models["prof"].model_copy(update={"size_class": "large"})
        settings = settings.model_copy(update={"models": {**settings.models, "prof": prof}})
    return settings


@pytest.fixture(autouse=True)
def no_nightly_schedule(monkeypatch):
    monkeypatch.setenv("CLASSROOM_NO_SCHEDULER", "1")


def seed_lessons(classroom) -> None:
    """Lesson 1 (two held-out items) and lesson 2 (one), finished in this server; lesson 3 has none."""
    with classroom.db() as db:
        for topic, questions in (("Vellmoor", [(GATE, "4471"), (FERRY, "Ada Quill")]), ("Vellmoor gates", [(GATE, "4471")]),
                                 ("Tides", [])):
            lesson_id = lq.create_lesson(db, topic=topic, teachers=["prof"], students=["kid"], max_turns=4,
                                         guild_id=classroom.guild.id)
            lq.finish_lesson(db, lesson_id, "finished")
            for question, answer in questions:
                db.execute("INSERT INTO quiz_items (lesson_id, topic, question, answer, split, created_at)"
                           " VALUES (?, ?, ?, ?, 'heldout', ?)", [lesson_id, topic, question, answer, now()])


def persona_posts(classroom, persona: str):
    return [m for m in classroom.webhook_messages(classroom.channel) if m.author.name == PERSONAS[persona]]


def bot_posts(classroom):
    return [m for m in classroom.channel.history() if m.webhook_id is None and m.author.id == classroom.guild.me.id]


async def answer(classroom, member, question_message, text: str):
    shown = await member.click(question_message, label="Answer")
    assert shown.modal is not None
    return await member.submit_modal(shown, {"answer": text})


async def test_a_quiz_game_asks_grades_reveals_and_ends_with_a_scoreboard(classroom):
    seed_lessons(classroom)
    started = await classroom.alice.slash(classroom.channel, "quiz start", lesson=1, questions=2, seconds=30)

    assert not started.ephemeral and started.response.content.startswith("🎓 **Quiz #1: lesson #1, Vellmoor**")
    [asked] = persona_posts(classroom, "prof")
    assert asked.content.startswith("**Question 1 of 2**") and GATE in asked.content
    assert "classroom:quiz:answer:1" in button_labels(asked)
    assert persona_posts(classroom, "kid") == []  # the student's answer waits for the end of the round

    taken = await answer(classroom, classroom.bob, asked, "It is 4471")
    assert taken.ephemeral and taken.response.content.startswith("Got it.")
    await answer(classroom, classroom.alice, asked, "no idea")
    await answer(classroom, classroom.alice, asked, "1234")  # a second answer replaces the first
    too_late = await classroom.alice.click(asked, label="Answer")  # the form is open while time runs out
    await classroom.env.advance_time(31)

    [said] = persona_posts(classroom, "kid")
    assert said.content == "It is 1234." and set(button_labels(said)) == {
        "classroom:vote:answer:3:up", "classroom:vote:answer:3:down"}
    reveal = persona_posts(classroom, "prof")[1].content
    assert reveal.splitlines() == [
        "⏱️ Time's up for question 1! The answer: **4471**",
        "> The gate code of Vellmoor is 4471.",
        f"❌ {PERSONAS['kid']} was wrong.",
        f"Members: 1 of 2 right — <@{classroom.bob.id}> ✅ · <@{classroom.alice.id}> ❌",
    ]
    late = await classroom.alice.submit_modal(too_late, {"answer": "4471"})
    assert late.ephemeral and late.response.content == "Time is up for that question; answers are closed."
    closed = next(m for m in classroom.channel.history() if m.id == asked.id)
    assert closed.components[0].children[0].disabled and "time is up" in closed.content

    assert FERRY in persona_posts(classroom, "prof")[2].content
    await classroom.env.advance_time(31)
    assert persona_posts(classroom, "kid")[1].content == "Ada Quill runs it."
    assert f"✅ {PERSONAS['kid']} was right." in persona_posts(classroom, "prof")[3].content
    board = bot_posts(classroom)[-1].embeds[0]
    assert board.title == "🏁 Quiz #1: lesson #1, Vellmoor"
    assert board.description.splitlines() == [
        f"🤖 **{PERSONAS['kid']}**: 1/2", f"🥇 <@{classroom.bob.id}>: 1/2", f"🥈 <@{classroom.alice.id}>: 0/2",
        f"🤝 {PERSONAS['kid']} and the best of the class tied."]

    with classroom.db() as db:
        rows = db.execute("SELECT answerer, answerer_kind, answer, correct, grader, message_id IS NOT NULL"
                          " FROM quiz_answers ORDER BY id").fetchall()
        assert gq.get_game(db, 1)["status"] == "finished"
    assert [tuple(r) for r in rows] == [
        (str(classroom.bob.id), "member", "It is 4471", 1, "reference", 0),
        (str(classroom.alice.id), "member", "1234", 0, "reference", 0),
        ("kid", "model", "It is 1234.", 0, "reference", 1),
        ("kid", "model", "Ada Quill runs it.", 1, "reference", 1),
    ]
    # the student answered exactly as /ask asks, with no lesson context
    assert classroom.student.calls[0] == [
        {"role": "system", "content": f"You are {PERSONAS['kid']}. Answer briefly and accurately."},
        {"role": "user", "content": GATE}]
    for r in classroom.env.http_requests:  # nobody is ever pinged, whatever a model writes
        body = r.json.get("data", r.json) if isinstance(r.json, dict) else None
        if r.method in ("POST", "PATCH") and isinstance(body, dict) and ("content" in body or "embeds" in body):
            assert body["allowed_mentions"] == {"parse": []}, r.path


async def play_one_wrong_answer(classroom):
    """Quiz on lesson 2: one question the student gets wrong; returns the student's answer message."""
    seed_lessons(classroom)
    await classroom.alice.slash(classroom.channel, "quiz start", lesson=2, seconds=10)
    await classroom.env.advance_time(11)
    [said] = persona_posts(classroom, "kid")
    return said


def vote_counts(classroom, message) -> tuple[str, str]:
    fresh = next(m for m in classroom.channel.history() if m.id == message.id)
    labels = button_labels(fresh)
    return labels["classroom:vote:answer:1:up"], labels["classroom:vote:answer:1:down"]


async def test_answer_votes_toggle_and_a_voted_down_answer_becomes_a_correction_a_curator_approves(classroom):
    said = await play_one_wrong_answer(classroom)

    await classroom.alice.click(said, custom_id="classroom:vote:answer:1:up")
    assert vote_counts(classroom, said) == ("1", "0")
    await classroom.alice.click(said, custom_id="classroom:vote:answer:1:up")  # again: takes it back
    assert vote_counts(classroom, said) == ("0", "0")
    with classroom.db() as db:
        assert db.execute("SELECT COUNT(*) FROM quiz_corrections").fetchone()[0] == 0
    await classroom.alice.click(said, custom_id="classroom:vote:answer:1:down")
    await classroom.bob.click(said, custom_id="classroom:vote:answer:1:down")
    assert vote_counts(classroom, said) == ("0", "2")

    [posted] = [m for m in bot_posts(classroom) if "classroom:correction:1:approve" in button_labels(m)]
    fields = {f.name: f.value for f in posted.embeds[0].fields}
    assert fields["Question"] == GATE and fields[f"{PERSONAS['kid']} answered"] == "It is 1234."
    assert fields[f"Correction by {PERSONAS['prof']}"] == PHRASED[GATE]

    refused = await classroom.bob.click(posted, label="Approve")
    assert refused.ephemeral and refused.response.content.startswith("Only curators can approve or reject corrections")
    with classroom.db() as db:
        assert gq.approved_corrections(db, "kid") == []
    await classroom.carol.click(posted, label="Approve")

    approved = next(m for m in classroom.channel.history() if m.id == posted.id)
    training = {f.name: f.value for f in approved.embeds[0].fields}["Training"]
    assert training.startswith(f"✅ Approved by curator <@{classroom.carol.id}>")
    with classroom.db() as db:
        assert v.tally(db, "answer", 1) == v.Tally(up=0, down=2)
        assert gq.approved_corrections(db, "kid") == [{
            "id": "correction1", "correction_id": 1,
            "messages": [
                {"role": "system", "content": f"You are {PERSONAS['kid']}. Answer briefly and accurately."},
                {"role": "user", "content": GATE},
                {"role": "assistant", "content": PHRASED[GATE], "train": True, "speaker": "prof"},
            ],
        }]
        assert gq.approved_corrections(db, "kid", no_train_teachers=["prof"]) == []


@pytest.mark.parametrize("classroom_settings", ["large teacher"], indirect=True)
async def test_a_large_teacher_judges_the_answers(classroom):
    said = await play_one_wrong_answer(classroom)  # the scripted judge accepts "It is 1234."

    assert said.content == "It is 1234."
    assert f"✅ {PERSONAS['kid']} was right." in persona_posts(classroom, "prof")[-1].content
    with classroom.db() as db:
        assert db.execute("SELECT correct, grader FROM quiz_answers").fetchall() == [(1, "judge:prof")]


async def test_answer_buttons_work_after_a_restart(classroom):
    said = await play_one_wrong_answer(classroom)
    await classroom.restart()

    await classroom.bob.click(said, custom_id="classroom:vote:answer:1:down")
    assert vote_counts(classroom, said) == ("0", "1")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lesson": 3}, "Lesson #3 has no held-out quiz questions yet."),
        ({"topic": "volcanoes"}, "No held-out quiz questions match “volcanoes” yet."),
        ({"lesson": 1, "topic": "Vellmoor"}, "Pick a lesson or a topic, not both."),
        ({"lesson": 99}, "There is no lesson #99 in this server."),
    ],
)
async def test_a_quiz_with_nothing_to_ask_is_refused_clearly(classroom, options, message):
    seed_lessons(classroom)
    refused = await classroom.alice.slash(classroom.channel, "quiz start", **options)

    assert refused.ephemeral and refused.response.content.startswith(message)
    assert persona_posts(classroom, "prof") == []


async def test_a_topic_quiz_draws_from_matching_lessons_and_one_game_runs_per_channel(classroom):
    seed_lessons(classroom)
    started = await classroom.alice.slash(classroom.channel, "quiz start", topic="gates", seconds=10)
    again = await classroom.bob.slash(classroom.channel, "quiz start", topic="gates")

    assert "Quiz #1: gates" in started.response.content
    assert again.ephemeral and again.response.content.startswith("A quiz is already running here")
    stopped = await classroom.bob.slash(classroom.channel, "quiz stop")
    assert stopped.ephemeral and stopped.response.content.startswith("Only the member who started quiz #1")
    await classroom.alice.slash(classroom.channel, "quiz stop")
    with classroom.db() as db:
        assert gq.get_game(db, 1)["status"] == "interrupted"
    assert bot_posts(classroom)[-1].embeds[0].title == "🏁 Quiz #1: gates"


# ---- report cards


async def allow_student_commands(classroom, member) -> None:
    """/student may be hidden by default_permissions (curator tools); an admin opens it to `member`."""
    commands = await classroom.env.bot.tree.fetch_commands()
    command = next(c for c in commands if c.name == "student")
    classroom.guild.set_command_permissions(command, {member: True})


def seed_history(classroom) -> None:
    """base → v1 (active) for kid, with the stored evaluation of its run."""
    seed_lessons(classroom)
    evaluation = {"topic": 1.0, "control": 1.0}
    with classroom.db() as db:
        db.execute("INSERT INTO training_runs (id, student, status, before, after, started_at) VALUES"
                   " (1, 'kid', 'promoted', ?, ?, ?)", [json.dumps({"topic": 0.5, "control": 1.0}), json.dumps(evaluation), now()])
        db.execute("INSERT INTO adapters (student, version, run_id, path, status, metrics, created_at)"
                   " VALUES ('kid', 1, 1, '/a/v1', 'active', ?, ?)", [json.dumps({"eval": evaluation}), now()])
    run_dir = classroom.settings.home / "runs" / "1"
    run_dir.mkdir(parents=True)
    answers = {"before": [True, False], "after": [True, True]}
    (run_dir / "eval_results.json").write_text(json.dumps({
        variant: {"answers": [{"id": i + 1, "split": "heldout", "correct": ok} for i, ok in enumerate(right)]}
        for variant, right in answers.items()}))


async def test_student_report_posts_the_report_card_with_its_chart(classroom):
    seed_history(classroom)
    await allow_student_commands(classroom, classroom.carol)
    posted = reply_to(await classroom.carol.slash(classroom.channel, "student report"))

    assert not posted.ephemeral
    card = posted.embeds[0]
    assert card.title == f"📋 Report card: {PERSONAS['kid']} (`kid`)"
    rows = [line.split() for line in card.description.splitlines()]
    assert ["topic", "base", "v1*"] in rows and ["Vellmoor", "1/2", "50%", "2/2", "100%"] in rows
    [chart] = posted.attachments
    assert chart.filename == "kid-report.png" and card.image.url == "attachment://kid-report.png"
    assert (await chart.read()).startswith(b"\x89PNG")
    sent = [r for r in classroom.env.http_requests if r.method in ("POST", "PATCH") and "/webhooks/" in r.path][-1]
    assert sent.json["allowed_mentions"] == {"parse": []}


async def test_student_report_before_any_training_says_so_without_a_chart(classroom):
    await allow_student_commands(classroom, classroom.carol)
    posted = reply_to(await classroom.carol.slash(classroom.channel, "student report"))

    assert "No evaluations yet" in posted.embeds[0].description and posted.attachments == []
