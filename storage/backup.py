"""Backups with SQLite's online backup API, and restoring from them without losing the database replaced.

A backup is a consistent snapshot taken inside one read transaction: with WAL, the bot keeps
writing while it is taken, and nothing written after the snapshot began is half in it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from storage.db import open_db
from storage.schema import MIGRATIONS

REQUIRED_TABLES = ("lessons", "turns", "votes", "approvals")


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class Snapshot:
    """What a backup file holds."""

    path: Path
    schema_version: int
    lessons: int
    turns: int
    votes: int
    size_bytes: int


def backup(db_path: Path, dest: Path) -> Snapshot:
    """Copy the live database at `db_path` to `dest` (which must not exist) with the online backup API."""
    db_path, dest = Path(db_path), Path(dest)
    if not db_path.exists():
        raise BackupError(f"there is no database at {db_path} to back up")
    if dest.exists():
        raise BackupError(f"{dest} already exists; choose a new file name (a backup never overwrites)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    source = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    target = sqlite3.connect(str(dest))
    try:
        source.backup(target)  # all pages in one step: one read transaction, one consistent snapshot
    finally:
        target.close()
        source.close()
    return inspect(dest)


def inspect(path: Path) -> Snapshot:
    """Check that `path` is an intact classroom database and say what it holds. Raises BackupError."""
    path = Path(path)
    if not path.is_file():
        raise BackupError(f"{path} is not a file")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        try:
            check = conn.execute("PRAGMA integrity_check").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            raise BackupError(f"{path} is not an SQLite database ({e})") from e
        if check != "ok":
            raise BackupError(f"{path} is damaged (integrity check: {check})")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        missing = [t for t in REQUIRED_TABLES if t not in tables]
        if missing or version < 1:
            raise BackupError(f"{path} is not a classroom database (no {', '.join(missing) or 'schema version'})")
        if version > len(MIGRATIONS):
            raise BackupError(
                f"{path} was written by a newer classroom (schema {version}, this one knows {len(MIGRATIONS)}); upgrade first"
            )
        counts = [conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("lessons", "turns", "votes")]
    finally:
        conn.close()
    return Snapshot(path, version, *counts, size_bytes=path.stat().st_size)


def restore(backup_path: Path, db_path: Path) -> tuple[Snapshot, Path | None]:
    """Replace the database at `db_path` with a backup; the replaced one is kept aside, never deleted.

    Refuses while anything (the bot, a training run, another command) has the database open.
    Returns what was restored and where the replaced database now is (None if there was none).
    """
    backup_path, db_path = Path(backup_path), Path(db_path)
    snapshot = inspect(backup_path)
    if backup_path.resolve() == db_path.resolve():
        raise BackupError("that is the live database itself; restore from a backup file")
    aside = None
    if db_path.exists():
        _claim(db_path)
        aside = db_path.with_name(f"{db_path.name}.replaced-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}")
        db_path.rename(aside)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    source = sqlite3.connect(f"file:{backup_path}?mode=ro", uri=True)
    target = sqlite3.connect(str(db_path))
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    open_db(db_path).conn.close()  # WAL again, and any migrations newer than the backup
    return snapshot, aside


def _claim(db_path: Path) -> None:
    """Make sure no one else has the database open, leaving it as one self-contained file.

    Leaving WAL mode needs the only connection; while the bot (or any classroom process) has the
    file open, SQLite answers "database is locked" at once.
    """
    conn = sqlite3.connect(str(db_path), timeout=0, isolation_level=None)
    try:
        mode = conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
    except sqlite3.OperationalError as e:
        raise BackupError(
            f"{db_path} is in use (the bot or another classroom command appears to be running: {e}); "
            "stop it, then restore"
        ) from e
    except sqlite3.DatabaseError as e:
        raise BackupError(f"{db_path} is not a database I can replace safely ({e}); move it away yourself") from e
    finally:
        conn.close()
    if mode != "delete":
        raise BackupError(f"{db_path} is in use (the bot appears to be running); stop it, then restore")
