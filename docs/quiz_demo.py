"""Play one quiz game with the real bot and the real configured models, and print its transcript.

    .venv/bin/python docs/quiz_demo.py --home DATA_HOME [--topic Vellmoor] [--questions 3]

The bot runs against simcord's in-memory Discord (as the offline sandbox does): member `ada`
runs `/quiz start`, answers the first question through the Answer button and its form, and the
game plays out, the simulated clock standing in for the answering windows. DATA_HOME needs
held-out quiz items on the topic (training writes them). The game is stored in its database like
any other. The transcript is the channel's messages in order, with the members' actions marked `»`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import discord

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MEMBER = "ada"
WAIT_SECONDS = 600.0
"""Real seconds the game may take in all (each round waits for the bundled models on the CPU)."""


def main() -> int:
    """Parse the options, point CLASSROOM_HOME at the data home, and play."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", required=True, type=Path, help="the data home (CLASSROOM_HOME) to play in")
    p.add_argument("--topic", default="Vellmoor", help="quiz topic (default Vellmoor)")
    p.add_argument("--questions", type=int, default=3, help="how many questions (default 3)")
    p.add_argument("--answer", help="ada's answer to question 1 (default: its reference answer)")
    p.add_argument("--seed", type=int, default=1, help="which questions are drawn (default 1)")
    args = p.parse_args()
    os.environ["CLASSROOM_HOME"] = str(args.home)
    os.environ["CLASSROOM_NO_SCHEDULER"] = "1"  # a demo must not start the nightly training job
    for line in asyncio.run(play(args)):
        print(line)
    return 0


async def play(args: argparse.Namespace) -> list[str]:
    """Run the game and return the transcript lines."""
    import simcord

    from bot import create_bot
    from plugins.common.context import BotOptions
    from plugins.sandbox import model_app_owned_webhooks
    from settings import load_settings

    model_app_owned_webhooks()  # buttons on the teacher's webhook post, as on Discord
    running: dict[str, Any] = {}

    def long_wait(work: Any) -> Any:  # the game waits on the models; the simulated server needn't
        return running["env"].external_wait(work, reason="a quiz game is being played")

    bot = create_bot(load_settings(), options=BotOptions(long_wait=long_wait))
    actions: list[tuple[int, str]] = []  # (messages in the channel then, what a member did)
    first_seen: dict[int, str] = {}  # each message as it was first posted (questions are edited later)
    try:
        async with simcord.run(bot, check_errors=False, settle_timeout=120) as env:
            running["env"] = env
            guild = env.create_guild("Classroom")
            channel = guild.create_text_channel("quiz")
            ada = guild.add_member(env.create_user(MEMBER))
            bot.get_cog("QuizCog").rng.seed(args.seed)

            def did(text: str) -> None:
                actions.append((len(channel.history()), f"» {MEMBER} {text}"))

            def look() -> None:
                for message in channel.history():
                    first_seen.setdefault(message.id, render(message))

            did(f"runs /quiz start topic:{args.topic} questions:{args.questions}")
            started = await ada.slash(channel, "quiz start", topic=args.topic, questions=args.questions)
            if started.ephemeral:
                raise SystemExit(f"/quiz start was refused: {started.response.content}")
            first = await wait_for(env, look, lambda: questions_in(channel))
            answer = args.answer or reference_answer(bot, first[0].content)
            did(f"presses Answer under question 1 and types: {answer}")
            shown = await ada.click(first[0], label="Answer")
            taken = await ada.submit_modal(shown, {"answer": answer})
            if taken.response is not None:
                did(f"is told, privately: {taken.response.content}")
            await wait_for(env, look, lambda: scoreboard_in(channel), advance=5.0)
            messages = channel.history()
            names = {str(ada.id): MEMBER}
    finally:
        await bot.close_app()
    return transcript(messages, first_seen, actions, names)


async def wait_for(env: Any, look: Any, found: Any, *, advance: float = 0.0) -> Any:
    """Wait in real time (the models are slow) for `found()` to be truthy, moving the simulated
    clock `advance` seconds each half second so the game's answering windows pass, and calling
    `look()` to note new messages."""
    deadline = time.perf_counter() + WAIT_SECONDS
    while time.perf_counter() < deadline:
        look()
        if result := found():
            return result
        if advance:
            await env.advance_time(advance)
        await env.settle()
        await asyncio.to_thread(time.sleep, 0.5)  # real time: the worker threads are writing
    raise SystemExit("the quiz game did not finish in time")


def questions_in(channel: Any) -> list[discord.Message]:
    """The teacher's question posts (they carry the Answer button)."""
    return [m for m in channel.history() if m.webhook_id is not None and m.content.startswith("**Question")]


def scoreboard_in(channel: Any) -> bool:
    """Whether the closing scoreboard is posted."""
    return any(e.title and e.title.startswith("🏁") for m in channel.history() for e in m.embeds)


def reference_answer(bot: Any, question_post: str) -> str:
    """The reference answer of the question in a question post: ada read the notes."""
    from quiz import game
    from storage import open_db
    from storage import quiz as gq

    asked = question_post.split("\n> ", 1)[-1]
    db = open_db(bot.settings.db_path)
    try:
        for item in gq.game_items(db):
            if " ".join(item["question"].split()) == asked:
                return game.reference_text(item) or "I don't know"
    finally:
        db.conn.close()
    return "I don't know"


def transcript(messages: list[discord.Message], first_seen: dict[int, str], actions: list[tuple[int, str]],
               names: dict[str, str]) -> list[str]:
    """`[author] text` per message as first posted, and what an edit changed; the members' actions
    where they happened; mentions as @name."""
    lines: list[str] = []
    for index, message in enumerate(messages):
        lines += [text for at, text in actions if at == index]
        author = message.author.display_name if message.webhook_id else "classroom (bot)"
        final = render(message)
        posted = first_seen.get(message.id, final)
        text = posted + "".join(f"\n  ↳ edited: {line}" for line in final.splitlines() if line not in posted.splitlines())
        lines += [f"[{author}] " + re.sub(r"<@!?(\d+)>", lambda m: "@" + names.get(m[1], "member"), text), ""]
    lines += [text for at, text in actions if at >= len(messages)]
    return lines


def render(message: discord.Message) -> str:
    """A message's text: its content, embeds as title, description and fields, buttons in brackets."""
    body = [message.content] if message.content else []
    for embed in message.embeds:
        body += [f"**{embed.title}**"] if embed.title else []
        body += [embed.description] if embed.description else []
        body += [f"{field.name}: {field.value}" for field in embed.fields]
        body += [f"— {embed.footer.text}"] if embed.footer and embed.footer.text else []
    if buttons := button_row(message):
        body.append(buttons)
    return "\n".join(body)


def button_row(message: discord.Message) -> str:
    """A message's buttons as `[✍️ Answer]`, greyed-out ones marked."""
    shown = []
    for row in message.components:
        for child in getattr(row, "children", []):
            if isinstance(child, discord.Button):
                label = " ".join(str(x) for x in (child.emoji, child.label) if x)
                shown.append(f"[{label}{' (closed)' if child.disabled else ''}]")
    return " ".join(shown)


if __name__ == "__main__":
    sys.exit(main())
