"""LocalBackend: the ChatBackend protocol on top of a shared LocalModelHost."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from typing import cast

from backends.base import BackendError, GenParams, Message, Usage
from backends.local.batching import Answer, GenRequest, ShutDown
from backends.local.host import HostClosed, LocalModelHost
from settings import ModelSpec

log = logging.getLogger(__name__)

_DONE = object()


class LocalBackend:
    """A local chat model: the host's weights, seen through one named adapter or none.

    A student passes its adapter name and answers with its LoRA weights once the host
    has them loaded (base weights until then); a teacher passes None and always answers
    with the base weights, even when it shares the host with a student.
    """

    def __init__(
        self,
        spec: ModelSpec,
        host: LocalModelHost,
        adapter_name: str | None = None,
        *,
        owns_host: bool = False,
    ):
        self.name = spec.name
        self.spec = spec
        self.host = host
        self.adapter_name = adapter_name
        self._owns_host = owns_host
        g = spec.generation
        self.default_params = GenParams(
            max_new_tokens=g.max_new_tokens,
            temperature=g.temperature,
            top_p=g.top_p,
            repetition_penalty=g.repetition_penalty,
            seed=g.seed,
        )

    def __repr__(self) -> str:
        return f"LocalBackend({self.name!r}, adapter={self.adapter_name!r}, host={self.host!r})"

    async def chat(
        self, messages: list[Message], params: GenParams | None = None, usage: Usage | None = None
    ) -> str:
        """Return the whole completion. Raises BackendError on failure."""
        started = time.monotonic()
        cancel = threading.Event()
        future = self._submit(messages, params, cancel, None)
        try:
            answer = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if future.cancelled() and task is not None and not task.cancelling():
                # Not our caller's cancellation: the host dropped the queued request while closing.
                raise BackendError(
                    self.name, "the request was dropped because the model is shutting down"
                ) from None
            raise
        except Exception as e:
            raise self._error(e) from e
        finally:
            cancel.set()  # if we were cancelled, the worker stops at the next token
        self._fill_usage(usage, answer, started)
        return answer.completion.text

    async def stream(
        self, messages: list[Message], params: GenParams | None = None, usage: Usage | None = None
    ) -> AsyncIterator[str]:
        """Yield text deltas as they are produced. Raises BackendError on failure.

        Stopping the iteration early (break, aclose, cancellation) stops the generation
        at its next token and frees the worker for the next request.
        """
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def push(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is closed: nobody will read the rest
                cancel.set()

        future = self._submit(messages, params, cancel, push)
        future.add_done_callback(lambda _: push(_DONE))
        try:
            while (item := await queue.get()) is not _DONE:
                yield cast(str, item)
            if future.cancelled():
                raise BackendError(self.name, "the request was dropped because the model is shutting down")
            try:
                answer = future.result()
            except Exception as e:
                raise self._error(e) from e
        finally:
            cancel.set()
            future.cancel()
        self._fill_usage(usage, answer, started)

    def parameter_count(self) -> int | None:
        """Parameters of the base model once loaded (see LocalModelHost.ensure_loaded), else None."""
        return self.host.parameter_count

    async def aclose(self) -> None:
        """Close the host if this backend owns it; a pooled host is closed by its HostPool."""
        if self._owns_host:
            await self.host.aclose()

    def _submit(
        self,
        messages: list[Message],
        params: GenParams | None,
        cancel: threading.Event,
        on_delta: Callable[[str], None] | None,
    ) -> Future[Answer]:
        request = GenRequest(messages, params or self.default_params, self.adapter_name, cancel, on_delta)
        try:
            return self.host.generate(request)
        except HostClosed as e:
            raise BackendError(self.name, "the model is shut down") from e

    def _error(self, e: BaseException) -> BackendError:
        if isinstance(e, BackendError):
            return e
        if isinstance(e, ShutDown):
            return BackendError(self.name, str(e))
        text = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if "out of memory" in text.lower():
            log.error("model '%s' on %s ran out of memory: %s", self.name, self.host.device, text)
            return BackendError(
                self.name,
                f"ran out of memory on {self.host.device} ({text}); try a smaller max_new_tokens, "
                "a shorter conversation or a smaller dtype",
                retryable=True,
            )
        log.exception("model '%s' failed on %s", self.name, self.host.device)
        return BackendError(self.name, f"generation failed: {type(e).__name__}: {text}")

    def _fill_usage(self, usage: Usage | None, answer: Answer, started: float) -> None:
        if usage is None:
            return
        usage.prompt_tokens = answer.completion.prompt_tokens
        usage.completion_tokens = answer.completion.completion_tokens
        usage.latency_ms = int((time.monotonic() - started) * 1000)
        # Which adapter answered matters when turns are later judged and trained on.
        usage.extra["adapter"] = answer.adapter_path
        usage.extra["device"] = self.host.device
