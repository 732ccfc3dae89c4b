"""Crashes lose nothing: /lesson resume in process, and a harness that SIGKILLs the bot at random points."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from storage import lessons as q
from tests import crash_child
from tests import discord_fixtures as fixtures
from tests.discord_fixtures import reply_to


@pytest.mark.simcord(settle_timeout=fixtures.SETTLE)
async def test_an_interrupted_lesson_says_so_and_its_starter_resumes_it(classroom):
    classroom.teacher.word_seconds = 1
    await classroom.start_lesson(turns=6)
    for _ in range(40):
        await classroom.env.advance_time(1)
        with classroom.db() as db:
            if len(q.turns(db, 1)) >= 2:
                break
    thread = classroom.lesson_thread()
    await classroom.env.bot.close()  # the bot goes down mid-lesson
    await classroom.restart()

    with classroom.db() as db:
        assert q.get_lesson(db, 1)["status"] == "interrupted"
        kept = [t["content"] for t in q.turns(db, 1)]
    assert 2 <= len(kept) < 6
    assert any("resume it with `/lesson resume lesson:1`" in m.content for m in thread.history())

    refused = reply_to(await classroom.bob.slash(classroom.channel, "lesson resume", lesson=1))
    assert "Only the member who started lesson #1 or a curator" in refused.content
    assert "no lesson #7" in reply_to(await classroom.alice.slash(classroom.channel, "lesson resume", lesson=7)).content

    resumed = reply_to(await classroom.alice.slash(classroom.channel, "lesson resume", lesson=1))
    assert f"Lesson #1 resumes in <#{thread.id}>" in resumed.content
    await classroom.run_out()

    with classroom.db() as db:
        lesson, turns = q.get_lesson(db, 1), q.turns(db, 1)
    assert lesson["status"] == "finished"
    assert [t["seq"] for t in turns] == list(range(1, 7)) and [t["content"] for t in turns[: len(kept)]] == kept
    assert any(f"resumes after turn {len(kept)}" in m.content for m in thread.history())
    assert classroom.summary(thread)
    again = reply_to(await classroom.carol.slash(classroom.channel, "lesson resume", lesson=1))
    assert "Lesson #1 is finished; only a lesson interrupted by a restart can be resumed." in again.content


# ---- the SIGKILL harness

SOAK = os.environ.get("CLASSROOM_SOAK") == "1"
KILLS = int(os.environ.get("CLASSROOM_CRASH_KILLS", "200" if SOAK else "12"))


@dataclass
class Ledger:
    """What the killed processes promised, read back from their side file, and what was checked."""

    votes: dict[tuple[str, int], int] = field(default_factory=dict)  # last acknowledged vote per member and turn
    pending: dict[tuple[str, int], int] = field(default_factory=dict)  # a click in flight when the process died
    turns: set[int] = field(default_factory=set)
    ended: dict[int, tuple[str, int]] = field(default_factory=dict)
    acks: int = 0
    offset: int = 0
    kills: int = 0
    checks: int = 0
    losses: list[str] = field(default_factory=list)

    def read(self, path: Path) -> list[dict]:
        """New lines since the last read (a torn last line, cut by the kill, is left for no one)."""
        if not path.exists():
            return []
        data = path.read_text(encoding="utf-8")
        lines = data[self.offset :].split("\n")
        complete, self.offset = lines[:-1], self.offset + len(data[self.offset :]) - len(lines[-1])
        events = [json.loads(line) for line in complete if line]
        for e in events:
            if "intent" in e:
                self.pending[tuple(e["intent"])] = e["value"]
            elif "ack" in e:
                key = tuple(e["ack"])
                self.votes[key] = e["value"]
                self.pending.pop(key, None)
                self.acks += 1
            elif "turn" in e:
                self.turns.add(e["turn"])
            elif "status" in e:
                self.ended[e["lesson"]] = (e["status"], e["turns"])
        return events


def check_database(path: Path, ledger: Ledger) -> set[int]:
    """After a kill: the file is intact and holds everything acknowledged. Returns the lessons left running."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {(m, int(t)): val for m, t, val in conn.execute("SELECT member_id, target_id, value FROM votes WHERE target_type = 'turn'")}
        for key, value in ledger.votes.items():
            allowed = {value, ledger.pending.get(key, value)}  # a click in flight may or may not have landed
            ledger.checks += 1
            if stored.get(key, 0) not in allowed:
                ledger.losses.append(f"vote {key}: acknowledged {value}, stored {stored.get(key, 0)}")
        turn_ids = {r[0] for r in conn.execute("SELECT id FROM turns")}
        ledger.checks += len(ledger.turns)
        ledger.losses += [f"turn {t} was shown but is not stored" for t in sorted(ledger.turns - turn_ids)]
        for lesson_id, seqs in _seqs(conn).items():
            assert seqs == list(range(1, len(seqs) + 1)), f"lesson {lesson_id} has turns {seqs}"
        for lesson_id, (status, turns) in ledger.ended.items():
            row = conn.execute("SELECT status, (SELECT COUNT(*) FROM turns WHERE lesson_id = ?) FROM lessons WHERE id = ?",
                               [lesson_id, lesson_id]).fetchone()
            assert row == (status, turns), f"lesson {lesson_id} ended {status} with {turns} turns, stored {row}"
        return {r[0] for r in conn.execute("SELECT id FROM lessons WHERE status = 'running'")}
    finally:
        conn.close()


def _seqs(conn: sqlite3.Connection) -> dict[int, list[int]]:
    seqs: dict[int, list[int]] = {}
    for lesson_id, seq in conn.execute("SELECT lesson_id, seq FROM turns ORDER BY lesson_id, seq"):
        seqs.setdefault(lesson_id, []).append(seq)
    return seqs


def forkserver() -> multiprocessing.context.BaseContext:
    """Children are forked from a server that imported the bot once: a start costs a fork, not 3 s of imports."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.crash_child"])
    return ctx


@pytest.mark.timeout(3600 if SOAK else 300)
def test_sigkill_at_random_points_loses_nothing_acknowledged(tmp_path: Path):
    home, acks, log = tmp_path / "home", tmp_path / "acks.jsonl", tmp_path / "child.log"
    rng = random.Random(int(os.environ.get("CLASSROOM_CRASH_SEED", "6")))
    ledger = Ledger()
    running_at_kill: set[int] = set()
    interrupted = resumed_ready = 0
    ctx = forkserver()
    for i in range(KILLS + 1):
        seed = i if i < KILLS else -1  # the last start resumes what the last kills cut off, and adds nothing
        child = ctx.Process(target=crash_child.run, args=(str(home), str(acks), seed, str(log)), daemon=True)
        child.start()
        deadline = time.monotonic() + 120
        ready = None
        while ready is None and time.monotonic() < deadline and child.is_alive():
            ready = next((e["ready"] for e in ledger.read(acks) if "ready" in e), None)
            time.sleep(0.05)
        assert ready is not None, f"the bot did not start (exit {child.exitcode}):\n{log.read_text()[-3000:]}"
        assert set(ready) == running_at_kill  # every lesson the kill cut off is marked interrupted at start-up
        interrupted += len(ready)
        resumed_ready += bool(ready)
        if i == KILLS:
            drain_started = time.monotonic()
            child.join(timeout=120)
            print(f"drain took {time.monotonic() - drain_started:.1f} s")
            assert child.exitcode == 0, f"resuming failed:\n{log.read_text()[-3000:]}"
            ledger.read(acks)
            check_database(home / "classroom.db", ledger)
            break
        time.sleep(rng.uniform(0.0, 6.0 if SOAK else 2.5))  # during start-up resumes, lessons, vote storms
        assert child.is_alive(), f"the bot died on its own:\n{log.read_text()[-3000:]}"
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
        assert child.exitcode == -signal.SIGKILL
        ledger.kills += 1
        ledger.read(acks)
        running_at_kill = check_database(home / "classroom.db", ledger)

    conn = sqlite3.connect(home / "classroom.db")
    statuses = dict(conn.execute("SELECT status, COUNT(*) FROM lessons GROUP BY status").fetchall())
    conn.close()
    figures = {"kills": ledger.kills, "acknowledged_votes": ledger.acks, "turns_shown": len(ledger.turns),
               "checks": ledger.checks, "lessons_interrupted": interrupted,
               "lessons_resumed_to_end": sum(1 for s, _ in ledger.ended.values() if s == "finished"),
               "lessons": statuses, "losses": len(ledger.losses)}
    print("crash harness:", json.dumps(figures))
    if os.environ.get("CLASSROOM_CRASH_REPORT"):
        Path(os.environ["CLASSROOM_CRASH_REPORT"]).write_text(json.dumps(figures, indent=2), encoding="utf-8")
    assert ledger.losses == [], ledger.losses[:10]
    assert ledger.kills == KILLS and ledger.acks > 100 and interrupted > 0
    assert set(statuses) == {"finished"}, statuses  # every lesson a kill cut off was resumed to its end


# ---- SIGKILL during training and adapter swaps

TRAIN_KILLS = int(os.environ.get("CLASSROOM_CRASH_TRAIN_KILLS", "40" if SOAK else "4"))  # half in swap storms


def adapter_loads(tiny_dir: str, path: str) -> bool:
    """The adapter directory is complete and peft loads it onto the base model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not all((Path(path) / f).is_file() for f in ("adapter_config.json", "adapter_model.safetensors")):
        return False
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), path)
    return True


def kill_group(pid: int) -> None:
    """Kill a trainer subprocess the killed child left behind (it runs in its own process group)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.timeout(3600 if SOAK else 300)
def test_sigkill_during_training_and_adapter_swaps_keeps_a_complete_active_adapter(tmp_path: Path):
    from storage import open_db
    from storage import training as tq
    from tests import crash_train_child
    from tests.tiny import build_tiny_model, make_lora

    tiny_dir = build_tiny_model(tmp_path / "tiny", with_eos=True)
    home, acks, log = tmp_path / "home", tmp_path / "acks.jsonl", tmp_path / "child.log"
    db = open_db(home / "classroom.db")  # two adapters to swap between from the first start
    for seed in (1, 2):
        lora = make_lora(tiny_dir, home / "adapters" / "kid" / f"v{seed}", seed=seed)
        row = tq.add_adapter(db, student="kid", path=str(lora), run_id=None, parent_id=None, data_hash=None)
        tq.activate_adapter(db, row["id"])
    db.conn.close()
    rng = random.Random(int(os.environ.get("CLASSROOM_CRASH_SEED", "6")))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.crash_train_child"])
    active, pending, training, spawned, offset = 2, None, False, [], 0
    figures = {"kills": 0, "kills_during_training": 0, "kills_during_swaps": 0, "swaps_acknowledged": 0,
               "runs_marked_interrupted": 0, "losses": 0}
    for i in range(TRAIN_KILLS):
        child = ctx.Process(target=crash_train_child.run, args=(str(home), tiny_dir, str(acks), i, str(log)), daemon=True)
        child.start()
        deadline, ready = time.monotonic() + 120, False
        while not ready and time.monotonic() < deadline and child.is_alive():
            time.sleep(0.05)
            ready = acks.exists() and '"ready"' in acks.read_text()[offset:]
        assert ready, f"the trainer side did not start (exit {child.exitcode}):\n{log.read_text()[-3000:]}"
        time.sleep(rng.uniform(0.5, 10.0 if SOAK else 4.5))
        assert child.is_alive(), f"it died on its own:\n{log.read_text()[-3000:]}"
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
        text = acks.read_text()
        events, offset = [json.loads(line) for line in text[offset:].splitlines() if line.strip()], len(text)
        for e in events:
            if "ready" in e:
                figures["runs_marked_interrupted"] += len(e["ready"])
            elif "intent" in e:
                pending = e["intent"]
            elif "training" in e:
                training = True
            elif "spawned" in e:
                spawned.append(e["spawned"])
            elif "active" in e:
                active, pending, training = e["active"], None, False
                figures["swaps_acknowledged"] += "trained" not in e
        for pid in spawned:
            kill_group(pid)
        figures["kills"] += 1
        figures["kills_during_training"] += training
        figures["kills_during_swaps"] += pending is not None

        db = open_db(home / "classroom.db")
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            live = [a for a in tq.adapters(db, "kid") if a["status"] == "active"]
            newest = max(a["version"] for a in tq.adapters(db, "kid"))
        finally:
            db.conn.close()
        assert len(live) <= 1
        now_active = live[0]["version"] if live else None
        allowed = {active, pending} | ({newest} if training else set())
        if now_active not in allowed:
            figures["losses"] += 1
        assert now_active in allowed, f"active v{now_active}; acknowledged v{active}, in flight v{pending}"
        if live:
            assert adapter_loads(tiny_dir, live[0]["path"]), f"active adapter {live[0]['path']} is incomplete"
        active, pending, training = now_active, None, False  # what the next start begins from
    print("crash harness (training):", json.dumps(figures))
    assert figures["kills"] == TRAIN_KILLS and figures["losses"] == 0
