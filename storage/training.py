"""Training runs and the adapter registry: which adapter each student speaks with, and how it got there."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from sqlite_utils import Database

from storage.db import Transaction, fetch_all, fetch_one, now

RUN_FINAL = ("promoted", "rejected", "skipped", "failed", "interrupted")


def start_run(db: Database, student: str, trigger: str) -> int:
    """Record a training run as running, owned by this process; return its id."""
    cur = db.execute(
        "INSERT INTO training_runs (student, status, trigger, started_at, owner) VALUES (?, 'running', ?, ?, ?)",
        [student, trigger, now(), process_tag()],
    )
    return int(cur.lastrowid)


def running_run(db: Database, student: str) -> dict[str, Any] | None:
    """The student's run in progress, if any. A run whose process is gone (killed) is marked
    interrupted on the way, so it does not block the next run forever."""
    run = fetch_one(db, "SELECT * FROM training_runs WHERE student = ? AND status = 'running'", [student])
    if run is not None and owner_alive(run.get("owner")) is False:
        finish_run(db, run["id"], "interrupted", reason=f"the process running it ({run['owner']}) ended before it finished")
        return None
    return run


def process_tag(pid: int | None = None) -> str:
    """This machine, a process id and the process's start time: names one process, even after pid reuse."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def owner_alive(owner: str | None) -> bool | None:
    """Whether the process named by a `process_tag` is still running; None when this machine can't tell
    (another host, or a run recorded before owners were)."""
    if not owner or owner.count(":") < 2:
        return None
    host, pid, started = owner.rsplit(":", 2)
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    return _start_time(int(pid)) == started


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or '' where /proc can't tell."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def finish_run(db: Database, run_id: int, status: str, **fields: Any) -> None:
    """Close a run with its outcome; dict/list fields (before, after, lesson_ids) are stored as JSON."""
    if status not in RUN_FINAL:
        raise ValueError(f"not a final run status: {status}")
    values = {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in fields.items()}
    sets = ", ".join(f"{k} = ?" for k in values)
    db.execute(
        f"UPDATE training_runs SET status = ?, finished_at = ?{', ' + sets if sets else ''} WHERE id = ?",
        [status, now(), *values.values(), run_id],
    )


def get_run(db: Database, run_id: int) -> dict[str, Any] | None:
    """One run with JSON fields decoded."""
    return _decode_run(fetch_one(db, "SELECT * FROM training_runs WHERE id = ?", [run_id]))


def list_runs(db: Database, student: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Recent runs, newest first."""
    where, args = ("WHERE student = ?", [student]) if student else ("", [])
    rows = fetch_all(db, f"SELECT * FROM training_runs {where} ORDER BY id DESC LIMIT ?", [*args, limit])
    return [r for r in (_decode_run(r) for r in rows) if r is not None]


def mark_running_runs_interrupted(db: Database) -> list[int]:
    """At the bot's start-up: runs still marked running whose process is gone (or can't be checked)
    died with it. A run a live `classroom train` is doing right now is left alone."""
    rows = db.execute("SELECT id, owner FROM training_runs WHERE status = 'running'").fetchall()
    ids = [run_id for run_id, owner in rows if not owner_alive(owner)]
    for run_id in ids:
        finish_run(db, run_id, "interrupted", reason="the process running it stopped before it finished")
    return ids


def trained_lesson_ids(db: Database, student: str) -> set[int]:
    """Lessons already used by a finished (promoted or rejected) run of this student."""
    return _trained_ids(db, student, "lesson_ids")


def trained_correction_ids(db: Database, student: str) -> set[int]:
    """Approved quiz corrections already used by a finished run of this student."""
    return _trained_ids(db, student, "correction_ids")


def _trained_ids(db: Database, student: str, column: str) -> set[int]:
    ids: set[int] = set()
    for (raw,) in db.execute(
        f"SELECT {column} FROM training_runs WHERE student = ? AND status IN ('promoted', 'rejected')"
        f" AND {column} IS NOT NULL",
        [student],
    ).fetchall():
        ids.update(json.loads(raw))
    return ids


def add_adapter(
    db: Database, *, student: str, path: str, run_id: int | None, parent_id: int | None, data_hash: str | None,
    metrics: dict[str, Any] | None = None, version: int | None = None,
) -> dict[str, Any]:
    """Register a freshly trained adapter as a candidate with the next version number."""
    with Transaction(db):
        if version is None:
            version = next_version(db, student)
        cur = db.execute(
            "INSERT INTO adapters (student, version, parent_id, run_id, path, status, metrics, data_hash, created_at)"
            " VALUES (?, ?, ?, ?, ?, 'candidate', ?, ?, ?)",
            [student, version, parent_id, run_id, path, json.dumps(metrics or {}), data_hash, now()],
        )
    row = get_adapter(db, int(cur.lastrowid))
    assert row is not None
    return row


def next_version(db: Database, student: str) -> int:
    """The version number the student's next adapter gets."""
    return int(db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM adapters WHERE student = ?", [student]).fetchone()[0])


def get_adapter(db: Database, adapter_id: int) -> dict[str, Any] | None:
    """One adapter row with metrics decoded."""
    return _decode_adapter(fetch_one(db, "SELECT * FROM adapters WHERE id = ?", [adapter_id]))


def adapter_by_version(db: Database, student: str, version: int) -> dict[str, Any] | None:
    """A student's adapter by version number."""
    return _decode_adapter(fetch_one(db, "SELECT * FROM adapters WHERE student = ? AND version = ?", [student, version]))


def active_adapter(db: Database, student: str) -> dict[str, Any] | None:
    """The adapter the student speaks with now, or None for the base model."""
    return _decode_adapter(fetch_one(db, "SELECT * FROM adapters WHERE student = ? AND status = 'active'", [student]))


def adapters(db: Database, student: str) -> list[dict[str, Any]]:
    """A student's adapter lineage, oldest first."""
    rows = fetch_all(db, "SELECT * FROM adapters WHERE student = ? ORDER BY version", [student])
    return [a for a in (_decode_adapter(r) for r in rows) if a is not None]


def activate_adapter(db: Database, adapter_id: int) -> None:
    """Make one adapter the student's active one and retire the previous, atomically."""
    with Transaction(db):
        row = db.execute("SELECT student, status FROM adapters WHERE id = ?", [adapter_id]).fetchone()
        if row is None:
            raise ValueError(f"no adapter {adapter_id}")
        if row[1] == "deleted":
            raise ValueError(f"adapter {adapter_id} was deleted from disk")
        db.execute("UPDATE adapters SET status = 'retired' WHERE student = ? AND status = 'active'", [row[0]])
        db.execute("UPDATE adapters SET status = 'active' WHERE id = ?", [adapter_id])


def deactivate(db: Database, student: str) -> None:
    """Go back to the base model: no adapter active."""
    db.execute("UPDATE adapters SET status = 'retired' WHERE student = ? AND status = 'active'", [student])


def set_adapter_status(db: Database, adapter_id: int, status: str, metrics: dict[str, Any] | None = None) -> None:
    """Mark a candidate rejected, or a pruned adapter deleted; optionally merge in metrics."""
    if metrics is not None:
        current = get_adapter(db, adapter_id) or {"metrics": {}}
        merged = {**(current["metrics"] or {}), **metrics}
        db.execute("UPDATE adapters SET status = ?, metrics = ? WHERE id = ?", [status, json.dumps(merged), adapter_id])
    else:
        db.execute("UPDATE adapters SET status = ? WHERE id = ?", [status, adapter_id])


def teacher_shares(db: Database, student: str) -> dict[int, dict[str, float]]:
    """Per run id of the student: which teachers' turns it trained on, as shares (runs that recorded them)."""
    rows = db.execute("SELECT id, sources FROM training_runs WHERE student = ? AND sources IS NOT NULL",
                      [student]).fetchall()
    return {int(run_id): json.loads(raw) for run_id, raw in rows}


def taught_by(shares: dict[str, float] | None) -> str:
    """'taught by smol 80%, gpt 20%' (largest share first), or '' when no shares were recorded.

    The one wording of an adapter's provenance, for the CLI and Discord alike.
    """
    if not shares:
        return ""
    ordered = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))
    return "taught by " + ", ".join(f"{teacher} {share:.0%}" for teacher, share in ordered)


def _decode_run(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is not None:
        for key in ("before", "after", "lesson_ids", "correction_ids", "sources"):
            if row.get(key):
                row[key] = json.loads(row[key])
    return row


def _decode_adapter(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is not None:
        row["metrics"] = json.loads(row["metrics"]) if row["metrics"] else {}
    return row
