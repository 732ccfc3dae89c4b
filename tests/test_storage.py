"""Storage on a real SQLite file: schema, lessons and turns, votes, approvals."""

from __future__ import annotations

import sqlite3

import pytest

from storage import lessons as q
from storage import open_db
from storage import votes as v


@pytest.fixture
def db(tmp_path):
    d = open_db(tmp_path / "c.db")
    yield d
    d.conn.close()


def _lesson(db, **kw):
    return q.create_lesson(db, topic="stocks", teachers=["t1", "t2"], students=["s"], max_turns=6, **kw)


def test_schema_is_migrated_with_wal_and_foreign_keys(tmp_path, db):
    assert db.execute("PRAGMA user_version").fetchone()[0] >= 1
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    for table in ("lessons", "lesson_participants", "turns", "sources", "votes", "approvals", "quiz_items",
                  "quiz_answers", "training_runs", "adapters"):
        assert table in db.table_names()
    # reopening does not re-run migrations
    again = open_db(tmp_path / "c.db")
    assert again.execute("PRAGMA user_version").fetchone()[0] == db.execute("PRAGMA user_version").fetchone()[0]


def test_lesson_keeps_several_teachers_and_students_in_order(db):
    lid = q.create_lesson(db, topic="t", teachers=["a", "b"], students=["x", "y"], max_turns=4)
    assert [(p.model, p.role) for p in q.participants(db, lid)] == [("a", "teacher"), ("b", "teacher"), ("x", "student"), ("y", "student")]


def test_turns_get_consecutive_sequence_numbers_and_are_committed_at_once(tmp_path, db):
    lid = _lesson(db)
    t1 = q.add_turn(db, lesson_id=lid, speaker="t1", role="teacher", content="A stock is a share.")
    t2 = q.add_turn(db, lesson_id=lid, speaker="s", role="student", content="So I own part?")
    assert (t1["seq"], t2["seq"]) == (1, 2)
    # another connection sees both turns immediately: nothing waits for a later commit
    other = sqlite3.connect(tmp_path / "c.db")
    assert other.execute("SELECT COUNT(*) FROM turns WHERE lesson_id = ?", [lid]).fetchone()[0] == 2


def test_turn_foreign_key_rejects_unknown_lesson(db):
    with pytest.raises(sqlite3.IntegrityError):
        q.add_turn(db, lesson_id=999, speaker="x", role="teacher", content="hi")


def test_sources_are_stored_once_per_content(db):
    a = q.add_source(db, "faq.md", "# FAQ\nhello")
    b = q.add_source(db, "other-name.md", "# FAQ\nhello")
    assert a == b
    assert q.get_source(db, a)["sha256"]


def test_running_lessons_are_marked_interrupted_at_startup(db):
    lid = _lesson(db)
    done = _lesson(db)
    q.finish_lesson(db, done, "finished")
    assert q.mark_running_interrupted(db) == [lid]
    assert q.get_lesson(db, lid)["status"] == "interrupted"
    assert q.get_lesson(db, done)["status"] == "finished"


def test_button_votes_toggle_and_change(db):
    assert v.toggle_vote(db, "turn", 1, "m1", 1) == 1
    assert v.tally(db, "turn", 1).up == 1
    assert v.toggle_vote(db, "turn", 1, "m1", 1) == 0  # same button again removes the vote
    assert v.tally(db, "turn", 1) == v.Tally(0, 0)
    v.toggle_vote(db, "turn", 1, "m1", 1)
    assert v.toggle_vote(db, "turn", 1, "m1", -1) == -1  # the other button changes it
    assert v.tally(db, "turn", 1) == v.Tally(0, 1)


def test_reaction_and_button_count_once_per_member(db):
    v.set_vote(db, "turn", 7, "m1", 1, via="reaction")
    assert v.toggle_vote(db, "turn", 7, "m1", -1) == -1
    assert v.tally(db, "turn", 7) == v.Tally(0, 1)
    v.clear_vote(db, "turn", 7, "m1", value=1)  # removing the old 👍 reaction must not drop the 👎
    assert v.member_vote(db, "turn", 7, "m1") == -1


def test_invalid_votes_are_refused(db):
    with pytest.raises(ValueError):
        v.toggle_vote(db, "turn", 1, "m", 2)
    with pytest.raises(ValueError):
        v.toggle_vote(db, "lessonz", 1, "m", 1)


def test_threshold_approval_and_curator_override(db):
    lid = _lesson(db)
    q.finish_lesson(db, lid, "finished")
    for m in ("a", "b"):
        v.toggle_vote(db, "lesson", lid, m, 1)
    assert not v.refresh_threshold_approval(db, lid, 3)
    v.toggle_vote(db, "lesson", lid, "c", 1)
    assert v.refresh_threshold_approval(db, lid, 3)
    assert [row["id"] for row in v.approved_lessons(db, student="s")] == [lid]
    assert v.approved_lessons(db, student="nobody") == []
    v.record_decision(db, lid, "curator", "reject")
    assert not v.refresh_threshold_approval(db, lid, 3)  # the curator's word wins over votes
    assert v.approved_lessons(db) == []


def test_net_negative_turns_are_excluded(db):
    lid = _lesson(db)
    good = q.add_turn(db, lesson_id=lid, speaker="t1", role="teacher", content="good")
    bad = q.add_turn(db, lesson_id=lid, speaker="t1", role="teacher", content="bad")
    v.toggle_vote(db, "turn", good["id"], "a", 1)
    v.toggle_vote(db, "turn", bad["id"], "a", -1)
    v.toggle_vote(db, "turn", bad["id"], "b", -1)
    v.toggle_vote(db, "turn", bad["id"], "c", 1)
    assert v.excluded_turn_ids(db, lid) == {bad["id"]}


def test_forget_member_removes_votes_and_authorship(db):
    lid = _lesson(db, started_by="42")
    v.toggle_vote(db, "turn", 1, "42", 1)
    v.toggle_vote(db, "turn", 1, "43", 1)
    removed = v.forget_member(db, "42")
    assert removed["votes"] == 1 and removed["lessons"] == 1
    assert v.tally(db, "turn", 1).up == 2  # the vote stays as an anonymous count
    assert v.member_vote(db, "turn", 1, "42") == 0
    assert q.get_lesson(db, lid)["started_by"] is None
