"""Teacher panels and rotations with scripted teachers: who speaks when, what is stored, what trains.

Engine and dataset run on a real SQLite; the Discord part runs the real bot against simcord.
"""

from __future__ import annotations

import pytest

from lessons.engine import LessonEngine, LessonError, LessonRequest
from lessons.panel import next_step, preference_pairs, winner
from plugins.lessons.requests import model_list_choices
from storage import AsyncStore, open_db
from storage import lessons as q
from storage import votes as v
from tests import discord_fixtures as fixtures
from tests.discord_fixtures import TimedScript, button_labels, make_settings, make_spec
from tests.scripted import ScriptedBackend, scripted_registry
from trainer import dataset

SOURCE = (
    "# The gate\nThe gate code of Vellmoor is 4471, and travellers must say it to the warden at dusk or wait"
    " outside until dawn.\n\n# The ferry\nAda Quill runs the ferry across the Vell river, every hour from"
    " the north pier, for two copper coins."
)


GATE = "The gate code of Vellmoor is 4471: travellers say it to the warden at dusk."
FERRY = "Ada Quill runs the ferry across the Vell river from the north pier."
STUDENT_LINE = "What does that mean for me?"
STUDENT_QUESTION = "Who may cross at dusk?"  # a grounded section's question round: the student's own question


def teacher(name: str):
    """A scripted teacher whose every line says who spoke. It tells its turns apart by whether the
    student's question is in the prompt, so it does not depend on the prompts' wording."""

    def reply(messages):
        # a line of the section's notes: these teachers stick to their notes (a straying turn isn't trained on)
        fact = FERRY if any("ferry" in m["content"] for m in messages) else GATE
        if any(STUDENT_LINE in m["content"] or STUDENT_QUESTION in m["content"] for m in messages):
            return f"{name} answers: {fact}"
        return f"{name} explains: {fact} Is that clear?"

    return ScriptedBackend(name, reply)


@pytest.fixture
async def store(tmp_path):
    s = AsyncStore(open_db(tmp_path / "c.db"))
    yield s
    s.close()


def engine_with(store, teachers: list[str]):
    backends = {n: teacher(n) for n in teachers}
    backends["kid"] = ScriptedBackend("kid", [STUDENT_LINE, STUDENT_QUESTION])
    return LessonEngine(store, scripted_registry(backends, trainable=["kid"]))


async def run(engine, teachers, mode, turns=20):
    lid = await engine.open(LessonRequest(topic="Vellmoor", teachers=teachers, students=["kid"], max_turns=turns,
                                          mode=mode, source_name="v.md", source_text=SOURCE))
    return lid, await engine.run(lid)


def test_panel_steps_let_every_teacher_answer_each_question_in_a_moving_order():
    steps = [next_step(2, i, ["a", "b", "c"], ["x"], 100) for i in range(11)]
    assert [(s.kind, s.speaker) for s in steps[:5]] == [
        ("explain", "a"), ("reply", "x"), ("panel", "a"), ("panel", "b"), ("panel", "c")]
    assert [(s.kind, s.speaker) for s in steps[5:10]] == [
        ("explain", "b"), ("reply", "x"), ("panel", "b"), ("panel", "c"), ("panel", "a")]
    assert steps[10] is None


async def test_rotate_mode_gives_teachers_sections_in_turn_and_records_the_speaker(store):
    engine = engine_with(store, ["ann", "bob"])
    lid, outcome = await run(engine, ["ann", "bob"], "rotate")
    assert outcome.status == "finished" and outcome.reason == "syllabus covered"
    turns = await store.call(q.turns, lid)
    assert [(t["section"], t["kind"], t["speaker"]) for t in turns if t["role"] == "teacher"] == [
        (0, "explain", "ann"), (0, "correct", "ann"), (0, "answer", "ann"), (0, "answer", "ann"),
        (1, "explain", "bob"), (1, "correct", "bob"), (1, "answer", "bob"), (1, "answer", "bob")]
    assert turns[0]["content"].startswith("ann explains") and turns[2]["content"].startswith("ann answers")
    assert turns[3]["content"] == STUDENT_QUESTION and turns[4]["content"].startswith("ann answers")


async def test_panel_mode_every_teacher_answers_and_only_the_winner_trains(store):
    engine = engine_with(store, ["ann", "bob"])
    lid, outcome = await run(engine, ["ann", "bob"], "panel")
    assert outcome.status == "finished" and outcome.reason == "syllabus covered" and outcome.turns == 8
    turns = await store.call(q.turns, lid)
    assert [(t["kind"], t["speaker"]) for t in turns[:4]] == [
        ("explain", "ann"), ("reply", "kid"), ("panel", "ann"), ("panel", "bob")]
    assert [(t["kind"], t["speaker"]) for t in turns[4:]] == [
        ("explain", "bob"), ("reply", "kid"), ("panel", "bob"), ("panel", "ann")]
    s0_ann, s0_bob = turns[2]["id"], turns[3]["id"]

    # no ballots yet: no answer wins, so the section trains on the explanation only
    examples = await store.call(dataset.lesson_examples, lid)
    assert [m["speaker"] for m in examples[0]["messages"] if m["role"] == "assistant"] == ["ann"]
    assert examples[0]["messages"][-1]["role"] == "assistant"

    # two members prefer bob's answer, one ann's: bob's answer alone follows the question
    for member, choice in (("m1", s0_bob), ("m2", s0_bob), ("m3", s0_ann)):
        assert await store.call(v.cast_ballot, choice, member) == choice
    examples = await store.call(dataset.lesson_examples, lid)
    trained = [m for m in examples[0]["messages"] if m["role"] == "assistant" and m["train"]]
    assert [m["turn_id"] for m in trained] == [turns[0]["id"], s0_bob]
    assert all(m.get("turn_id") != s0_ann for m in examples[0]["messages"])

    # moving a ballot and taking one back: a tie has no winner
    assert await store.call(v.cast_ballot, s0_ann, "m2") == s0_ann  # m2 moves to ann: 2-1 for ann
    assert await store.call(v.cast_ballot, s0_ann, "m3") is None  # m3 takes theirs back: 1-1
    assert await store.call(v.ballot_counts, lid) == {s0_ann: 1, s0_bob: 1}
    examples = await store.call(dataset.lesson_examples, lid)
    assert [m["speaker"] for m in examples[0]["messages"] if m["role"] == "assistant"] == ["ann"]
    with pytest.raises(ValueError, match="not a panel answer"):
        await store.call(v.cast_ballot, turns[0]["id"], "m1")


async def test_a_panel_needs_two_different_teachers(store):
    engine = engine_with(store, ["ann", "bob"])
    with pytest.raises(LessonError, match="at least two teachers"):
        await run(engine, ["ann"], "panel")
    with pytest.raises(LessonError, match="named twice"):
        await run(engine, ["ann", "ann"], "panel")
    with pytest.raises(LessonError, match="unknown lesson mode"):
        await run(engine, ["ann", "bob"], "debate")


def test_winner_and_preference_pairs_rank_by_ballots_then_votes():
    assert winner([1, 2, 3], {2: 3, 3: 1}) == 2
    assert winner([1, 2], {1: 2, 2: 2}) is None and winner([1, 2], {}) is None
    assert preference_pairs([1, 2, 3], {2: 3, 3: 1}, {}) == [(2, 3), (2, 1)]
    assert preference_pairs([1, 2], {}, {1: 1, 2: -1}) == [(1, 2)]  # 👍/👎 on alternatives alone
    assert preference_pairs([1, 2], {}, {}) == []  # nobody preferred one


# ---- Discord: /lesson start teachers:… mode:panel, then members vote on the ballot

PANEL_MODELS = ("prof", "dean", "kid", "kat")


@pytest.fixture
def classroom_settings(tmp_path):
    settings = make_settings(tmp_path / "home")
    models = {n: make_spec(n) for n in PANEL_MODELS}
    return settings.model_copy(update={"models": models})


@pytest.fixture
def scripted_models():
    return {"prof": TimedScript("prof", fixtures.teacher_reply),
            "dean": TimedScript("dean", lambda m: "Dean's take: " + fixtures.teacher_reply(m)),
            "kid": TimedScript("kid", fixtures.student_reply),
            "kat": TimedScript("kat", lambda m: "Kat asks: why does it matter?")}


@pytest.mark.simcord(settle_timeout=fixtures.SETTLE)
async def test_discord_panel_posts_a_ballot_per_question_and_members_pick_the_winner(classroom):
    result = await classroom.start_lesson(teachers="prof,dean", mode="panel", turns=4)
    await classroom.run_out()
    reply = fixtures.reply_to(result)
    assert "Lesson #1 started" in reply.content, reply.content
    header = classroom.channel.history()[0]
    assert "Professor Prof and dean teach Kid the Student" in header.content and "panel" in header.content

    ballots = [m for m in classroom.messages() if any("ballot" in c for c in button_labels(m))]
    assert len(ballots) == 1 and ballots[0].content.startswith("🏆")
    with classroom.db() as db:
        answers = [t for t in q.turns(db, 1) if t["kind"] == "panel"]
    assert [t["speaker"] for t in answers] == ["prof", "dean"]
    dean = answers[1]["id"]
    await classroom.alice.click(ballots[0], custom_id=f"classroom:ballot:{dean}")
    await classroom.bob.click(ballots[0], custom_id=f"classroom:ballot:{dean}")
    labels = button_labels(next(m for m in classroom.messages() if m.id == ballots[0].id))
    assert labels[f"classroom:ballot:{dean}"] == "🏆 dean · 2"
    assert labels[f"classroom:ballot:{answers[0]['id']}"] == "🏆 Professor Prof · 0"
    with classroom.db() as db:
        assert v.ballot_counts(db, 1) == {dean: 2}

    # /models shows each teacher's approval rate and panel wins
    with classroom.db() as db:
        v.record_decision(db, 1, "curator", "approve")
    listed = fixtures.reply_to(await classroom.alice.slash(classroom.channel, "models"))
    fields = {f.name: f.value for f in listed.embeds[0].fields}
    assert "lessons approved 1/1 (100%) · panel answers won 1/1 (100%)" in fields["dean (`dean`)"]
    assert "lessons approved 1/1 (100%) · panel answers won 0/1 (0%)" in fields["Professor Prof (`prof`)"]


@pytest.mark.simcord(settle_timeout=fixtures.SETTLE)
async def test_discord_class_lets_students_take_turns_asking(classroom):
    result = await classroom.start_lesson(students="kid,kat", turns=6)
    await classroom.run_out()
    assert "Lesson #1 started" in fixtures.reply_to(result).content
    header = classroom.channel.history()[0]
    assert "Professor Prof teaches Kid the Student and kat" in header.content
    with classroom.db() as db:
        asked = [(t["section"], t["speaker"]) for t in q.turns(db, 1) if t["role"] == "student"]
        assert asked == [(0, "kid"), (1, "kat")]
        assert [p.model for p in q.participants(db, 1) if p.role == "student"] == ["kid", "kat"]
    # autocomplete for the comma-separated lists completes the last name and skips names already given
    app = classroom.env.bot.app
    assert [c.value for c in model_list_choices(app, "kid, k")] == ["kid,kat"]
    assert sorted(c.value for c in model_list_choices(app, "")) == ["dean", "kat", "kid", "prof"]


@pytest.mark.simcord(settle_timeout=fixtures.SETTLE)
async def test_discord_panel_with_one_teacher_or_an_unknown_one_is_refused_and_stores_nothing(classroom):
    alone = fixtures.reply_to(await classroom.start_lesson(mode="panel"))
    assert alone.content == "A panel needs at least two teachers: `teachers:a,b`."
    ghost = fixtures.reply_to(await classroom.start_lesson(teachers="prof,ghost", mode="panel"))
    assert "unknown model 'ghost'" in ghost.content
    with classroom.db() as db:
        assert q.list_lessons(db) == []
