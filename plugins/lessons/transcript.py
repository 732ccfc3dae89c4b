"""A running lesson, shown in Discord as it happens: the syllabus, then each turn streamed by its persona."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import discord
from sqlite_utils import Database

from app import AppContext
from lessons.events import (
    LessonEvent,
    LessonFinished,
    LessonStarted,
    TokenStreamed,
    TurnFinished,
    TurnStarted,
)
from lessons.panel import PANEL
from plugins.common.context import NO_MENTIONS
from plugins.common.personas import Destination, PersonaDirectory
from plugins.common.streaming import StreamedReply
from plugins.common.text import shorten
from plugins.lessons.ballot import PROMPT, ballot_view
from plugins.voting.ballots import DOWN, UP
from plugins.voting.buttons import vote_view
from storage import discord as dq
from storage import lessons as q
from storage.votes import Tally

log = logging.getLogger(__name__)

FallbackNotice = Callable[[str], Awaitable[object]]


class DiscordTranscript:
    """The lesson engine's listener for one lesson. Failures here never stop the lesson (the engine logs them)."""

    def __init__(
        self,
        app: AppContext,
        personas: PersonaDirectory,
        destination: Destination,
        *,
        seed_reactions: bool = False,
        on_fallback: FallbackNotice | None = None,
    ):
        self.app = app
        self.personas = personas
        self.destination = destination
        self.seed_reactions = seed_reactions
        self.on_fallback = on_fallback
        self.interval = app.settings.discord.stream_edit_interval
        self.reply: StreamedReply | None = None
        self.text = ""
        self.panel_size = 0  # teachers answering each question in a panel lesson
        self.panel_answers: list[dict] = []  # panel answers to the current question, not yet on a ballot

    async def __call__(self, event: LessonEvent) -> None:
        if isinstance(event, LessonStarted):
            self.panel_size = len(event.teachers)
            await self._syllabus(event)
        elif isinstance(event, TurnStarted):
            poster, why_not_webhook = await self.personas.poster(self.destination, event.speaker)
            if why_not_webhook and self.on_fallback is not None:
                await self.on_fallback(why_not_webhook)
            self.reply, self.text = StreamedReply(poster, self.interval), ""
        elif isinstance(event, TokenStreamed) and self.reply is not None:
            self.text = event.text
            await self.reply.update(event.text)
        elif isinstance(event, TurnFinished) and self.reply is not None:
            await self._turn_done(self.reply, event.turn)
            self.reply = None
            if event.turn["kind"] == PANEL:
                self.panel_answers.append(event.turn)
                if len(self.panel_answers) >= self.panel_size:
                    await self._ballot()
        elif isinstance(event, LessonFinished) and self.reply is not None:
            # A turn was in flight when the lesson stopped or failed: keep what was shown, say why it ends there.
            if self.reply.started:
                why = shorten(event.reason or event.status, 300)
                await self.reply.finish(f"{self.text.strip()}\n\n*(cut off: {why}; this part was not saved)*")
            self.reply = None
        if isinstance(event, LessonFinished) and len(self.panel_answers) >= 2:
            await self._ballot()  # stopped before every teacher answered: the answers given can still be judged

    async def _ballot(self) -> None:
        """Post the ballot for the panel answers to the current question."""
        answers = [{"id": t["id"], "speaker": t["speaker"], "ballots": 0} for t in self.panel_answers]
        self.panel_answers = []
        try:
            await self.destination.send(PROMPT, view=ballot_view(self.app, answers), allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as e:
            log.warning("could not post the panel ballot for turns %s: %s", [a["id"] for a in answers], e)

    async def _syllabus(self, event: LessonStarted) -> None:
        if event.resumed or not event.syllabus:
            return
        lines = [f"{i}. {shorten(s.get('title', ''), 120)}" for i, s in enumerate(event.syllabus, start=1)]
        await self.destination.send("📋 **Syllabus**\n" + "\n".join(lines), allowed_mentions=NO_MENTIONS)

    async def _turn_done(self, reply: StreamedReply, turn: dict) -> None:
        messages = await reply.finish(turn["content"], vote_view("turn", turn["id"], Tally(0, 0)))
        channel_id = self.destination.id
        await self.app.store.call(link_turn, turn["id"], [m.id for m in messages], channel_id)
        if self.seed_reactions or not reply.poster.buttons_work:
            try:
                await messages[-1].add_reaction(UP)
                await messages[-1].add_reaction(DOWN)
            except discord.HTTPException as e:
                log.warning("could not add vote reactions to turn %s: %s", turn["id"], e)


def link_turn(db: Database, turn_id: int, message_ids: list[int], channel_id: int) -> None:
    """Link a turn to its messages: the first on the turn row, every one for reactions and button refreshes."""
    q.set_turn_message(db, turn_id, message_ids[0])
    for message_id in message_ids:
        dq.record_message(db, message_id, "turn", turn_id, channel_id)
