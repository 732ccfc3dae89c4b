"""`classroom backup` while the bot writes, and `classroom restore` that refuses what it must and loses nothing."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from cli.main import main
from storage import lessons as q
from storage import open_db
from storage import votes as v


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "classroom.toml"
    path.write_text(f'home = "{tmp_path / "home"}"\n', encoding="utf-8")
    return path


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "home" / "classroom.db"


def seeded(tmp_path: Path, topic: str = "stocks") -> int:
    """A database with one lesson of two turns; returns the lesson id."""
    db = open_db(db_path(tmp_path))
    lid = q.create_lesson(db, topic=topic, teachers=["prof"], students=["kid"], max_turns=2)
    for text in ("A share is a piece.", "Of a company?"):
        q.add_turn(db, lesson_id=lid, speaker="prof", role="teacher", content=text)
    db.conn.close()
    return lid


def topics(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT topic FROM lessons ORDER BY id")]
    finally:
        conn.close()


def test_backup_is_a_consistent_snapshot_while_the_bot_writes(tmp_path, cfg, capsys):
    seeded(tmp_path)
    writer_db = open_db(db_path(tmp_path))  # the bot's connection, writing all along
    acknowledged: list[int] = []
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set() or n < 50:
            v.toggle_vote(writer_db, "turn", 1, f"member{n}", 1)
            acknowledged.append(n)  # after the commit, as a member would see it
            n += 1

    writer = threading.Thread(target=write)
    writer.start()
    while len(acknowledged) < 20:
        stop.wait(0.01)
    before = len(acknowledged)
    try:
        assert main(["--config", str(cfg), "backup", str(tmp_path / "b1.db")]) == 0
    finally:
        stop.set()
        writer.join()
        writer_db.conn.close()

    assert "integrity ok" in capsys.readouterr().out
    conn = sqlite3.connect(tmp_path / "b1.db")
    saved = sorted(int(r[0].removeprefix("member")) for r in conn.execute("SELECT member_id FROM votes"))
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert len(saved) >= before  # every vote acknowledged before the backup began is in it
    assert saved == list(range(len(saved)))  # a prefix: a snapshot, never half of a later write


def test_backup_never_overwrites(tmp_path, cfg, capsys):
    seeded(tmp_path)
    (tmp_path / "taken.db").write_bytes(b"precious")
    assert main(["--config", str(cfg), "backup", str(tmp_path / "taken.db")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "taken.db").read_bytes() == b"precious"


def test_restore_refuses_while_running_and_keeps_the_replaced_database(tmp_path, cfg, capsys):
    seeded(tmp_path, "before the backup")
    assert main(["--config", str(cfg), "backup", str(tmp_path / "b.db")]) == 0
    seeded(tmp_path, "after the backup")

    bot = open_db(db_path(tmp_path))  # the bot is running
    try:
        assert main(["--config", str(cfg), "restore", str(tmp_path / "b.db")]) == 2
        assert "appears to be running" in capsys.readouterr().err
        assert topics(db_path(tmp_path)) == ["before the backup", "after the backup"]
    finally:
        bot.conn.close()

    assert main(["--config", str(cfg), "restore", str(tmp_path / "b.db")]) == 0
    out = capsys.readouterr().out
    assert "1 lessons, 2 turns, 0 votes" in out and "kept at" in out
    assert topics(db_path(tmp_path)) == ["before the backup"]
    aside = list((tmp_path / "home").glob("classroom.db.replaced-*"))
    assert len(aside) == 1 and topics(aside[0]) == ["before the backup", "after the backup"]
    db = open_db(db_path(tmp_path))  # the restored database is a working one
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert q.get_lesson(db, 1)["topic"] == "before the backup"
    db.conn.close()


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"not a database at all, just text" * 40, "not an SQLite database"), (None, "not a classroom database")],
)
def test_restore_refuses_what_is_not_a_classroom_backup(tmp_path, cfg, capsys, content, why):
    seeded(tmp_path)
    bogus = tmp_path / "bogus.db"
    if content is None:
        other = sqlite3.connect(bogus)
        other.execute("CREATE TABLE notes (x)")
        other.commit()
        other.close()
    else:
        bogus.write_bytes(content)

    assert main(["--config", str(cfg), "restore", str(bogus)]) == 2
    assert why in capsys.readouterr().err
    assert topics(db_path(tmp_path)) == ["stocks"]
    assert not list((tmp_path / "home").glob("*.replaced-*"))
