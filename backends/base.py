"""The one protocol every model backend speaks, so the lesson engine never knows which it talks to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypedDict, runtime_checkable


class Message(TypedDict):
    """One chat message, as in the OpenAI chat format."""

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class GenParams:
    """Per-request generation settings; backends start from their model's configured defaults."""

    max_new_tokens: int = 200
    temperature: float = 0.3
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    seed: int | None = 0
    stop: tuple[str, ...] = ()


@dataclass
class Usage:
    """Token counts and latency of one completed request (filled in by the backend)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = 0
    extra: dict = field(default_factory=dict)


class BackendError(Exception):
    """A model could not answer. The message names the model and, for APIs, the endpoint."""

    def __init__(self, model: str, message: str, *, endpoint: str | None = None, retryable: bool = False):
        where = f" at {endpoint}" if endpoint else ""
        super().__init__(f"model '{model}'{where}: {message}")
        self.model = model
        self.endpoint = endpoint
        self.retryable = retryable


@runtime_checkable
class ChatBackend(Protocol):
    """A chat model. Implementations must never block the event loop."""

    name: str

    async def chat(self, messages: list[Message], params: GenParams | None = None, usage: Usage | None = None) -> str:
        """Return the whole completion. Raises BackendError on failure."""
        ...

    def stream(
        self, messages: list[Message], params: GenParams | None = None, usage: Usage | None = None
    ) -> AsyncIterator[str]:
        """Yield text deltas as they are produced. Raises BackendError on failure."""
        ...

    def parameter_count(self) -> int | None:
        """Parameters of the model if known (local models), else None."""
        ...

    async def aclose(self) -> None:
        """Release clients, threads and memory."""
        ...
