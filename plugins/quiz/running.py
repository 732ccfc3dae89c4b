"""A quiz game in a channel: the teacher asks, members answer privately, the student answers, the
teacher reveals and grades, and a scoreboard closes the game.

Each round: the teacher persona posts the question with an Answer button; the student writes
its answer meanwhile (greedy, as /ask would) but it is only shown when time is up, so nobody
copies anybody. Then every answer is graded (by a capable teacher as judge, else by the
reference grader), the student's answer is posted with 👍/👎, and the teacher gives the answer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import discord

from app import AppContext
from backends.base import BackendError, ChatBackend
from plugins.common.context import NO_MENTIONS
from plugins.common.personas import Destination, PersonaDirectory, Poster
from plugins.quiz.buttons import AnswerButton, answer_view, answer_vote_view
from quiz import game
from quiz.answering import answer_question
from storage import quiz as gq
from storage import training as tq
from storage.votes import Tally

log = logging.getLogger(__name__)

MAX_NAMED = 15
"""Members named in a round's reveal; more are counted."""


@dataclass
class LiveGame:
    """A game running in this process. The truth (rounds, answers, grades) is in SQLite."""

    game_id: int
    channel: Destination
    student: str
    teacher: str
    topic: str
    items: list[dict[str, Any]]
    seconds: int
    started_by: int
    task: asyncio.Task[None] | None = None


@dataclass
class Players:
    """The models of one game and how they post."""

    teacher: ChatBackend
    student: ChatBackend
    teacher_poster: Poster
    student_poster: Poster
    judge: ChatBackend | None
    adapter_id: int | None


async def run_game(app: AppContext, personas: PersonaDirectory, live: LiveGame) -> None:
    """Play every round, then post the scoreboard. A model failure ends the game with a message."""
    status = "failed"
    try:
        players = await _players(app, personas, live)
        for seq, item in enumerate(live.items, start=1):
            await play_round(app, live, players, seq, item)
        status = "finished"
    except asyncio.CancelledError:
        status = "interrupted"
        raise
    except BackendError as e:
        log.warning("quiz %s stopped: %s", live.game_id, e)
        await _say(live.channel, f"⚠️ Quiz #{live.game_id} stopped: a model is unavailable ({e}).")
    except discord.HTTPException as e:
        log.warning("quiz %s stopped: could not post in channel %s: %s", live.game_id, live.channel.id, e)
        await _say(live.channel, f"⚠️ Quiz #{live.game_id} stopped: Discord refused a post ({e.text or e.status}).")
    finally:
        await asyncio.shield(app.store.call(gq.finish_game, live.game_id, status))
    await post_scoreboard(app, live)


async def _players(app: AppContext, personas: PersonaDirectory, live: LiveGame) -> Players:
    teacher = await app.models.backend(live.teacher)
    student = await app.models.backend(live.student)
    spec = app.models.spec(live.student)
    active = await app.store.call(tq.active_adapter, live.student) if spec.trainable else None
    teacher_poster, _ = await personas.poster(live.channel, live.teacher)
    student_poster, _ = await personas.poster(live.channel, live.student)
    judge = teacher if app.models.size_class(live.teacher) == "LLM" else None
    return Players(teacher, student, teacher_poster, student_poster, judge, active["id"] if active else None)


async def play_round(app: AppContext, live: LiveGame, players: Players, seq: int, item: dict[str, Any]) -> None:
    """Ask one question, wait out the answering window, grade, and reveal."""
    student_spec = app.models.spec(live.student)
    round_id = await app.store.call(gq.open_round, live.game_id, item["id"], seq)
    writing = asyncio.create_task(answer_question(
        players.student, live.student, student_spec.display_name, item["question"], app.models.params(live.student)))
    try:
        asked, extra = await _ask(live, players.teacher_poster, round_id, seq, item["question"])
        await app.store.call(gq.set_round_message, round_id, asked.id)
        await asyncio.sleep(live.seconds)
        await app.store.call(gq.close_round, round_id)
        await _close_question(live, players.teacher_poster, asked, extra, round_id, seq, item["question"])
        try:
            said: str | None = await writing
        except BackendError as e:
            log.warning("student %s could not answer quiz round %s: %s", live.student, round_id, e)
            said = None
    finally:
        writing.cancel()
    teacher_name = app.models.spec(live.teacher).display_name
    explanation = await game.teacher_correction(players.teacher, teacher_name, item.get("topic") or live.topic, item)
    if explanation:
        await app.store.call(gq.set_round_explanation, round_id, explanation)
    members = [a for a in await app.store.call(gq.round_answers, round_id) if a["answerer_kind"] == "member"]
    grades = await asyncio.gather(*(game.grade(a["answer"], item, players.judge) for a in members))
    await app.store.call(gq.record_grades, [(a["id"], g.correct, g.grader) for a, g in zip(members, grades, strict=True)])
    student_right: bool | None = None
    if said is not None:
        verdict = await game.grade(said, item, players.judge)
        student_right = verdict.correct
        answer_id = await app.store.call(gq.add_model_answer, item_id=item["id"], round_id=round_id, answerer=live.student,
                                         answer=said, adapter_id=players.adapter_id, correct=verdict.correct,
                                         grader=verdict.grader)
        shown = await players.student_poster.send(_fit(said or "…", players.student_poster.limit),
                                                  answer_vote_view(answer_id, Tally(0, 0)))
        await app.store.call(gq.set_answer_message, answer_id, shown.id, shown.channel.id)
    reveal = reveal_text(seq, item, explanation, student_spec.display_name, said is not None, student_right,
                         [(a["answerer"], g.correct) for a, g in zip(members, grades, strict=True)])
    await players.teacher_poster.send(_fit(reveal, players.teacher_poster.limit))


async def _ask(live: LiveGame, poster: Poster, round_id: int, seq: int,
               question: str) -> tuple[discord.Message, discord.Message | None]:
    """The teacher asks; where its webhook can't carry buttons, the bot posts the Answer button below."""
    asked = await poster.send(_question_text(live, seq, question, open_=True), answer_view(round_id))
    if asked.components:
        return asked, None
    extra = await live.channel.send(f"Answer question {seq} here:", view=answer_view(round_id), allowed_mentions=NO_MENTIONS)
    return asked, extra


async def _close_question(live: LiveGame, poster: Poster, asked: discord.Message, extra: discord.Message | None,
                          round_id: int, seq: int, question: str) -> None:
    """Grey out the Answer button (best effort: the round is closed in the store either way)."""
    closed = discord.ui.View(timeout=None)
    closed.add_item(AnswerButton(round_id, disabled=True))
    try:
        if extra is not None:
            await extra.edit(view=closed, allowed_mentions=NO_MENTIONS)
        else:
            await poster.edit(asked, _question_text(live, seq, question, open_=False), closed)
    except discord.HTTPException as e:
        log.warning("could not close quiz round %s's question: %s", round_id, e)


def _question_text(live: LiveGame, seq: int, question: str, *, open_: bool) -> str:
    when = f"press **Answer** within {live.seconds} s" if open_ else "time is up"
    return _fit(f"**Question {seq} of {len(live.items)}** · {when}\n> {' '.join(question.split())}", 2000)


def reveal_text(seq: int, item: dict[str, Any], explanation: str, student_name: str, answered: bool,
                student_right: bool | None, members: list[tuple[str, bool | None]]) -> str:
    """The teacher's reveal: the answer, its phrasing, and who got it right."""
    reference = game.reference_text(item)
    lines = [f"⏱️ Time's up for question {seq}! " + (f"The answer: **{reference}**" if reference else
                                                      "There is no reference answer to this one.")]
    if explanation and explanation.strip() != (reference or "").strip():
        lines.append("> " + " ".join(explanation.split()))
    if not answered:
        lines.append(f"{student_name} couldn't answer in time.")
    else:
        lines.append(f"{_mark(student_right)} {student_name} " + {True: "was right.", False: "was wrong.",
                                                                  None: "can't be graded."}[student_right])
    if members:
        right = sum(1 for _, ok in members if ok)
        named = " · ".join(f"<@{who}> {_mark(ok)}" for who, ok in members[:MAX_NAMED])
        more = f" · and {len(members) - MAX_NAMED} more" if len(members) > MAX_NAMED else ""
        lines.append(f"Members: {right} of {len(members)} right — {named}{more}")
    else:
        lines.append("No member answered.")
    return "\n".join(lines)


def _mark(correct: bool | None) -> str:
    return {True: "✅", False: "❌", None: "❔"}[correct]


async def post_scoreboard(app: AppContext, live: LiveGame) -> None:
    """The closing scoreboard: the student against the members."""
    rows = game.standings(await app.store.call(gq.scoreboard, live.game_id))
    played = await app.store.call(gq.rounds_played, live.game_id)
    name = app.models.spec(live.student).display_name
    embed = discord.Embed(title=f"🏁 Quiz #{live.game_id}: {live.topic}"[:256],
                          description="\n".join(game.scoreboard_lines(rows, played, name, lambda m: f"<@{m}>")),
                          colour=discord.Colour.gold())
    embed.set_footer(text="Vote 👍/👎 on the student's answers: a 👎 answer with the teacher's correction "
                          "can become training data once a curator approves it.")
    await _say(live.channel, embed=embed)


async def _say(channel: Destination, text: str | None = None, *, embed: discord.Embed | None = None) -> None:
    try:
        if embed is not None:
            await channel.send(text, embed=embed, allowed_mentions=NO_MENTIONS)
        else:
            await channel.send(text, allowed_mentions=NO_MENTIONS)
    except discord.HTTPException as e:
        log.warning("could not post in channel %s: %s", channel.id, e)


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
