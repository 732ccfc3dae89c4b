"""Opening the database, applying migrations, and running queries off the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import sqlite_utils

from storage.schema import MIGRATIONS

P = ParamSpec("P")
T = TypeVar("T")


def now() -> str:
    """The current UTC time as ISO-8601, the one timestamp format in the database."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def open_db(path: str | Path) -> sqlite_utils.Database:
    """Open (creating if needed) the database at `path` with WAL, foreign keys and the latest schema.

    `:memory:` works too. The connection may be used from one thread at a time, which
    `AsyncStore` guarantees in the bot.
    """
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL keeps WAL durable against a killed process; only a power cut can lose the last commit.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    db = sqlite_utils.Database(conn)
    migrate(db)
    return db


def migrate(db: sqlite_utils.Database) -> int:
    """Apply every migration newer than the file's `user_version`; return the resulting version."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(sql):
                db.conn.execute(statement)
            db.conn.execute(f"PRAGMA user_version={number}")
            db.conn.execute("COMMIT")
        except BaseException:
            db.conn.execute("ROLLBACK")
            raise
        version = number
    return version


def fetch_one(db: sqlite_utils.Database, sql: str, args: list | tuple = ()) -> dict[str, Any] | None:
    """The first row of a query as a dict, or None."""
    cur = db.execute(sql, list(args))
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([c[0] for c in cur.description], row, strict=True))


def fetch_all(db: sqlite_utils.Database, sql: str, args: list | tuple = ()) -> list[dict[str, Any]]:
    """Every row of a query as dicts."""
    cur = db.execute(sql, list(args))
    cols = [c[0] for c in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def _statements(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]


class Transaction:
    """`with Transaction(db):` groups writes into one atomic commit (BEGIN IMMEDIATE … COMMIT)."""

    def __init__(self, db: sqlite_utils.Database):
        self.db = db

    def __enter__(self) -> sqlite_utils.Database:
        self.db.conn.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.conn.execute("ROLLBACK" if exc_type else "COMMIT")


class AsyncStore:
    """Runs storage functions on one dedicated thread, so SQLite never blocks the event loop.

    Every query function in `storage` takes the database first; `await store.call(fn, *args)`
    runs `fn(db, *args)` on the store's thread. One thread means writes are serialised, as
    datasette does, and a write acknowledged to a member is committed when `call` returns.
    """

    def __init__(self, db: sqlite_utils.Database):
        self.db = db
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._lock = threading.Lock()

    async def call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run `fn(db, *args, **kwargs)` on the store thread and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: self._run(fn, args, kwargs))

    def call_sync(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run `fn(db, …)` from synchronous code (CLI, start-up) under the same lock."""
        return self._run(fn, args, kwargs)

    def _run(self, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
        with self._lock:
            return fn(self.db, *args, **kwargs)

    def close(self) -> None:
        """Finish queued work and close the connection."""
        self._pool.shutdown(wait=True)
        self.db.conn.close()
