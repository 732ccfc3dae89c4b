"""Deterministic scripted models for fast tests of the engine and the Discord layer.

They speak the real ChatBackend protocol; the engine cannot tell them from a real model.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable

from backends.base import BackendError, GenParams, Message, Usage
from backends.registry import ModelRegistry
from settings import ModelSpec

Reply = str | Callable[[list[Message]], str]


class ScriptedBackend:
    """Replies from a script (cycled), or from a function of the messages; can fail on demand."""

    def __init__(self, name: str, replies: Iterable[Reply] | Reply = "", *, fail_on_call: int | None = None, delay: float = 0.0):
        self.name = name
        self.replies = [replies] if isinstance(replies, str) or callable(replies) else list(replies)
        self.calls: list[list[Message]] = []
        self.fail_on_call = fail_on_call
        self.delay = delay
        self.closed = False

    def _next(self, messages: list[Message]) -> str:
        self.calls.append(messages)
        if self.fail_on_call is not None and len(self.calls) >= self.fail_on_call:
            raise BackendError(self.name, "scripted failure", endpoint="scripted://")
        reply = self.replies[(len(self.calls) - 1) % len(self.replies)] if self.replies else ""
        return reply(messages) if callable(reply) else reply

    async def chat(self, messages: list[Message], params: GenParams | None = None, usage: Usage | None = None) -> str:
        """The next scripted reply."""
        if self.delay:
            await asyncio.sleep(self.delay)
        text = self._next(messages)
        if usage is not None:
            usage.prompt_tokens, usage.completion_tokens = 10, len(text.split())
        return text

    async def stream(
        self, messages: list[Message], params: GenParams | None = None, usage: Usage | None = None
    ) -> AsyncIterator[str]:
        """The next scripted reply, word by word."""
        text = await self.chat(messages, params, usage)
        words = text.split(" ")
        for i, word in enumerate(words):
            await asyncio.sleep(0)
            yield word if i == 0 else " " + word

    def parameter_count(self) -> int | None:
        """Unknown, like an API model."""
        return None

    async def aclose(self) -> None:
        """Nothing to release."""
        self.closed = True


def scripted_registry(backends: dict[str, ScriptedBackend], trainable: Iterable[str] = (), tmp_cache=None) -> ModelRegistry:
    """A registry whose models are scripted; names in `trainable` are marked as students."""
    from pathlib import Path

    specs = {
        name: ModelSpec(
            name=name,
            backend="local",
            path="scripted",
            trainable=name in set(trainable),
            persona={"display_name": name.capitalize()},
        )
        for name in backends
    }
    return ModelRegistry(specs, cache_dir=Path(tmp_cache or "/tmp/classroom-scripted"), backends=backends)
