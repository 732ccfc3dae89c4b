"""Quiz game rules, quiz storage and report cards, without Discord (real in-memory SQLite, scripted models)."""

from __future__ import annotations

import random

import pytest

from quiz import game
from quiz.report import score_chart
from quiz.report_card import columns, topic_table
from storage import lessons as lq
from storage import open_db
from storage import quiz as gq
from storage.db import now
from tests.scripted import ScriptedBackend

ITEM = {"id": 7, "question": "What is the gate code of Vellmoor?", "answer": "4471", "keywords": None}


@pytest.fixture
def db():
    d = open_db(":memory:")
    yield d
    d.conn.close()


# ---- grading and the teacher's correction


async def test_a_capable_teacher_judges_answers_and_a_failing_judge_falls_back_to_the_reference_grader():
    judge = ScriptedBackend("gpt", "Yes.")
    assert await game.grade("the code is four four seven one", ITEM, judge) == game.Grade(True, 1.0, "judge:gpt")
    assert "Reference answer: 4471" in judge.calls[0][0]["content"]

    judge.fail_on_call = 1
    assert await game.grade("It is 1234", ITEM, judge) == game.Grade(False, 0.0, "reference")


async def test_no_judge_is_asked_without_a_reference_and_an_empty_answer_is_wrong():
    judge = ScriptedBackend("gpt", "Yes.")
    keywords_only = {**ITEM, "answer": None, "keywords": ["4471"]}
    assert (await game.grade("4471", keywords_only, judge)).grader == "keywords"
    assert await game.grade("  ", ITEM, judge) == game.Grade(False, 0.0, "empty")
    assert judge.calls == []


async def test_the_correction_is_the_teachers_phrasing_only_when_it_states_the_reference():
    good = ScriptedBackend("prof", "Prof: The gate code of Vellmoor is 4471.")
    assert await game.teacher_correction(good, "Prof", "Vellmoor", ITEM) == "The gate code of Vellmoor is 4471."
    assert "4471" in good.calls[0][-1]["content"] and good.calls[0][-1]["content"].startswith(ITEM["question"])

    off_topic = ScriptedBackend("prof", "Great question! Vellmoor is lovely.")
    assert await game.teacher_correction(off_topic, "Prof", "Vellmoor", ITEM) == "4471"
    down = ScriptedBackend("prof", "x", fail_on_call=1)
    assert await game.teacher_correction(down, "Prof", "Vellmoor", ITEM) == "4471"


def test_pick_asks_everything_when_short_and_a_sample_in_written_order_otherwise():
    items = [{"id": i} for i in range(10, 0, -1)]
    assert [i["id"] for i in game.pick(items[:3], 5)] == [8, 9, 10]
    drawn = [i["id"] for i in game.pick(items, 4, random.Random(1))]
    assert len(drawn) == 4 and drawn == sorted(drawn)


@pytest.mark.parametrize(
    ("student", "members", "last"),
    [(2, [1, 0], "🏆 Kid beat the class."), (1, [3], "🏆 The class beat Kid."), (1, [], "👥 No member answered this time.")],
)
def test_the_scoreboard_says_who_won(student, members, last):
    rows = [game.Standing("kid", "model", student, 3)] + [game.Standing(str(i), "member", c, 3) for i, c in enumerate(members)]
    lines = game.scoreboard_lines(rows, 3, "Kid", lambda m: f"<@{m}>")
    assert lines[0] == f"🤖 **Kid**: {student}/3" and lines[-1] == last


# ---- storage


def seed_game(db, guild_id: int | None = 1) -> tuple[int, int]:
    lesson = lq.create_lesson(db, topic="Vellmoor 100%_facts", teachers=["prof"], students=["kid"], max_turns=2,
                              guild_id=guild_id)
    item = int(db.execute("INSERT INTO quiz_items (lesson_id, topic, question, answer, split, created_at) VALUES"
                          " (?, 'Vellmoor 100%_facts', ?, '4471', 'heldout', ?)", [lesson, ITEM["question"], now()]).lastrowid)
    game_id = gq.create_game(db, student="kid", teacher="prof", questions=1, seconds=30, lesson_id=lesson, channel_id=5)
    return game_id, gq.open_round(db, game_id, item, 1)


def test_game_items_match_topics_literally_and_stay_in_their_server(db):
    seed_game(db, guild_id=1)
    assert len(gq.game_items(db, topic="100%_facts", guild_id=1)) == 1
    assert gq.game_items(db, topic="100%-facts", guild_id=1) == []  # % and _ are not wildcards
    assert gq.game_items(db, lesson_id=1, guild_id=2) == []
    assert gq.game_items(db, lesson_id=2) == []


def test_members_answer_once_per_open_round_and_an_interrupted_game_closes_its_rounds(db):
    game_id, round_id = seed_game(db)
    assert gq.submit_member_answer(db, round_id, "11", "1234") is None
    assert gq.submit_member_answer(db, round_id, "11", "4471") is None
    assert [a["answer"] for a in gq.round_answers(db, round_id)] == ["4471"]

    assert gq.mark_running_games_interrupted(db) == [game_id]
    assert gq.get_game(db, game_id)["status"] == "interrupted"
    assert gq.submit_member_answer(db, round_id, "12", "4471") == "Time is up for that question; answers are closed."


def test_only_a_voted_down_model_answer_with_an_explanation_becomes_one_correction_and_leaves_the_heldout_set(db):
    _, round_id = seed_game(db)
    gq.submit_member_answer(db, round_id, "11", "1234")
    member_answer = gq.round_answers(db, round_id)[0]["id"]
    model_answer = gq.add_model_answer(db, item_id=1, round_id=round_id, answerer="kid", answer="1234")

    assert gq.vote_on_answer(db, member_answer, "12", -1, "sys").correction_id is None
    assert gq.vote_on_answer(db, model_answer, "12", -1, "sys").correction_id is None  # no explanation yet
    gq.vote_on_answer(db, model_answer, "12", -1, "sys")  # toggled back off
    gq.set_round_explanation(db, round_id, "The code is 4471.")
    first = gq.vote_on_answer(db, model_answer, "12", -1, "sys")
    second = gq.vote_on_answer(db, model_answer, "13", -1, "sys")
    assert first.correction_id == 1 and second.correction_id is None and second.tally.down == 2
    assert gq.vote_on_answer(db, 999, "12", 1, "sys") is None

    assert gq.approved_corrections(db, "kid") == []
    gq.decide_correction(db, 1, "curator", "approve")
    assert gq.game_items(db, lesson_id=1) == []  # trained on from now on: no longer held out
    [example] = gq.approved_corrections(db, "kid")
    assert example["messages"][0] == {"role": "system", "content": "sys"}
    assert example["messages"][2]["content"] == "The code is 4471."
    gq.decide_correction(db, 1, "curator", "reject")  # the last decision wins
    assert gq.approved_corrections(db, "kid") == []


# ---- report cards


def adapter(id_: int, version: int, parent: int | None, status: str) -> dict:
    return {"id": id_, "version": version, "parent_id": parent, "run_id": id_, "status": status}


def answers(*right: bool) -> dict:
    return {"answers": [{"id": i + 1, "split": "heldout", "correct": ok} for i, ok in enumerate(right)]
            + [{"id": "control-0", "split": "control", "correct": True}]}


def test_each_version_shows_its_latest_evaluation_and_the_active_one_is_always_kept():
    adapters = [adapter(i, i, i - 1 if i > 1 else None, "active" if i == 2 else "retired") for i in range(1, 9)]
    results = {i: {"before": answers(False), "after": answers(True, i % 2 == 0)} for i in range(1, 9)}
    cols = columns(adapters, results, {1: "gate", 2: "ferry"})

    assert [c.label for c in cols] == ["base", "v2", "v5", "v6", "v7", "v8"]
    v2 = cols[1]
    assert v2.run_id == 3 and v2.topics == {"gate": (0, 1)}  # evaluated again as run 3's "before"
    table = topic_table(cols).splitlines()
    assert table[0].split() == ["topic", "base", "v2*", "v5", "v6", "v7", "v8"]
    assert table[-1].split()[:5] == ["control", "set", "1/1", "100%", "1/1"]


def test_the_score_chart_is_a_png_even_with_no_versions():
    assert score_chart("Kid", []).startswith(b"\x89PNG")
