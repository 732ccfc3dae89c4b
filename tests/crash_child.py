"""The bot process the crash harness kills: the real bot on simcord, with scripted models, working until SIGKILL.

    python -m tests.crash_child HOME ACKS SEED      (or `run(...)` in a forked process)

It starts lessons, clicks vote buttons as many members, and resumes (through the engine, as
`/lesson resume` does) lessons the last kill interrupted. Every acknowledgement a member saw is
appended to ACKS as one JSON line *after* it was shown, so the parent knows exactly what was promised:
  {"ready": [...]}                        the bot started; lessons its start-up marked interrupted
  {"intent": [member, turn], "value": v}  a click is about to be sent; v is the member's vote after it
  {"ack": [member, turn], "value": v}     the click was answered: the member saw the new count
  {"turn": id, "lesson": id}              a turn was posted with its vote buttons
  {"lesson": id, "status": s, "turns": n} a resumed lesson ended
  {"drained": true}                       (SEED < 0: no new work) every interrupted lesson was resumed to its end
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import simcord

from backends.registry import ModelRegistry
from bot import create_bot
from plugins import EXTENSIONS
from plugins.common.context import BotOptions
from plugins.lessons.running import claim_interrupted
from plugins.sandbox import model_app_owned_webhooks
from tests.discord_fixtures import TimedScript, make_settings, student_reply, teacher_reply

for _extension in EXTENSIONS:  # imported once in the fork server, so a forked start costs no imports
    importlib.import_module(_extension)

MEMBERS = 12
SETTLE = 0.8  # real seconds an action may take; the models' 1 s per word stays virtual
TURNS = 6


class Acks:
    """The side file: one JSON object per line, flushed at once (the OS keeps it when the process dies)."""

    def __init__(self, path: Path):
        self.file = path.open("a", encoding="utf-8")

    def __call__(self, **fields: Any) -> None:
        self.file.write(json.dumps(fields) + "\n")
        self.file.flush()


def vote_ids(message: Any) -> list[str]:
    """The vote button custom ids on a message."""
    ids = []
    for row in message.components:
        for child in getattr(row, "children", []):
            custom_id = getattr(child, "custom_id", None) or ""
            if custom_id.startswith("classroom:vote:turn:"):
                ids.append(custom_id)
    return ids


async def resume_interrupted(bot: Any, lesson_ids: list[int], ack: Acks) -> None:
    """Run interrupted lessons on to their end from their stored turns, as /lesson resume does."""

    async def resume(lesson_id: int) -> None:
        if await bot.app.store.call(claim_interrupted, lesson_id):
            outcome = await bot.app.engine.run(lesson_id)
            ack(lesson=lesson_id, status=outcome.status, turns=outcome.turns, resumed=True)

    await asyncio.gather(*(resume(lesson_id) for lesson_id in lesson_ids))


async def drain(env: simcord.Env, resuming: asyncio.Task[None], ack: Acks) -> None:
    """No more work: let the resumed lessons run to their end, then say so."""
    for _ in range(1200):
        if resuming.done():
            break
        await env.advance_time(5)
        await asyncio.sleep(0.05)  # shorter than SETTLE, so real: the store's thread gets to answer
    resuming.result()
    ack(drained=True)


@dataclass
class Votes:
    """What this process's members voted, as they were told (kept across lessons: old turns stay clickable)."""

    mine: dict[tuple[str, int], int] = field(default_factory=dict)
    unsure: set[tuple[str, int]] = field(default_factory=set)
    seen: set[int] = field(default_factory=set)
    lessons: int = 0


async def storm(env: simcord.Env, members: list[Any], channel: Any, rng: random.Random, ack: Acks, votes: Votes) -> None:
    """Start a lesson, then click votes on its turns as they appear, until the lesson ends."""
    mine, unsure, seen = votes.mine, votes.unsure, votes.seen
    starter = members[votes.lessons % len(members)]  # a member may start one lesson at a time (cooldown)
    votes.lessons += 1
    await starter.slash(channel, "lesson start", topic="what a stock is", turns=TURNS)
    for _ in range(400):
        await env.advance_time(0.5)
        place = channel.threads[-1] if channel.threads else channel
        buttons = [(m, cid) for m in place.history() for cid in vote_ids(m)]
        for _, cid in buttons:
            turn = int(cid.split(":")[3])
            if turn not in seen:
                seen.add(turn)
                ack(turn=turn)
        for _ in range(min(len(buttons), 6)):
            message, cid = rng.choice(buttons)
            member = rng.choice(members)
            turn, value = int(cid.split(":")[3]), 1 if cid.endswith(":up") else -1
            key = (str(member.id), turn)
            if key in unsure:
                continue
            after = 0 if mine.get(key, 0) == value else value
            ack(intent=list(key), value=after)
            try:
                result = await member.click(message, custom_id=cid)
            except TimeoutError:  # a loaded machine: no answer in time, so nothing was promised
                unsure.add(key)
                continue
            if result.ephemeral:  # the member was told it failed: nothing was promised either
                ack(refused=list(key), said=getattr(result.response, "content", None))
                unsure.add(key)
                continue
            mine[key] = after
            ack(ack=list(key), value=after)
        cog = env.bot.get_cog("LessonsCog")
        if buttons and cog is not None and not cog.live:
            return


async def main(home: Path, acks_path: Path, seed: int) -> None:
    """Run the bot until killed."""
    model_app_owned_webhooks(pytest.MonkeyPatch())
    ack = Acks(acks_path)
    rng = random.Random(seed)
    settings = make_settings(home)
    backends = {"prof": TimedScript("prof", teacher_reply, 1.0), "kid": TimedScript("kid", student_reply, 1.0)}
    registry = ModelRegistry(settings.models, cache_dir=settings.cache_dir, backends=backends)
    bot = create_bot(settings, models=registry, options=BotOptions())
    async with simcord.run(bot, check_errors=False, settle_timeout=SETTLE) as env:
        guild = env.create_guild("School")
        channel = guild.create_text_channel("classroom")
        members = [guild.add_member(env.create_user(f"m{i}")) for i in range(MEMBERS)]
        ack(ready=bot.interrupted_at_startup)
        if seed < 0:  # nothing to watch any more: the models answer at once
            for backend in backends.values():
                backend.word_seconds = 0
        resuming = asyncio.create_task(resume_interrupted(bot, list(bot.interrupted_at_startup), ack))
        if seed < 0:
            await drain(env, resuming, ack)
            return
        votes = Votes()
        while True:
            await storm(env, members, channel, rng, ack, votes)
            if resuming.done():
                resuming.result()


def run(home: str, acks: str, seed: int, log: str | None = None) -> None:
    """Entry point for a forked child (the harness forks these from a server that imported everything once)."""
    if log is not None:
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(out, 1)
        os.dup2(out, 2)
    asyncio.run(main(Path(home), Path(acks), seed))


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], int(sys.argv[3]))
