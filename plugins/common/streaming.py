"""Showing a reply while a model writes it: post on the first words, then edit at most once per interval.

Edits never come faster than the interval (settings.discord.stream_edit_interval, at least
one second), the final edit included, so a chatty model can't hit Discord's rate limits.
Text past a message's limit continues in further messages, split cleanly.
"""

from __future__ import annotations

import asyncio
import logging

import discord

from plugins.common.personas import Poster
from plugins.common.text import split_message

log = logging.getLogger(__name__)

CURSOR = " ▌"


class StreamedReply:
    """One reply by one persona, possibly spanning several messages."""

    def __init__(self, poster: Poster, interval: float):
        self.poster = poster
        self.interval = max(1.0, interval)
        self.messages: list[discord.Message] = []
        self._shown: list[str] = []
        self._last_write: float | None = None

    async def update(self, text: str) -> None:
        """The model wrote more: show `text` (everything so far) unless the last write was too recent."""
        if not text.strip():
            return
        if self._last_write is not None and self._elapsed() < self.interval:
            return
        await self._render(text, cursor=True)

    async def finish(self, text: str, view: discord.ui.View | None = None) -> list[discord.Message]:
        """Show the final text, with `view` on the last message; returns every message of the reply."""
        await self._wait_for_interval()
        await self._render(text or "…", cursor=False, view=view)
        return self.messages

    @property
    def started(self) -> bool:
        """Whether anything was posted yet."""
        return bool(self.messages)

    async def _wait_for_interval(self) -> None:
        if self._last_write is not None:
            remaining = self.interval - self._elapsed()
            if remaining > 0:
                await asyncio.sleep(remaining)

    def _elapsed(self) -> float:
        assert self._last_write is not None
        return asyncio.get_running_loop().time() - self._last_write

    async def _render(self, text: str, *, cursor: bool, view: discord.ui.View | None = None) -> None:
        chunks = split_message(text, self.poster.limit - len(CURSOR)) or ["…"]
        if cursor:
            chunks[-1] += CURSOR
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            item_view = view if last else None
            if i < len(self.messages):
                if self._shown[i] != chunk or item_view is not None:
                    self.messages[i] = await self.poster.edit(self.messages[i], chunk, item_view)
                    self._shown[i] = chunk
            else:
                self.messages.append(await self.poster.send(chunk, item_view))
                self._shown.append(chunk)
        # The stored turn can be shorter than what streamed (guards cut a role-swapped tail).
        for extra in self.messages[len(chunks) :]:
            try:
                await extra.delete()
            except discord.HTTPException as e:
                log.warning("could not delete leftover message %s: %s", extra.id, e)
        del self.messages[len(chunks) :], self._shown[len(chunks) :]
        self._last_write = asyncio.get_running_loop().time()
