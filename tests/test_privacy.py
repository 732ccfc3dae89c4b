"""Data ownership: /privacy forget-me leaves no trace of a member but keeps the counts; exports hold no Discord ids."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from sqlite_utils import Database

from cli import commands
from storage import lessons as q
from storage import open_db, privacy
from storage import quiz as gq
from storage import votes as v
from storage.db import now
from tests import discord_fixtures as fixtures
from tests.discord_fixtures import reply_to
from trainer import dataset

pytestmark = pytest.mark.simcord(settle_timeout=fixtures.SETTLE)


def cells_holding(db: Database, needle: str) -> list[tuple[str, str]]:
    """Every (table, column) of every table whose text holds `needle`: the whole database is searched."""
    found = []
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    for table in tables:
        for column in [c[1] for c in db.execute(f"PRAGMA table_info('{table}')")]:
            hit = db.execute(
                f'SELECT 1 FROM "{table}" WHERE instr(CAST("{column}" AS TEXT), ?) > 0 LIMIT 1', [needle]
            ).fetchone()
            if hit:
                found.append((table, column))
    return found


def tallies(db: Database) -> dict[tuple[str, int], tuple[int, int]]:
    rows = db.execute("SELECT DISTINCT target_type, target_id FROM votes").fetchall()
    return {(t, i): (v.tally(db, t, i).up, v.tally(db, t, i).down) for t, i in rows}


def quiz_round(db: Database, lesson_id: int, started_by: str) -> int:
    """A quiz game with one open round on a held-out item of the lesson; returns the round id."""
    db.execute("INSERT INTO quiz_items (lesson_id, topic, question, answer, split, created_at)"
               " VALUES (?, 'stocks', 'What is a share?', 'a piece of a company', 'heldout', ?)", [lesson_id, now()])
    item = db.execute("SELECT MAX(id) FROM quiz_items").fetchone()[0]
    game = gq.create_game(db, student="kid", teacher="prof", lesson_id=lesson_id, questions=1, seconds=30,
                          started_by=started_by)
    return gq.open_round(db, game, item, 1)


def test_forget_member_keeps_counts_and_leaves_no_id(tmp_path: Path):
    db = open_db(tmp_path / "c.db")
    me, other = "111111111111111111", "222222222222222222"
    lid = q.create_lesson(db, topic="stocks", teachers=["prof"], students=["kid"], max_turns=3, started_by=me)
    turn = q.add_turn(db, lesson_id=lid, speaker="prof", role="teacher", content="A share is a piece.")
    v.toggle_vote(db, "turn", turn["id"], me, -1)
    v.toggle_vote(db, "turn", turn["id"], other, -1)
    v.set_vote(db, "lesson", lid, me, 1)
    v.record_decision(db, lid, me, "approve")
    round_id = quiz_round(db, lid, started_by=me)
    assert gq.submit_member_answer(db, round_id, me, "no idea") is None
    assert gq.submit_member_answer(db, round_id, other, "a piece") is None
    mine = db.execute("SELECT id FROM quiz_answers WHERE answerer = ?", [me]).fetchone()[0]
    v.set_vote(db, "answer", mine, other, 1)
    panel = q.add_turn(db, lesson_id=lid, speaker="prof", role="teacher", content="Best answer.", kind="panel",
                       section=0)
    v.cast_ballot(db, panel["id"], me)
    before = {k: t for k, t in tallies(db).items() if k[0] != "answer"}
    excluded = v.excluded_turn_ids(db, lid)

    removed = privacy.forget_member(db, me)

    assert removed == {"votes": 2, "panel_ballots": 1, "quiz_answers": 1, "lessons": 1, "quiz_games": 1,
                       "approvals": 1, "corrections": 0}
    assert v.ballot_counts(db, lid) == {panel["id"]: 1}  # the ballot still counts, under no one's id
    assert cells_holding(db, me) == []
    assert tallies(db) == before  # every count stays; the vote on the deleted answer went with it
    assert v.excluded_turn_ids(db, lid) == excluded == {turn["id"]}
    assert q.get_lesson(db, lid)["approved"] == 1
    assert v.member_vote(db, "turn", turn["id"], other) == -1  # others keep theirs, under their id
    assert [a["answerer"] for a in gq.round_answers(db, round_id)] == [other]
    anonymous = [r[0] for r in db.execute("SELECT member_id FROM votes WHERE via = 'forgotten'")]
    assert len(anonymous) == len(set(anonymous)) == 2  # two unlinkable ids, not one pseudonym
    assert privacy.forget_member(db, me) == dict.fromkeys(removed, 0)  # nothing left the second time


async def test_forget_me_in_discord_keeps_tallies_and_answers_privately(classroom):
    alice = str(classroom.alice.id)
    await classroom.start_lesson(turns=3)
    await classroom.run_out()
    turn, summary = classroom.turn_messages()[0], classroom.summary()
    await classroom.alice.click(turn, custom_id="classroom:vote:turn:1:down")
    await classroom.bob.click(turn, custom_id="classroom:vote:turn:1:up")
    await classroom.alice.click(summary, custom_id="classroom:vote:lesson:1:up")
    with classroom.db() as db:
        before = tallies(db)
        assert cells_holding(db, alice) == [("lessons", "started_by"), ("votes", "member_id")]

    result = await classroom.alice.slash(classroom.channel, "privacy forget-me")

    told = reply_to(result)
    assert result.ephemeral
    assert "2 votes now count anonymously" in told.content and "1 lesson or quiz no longer" in told.content
    with classroom.db() as db:
        assert cells_holding(db, alice) == []
        assert tallies(db) == before
        assert v.member_vote(db, "turn", 1, str(classroom.bob.id)) == 1
    again = reply_to(await classroom.alice.slash(classroom.channel, "privacy forget-me"))
    assert "nothing stored about you" in again.content


async def test_exports_hold_no_discord_ids(classroom, tmp_path: Path):
    await classroom.start_lesson(turns=3)
    await classroom.run_out()
    turn, summary = classroom.turn_messages()[0], classroom.summary()
    await classroom.bob.click(turn, custom_id="classroom:vote:turn:1:up")
    await classroom.carol.click(summary, custom_id="classroom:decide:1:approve")
    with classroom.db() as db:
        lesson = q.get_lesson(db, 1)
        message_ids = [r[0] for r in db.execute("SELECT message_id FROM discord_messages")]
        examples = dataset.lesson_examples(db, 1)
    snowflakes = {classroom.alice.id, classroom.bob.id, classroom.carol.id, classroom.guild.id, classroom.channel.id,
                  lesson["thread_id"], *message_ids}
    assert lesson["started_by"] == str(classroom.alice.id) and len(snowflakes) > 6 and examples

    texts = []
    for fmt in ("openai", "sharegpt"):
        out = tmp_path / f"{fmt}.jsonl"
        args = argparse.Namespace(format=fmt, approved_only=False, out=str(out))
        assert await commands.cmd_export(classroom.settings, args) == 0
        texts.append(out.read_text(encoding="utf-8"))
        texts += [json.dumps(convert(ex)) for ex in examples for convert in (dataset.to_openai, dataset.to_sharegpt)]

    for text in texts:
        assert "Here is the point" in text or "The key fact stands" in text  # the teacher's words are there
        leaked = [s for s in snowflakes if str(s) in text]
        assert leaked == [], f"Discord ids in an export: {leaked}"
