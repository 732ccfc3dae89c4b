"""Concurrent votes are exact: 1,000 votes from 100 members on 20 turns, through the real storage layer.

Each member acts in order (a person clicks one thing after another), all members at once, spread over
several AsyncStores on one file (the bot and CLI processes each hold their own connection). Some
clicks are double clicks: the same button twice at the same moment, on two connections. Two toggles
cancel out in any order, so the intended end state is known, and a toggle that is not atomic (both
read "no vote", both write 👍) shows up as a wrong count.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path

from plugins.voting import ballots
from storage import AsyncStore, open_db
from storage import discord as dq
from storage import lessons as q
from storage import votes as v

MEMBERS, TURNS, VOTES, STORES = 100, 20, 1000, 4
THRESHOLD = 3


@dataclass(frozen=True)
class Action:
    """One step of a member: a button click, a reaction added or removed, or a double click (two clicks at once)."""

    kind: str  # click | double | react | unreact
    turn: int  # index into the lesson's turns
    value: int  # 1 or -1

    @property
    def votes(self) -> int:
        return 2 if self.kind == "double" else 1


def intended(actions: list[Action]) -> dict[int, int]:
    """A member's vote per turn index after their actions, as Discord promises it (0: none)."""
    state: dict[int, int] = {}
    for a in actions:
        now = state.get(a.turn, 0)
        if a.kind == "click":
            state[a.turn] = 0 if now == a.value else a.value
        elif a.kind == "react":
            state[a.turn] = a.value
        elif a.kind == "unreact" and now == a.value:
            state[a.turn] = 0
        elif a.kind == "double" and now == -a.value:
            state[a.turn] = 0  # 👎 → 👍 → none; from none or 👍 two toggles change nothing
    return state


def script(rng: random.Random) -> list[list[Action]]:
    """Ten votes per member over twenty turns, mixing every way of voting."""
    plans = []
    for _ in range(MEMBERS):
        actions: list[Action] = []
        while sum(a.votes for a in actions) < VOTES // MEMBERS:
            room = VOTES // MEMBERS - sum(a.votes for a in actions)
            kinds = ["click", "click", "react", "unreact"] + (["double"] if room >= 2 else [])
            actions.append(Action(rng.choice(kinds), rng.randrange(TURNS), rng.choice((1, -1))))
        plans.append(actions)
    return plans


async def act(stores: list[AsyncStore], rng: random.Random, member: str, a: Action, turn_id: int) -> None:
    """Perform one action on a random connection, the way the voting plugin does."""
    store = rng.choice(stores)
    if a.kind == "click":
        await store.call(ballots.click, "turn", turn_id, member, a.value, THRESHOLD)
    elif a.kind == "double":
        first, second = rng.sample(stores, 2)
        await asyncio.gather(
            first.call(ballots.click, "turn", turn_id, member, a.value, THRESHOLD),
            second.call(ballots.click, "turn", turn_id, member, a.value, THRESHOLD),
        )
    else:
        message_id = 10_000 + turn_id  # the turn's message: reactions arrive by message, as from Discord
        await store.call(ballots.react, message_id, member, a.value, a.kind == "react", THRESHOLD)


def lesson_with_turns(db_path: Path) -> list[int]:
    """A finished lesson with TURNS turns, each shown by a message; returns the turn ids."""
    db = open_db(db_path)
    lid = q.create_lesson(db, topic="concurrency", teachers=["prof"], students=["kid"], max_turns=TURNS)
    ids = []
    for i in range(TURNS):
        turn = q.add_turn(db, lesson_id=lid, speaker="prof", role="teacher", content=f"turn {i}")
        dq.record_message(db, 10_000 + turn["id"], "turn", turn["id"], 1)
        ids.append(turn["id"])
    q.finish_lesson(db, lid, "finished")
    db.conn.close()
    return ids


async def test_a_thousand_concurrent_votes_give_exact_counts(tmp_path: Path):
    path = tmp_path / "classroom.db"
    turn_ids = lesson_with_turns(path)
    rng = random.Random(6)
    plans = script(rng)
    assert sum(a.votes for plan in plans for a in plan) == VOTES
    assert sum(a.kind == "double" for plan in plans for a in plan) > 50  # enough same-member races
    stores = [AsyncStore(open_db(path)) for _ in range(STORES)]

    async def member(m: int) -> None:
        for a in plans[m]:
            await act(stores, rng, f"member{m}", a, turn_ids[a.turn])
            await asyncio.sleep(0)  # let every other member in between

    try:
        await asyncio.gather(*(member(m) for m in range(MEMBERS)))
    finally:
        for store in stores:
            store.close()

    want = {(f"member{m}", turn_ids[t]): value for m, plan in enumerate(plans) for t, value in intended(plan).items() if value}
    db = open_db(path)
    rows = db.execute("SELECT member_id, target_id, value FROM votes WHERE target_type = 'turn'").fetchall()
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert {(m, t): value for m, t, value in rows} == want
    assert len(rows) == len(want)  # one row per member per turn, never two
    for turn_id in turn_ids:
        mine = [value for (_, t), value in want.items() if t == turn_id]
        assert v.tally(db, "turn", turn_id) == v.Tally(up=mine.count(1), down=mine.count(-1))
    assert 200 < len(want) < 1000
    db.conn.close()
