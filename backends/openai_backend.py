"""ChatBackend for any OpenAI-compatible endpoint: OpenAI itself, vLLM, llama.cpp's server, Ollama.

The openai client's own retries are off (`max_retries=0`): this module retries itself, so
that it can log each retry with the model and endpoint, honour Retry-After with a cap,
take an injected sleep in tests, and turn every failure into one readable BackendError.
The API key never appears in a message, log line or exception chain.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai

from backends.base import BackendError, GenParams, Message, Usage
from settings import ModelSpec

log = logging.getLogger(__name__)

DEFAULT_MAX_CHARS = 100_000
"""Completions are cut to this many characters: a runaway model must not flood a lesson."""
DEFAULT_ENDPOINT = "https://api.openai.com/v1"
NO_KEY_PLACEHOLDER = "not-needed"
"""Sent when a self-hosted endpoint (Ollama, llama.cpp) has no key: the client insists on one."""
MAX_RETRY_AFTER = 30.0
"""Longest Retry-After we wait for; a lesson should not stall for minutes on one turn."""
BACKOFF_BASE = 0.5
BACKOFF_CAP = 10.0
MAX_STOP_SEQUENCES = 4  # OpenAI rejects more than four stop sequences

Sleep = Callable[[float], Awaitable[object]]


@dataclass(frozen=True)
class _Failure:
    """What went wrong with one attempt. A retryable failure's `message` is a summary, `detail` the cause."""

    message: str
    retryable: bool
    detail: str = ""
    retry_after: float | None = None


class _BadResponse(Exception):
    """The endpoint answered 200 with something that is not a chat completion."""


class OpenAIBackend:
    """A chat model behind an OpenAI-compatible HTTP API."""

    def __init__(
        self,
        spec: ModelSpec,
        env: Mapping[str, str] | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        max_chars: int = DEFAULT_MAX_CHARS,
    ):
        env = os.environ if env is None else env
        self.name = spec.name or spec.model or "openai"
        self.spec = spec
        self.endpoint = _display_url(spec.base_url or DEFAULT_ENDPOINT)
        self._sleep = sleep
        self._max_chars = max_chars
        self._stream_usage = True  # ask for a usage chunk until a server refuses stream_options
        # A stray newline from a .env file would make an illegal header that echoes the key.
        key = (env.get(spec.api_key_env) or "").strip()
        if not key and not spec.base_url:
            raise BackendError(self.name, f"environment variable {spec.api_key_env} is not set",
                               endpoint=self.endpoint)
        self._key = key
        self._client = openai.AsyncOpenAI(
            base_url=spec.base_url or DEFAULT_ENDPOINT,
            api_key=key or NO_KEY_PLACEHOLDER,
            timeout=spec.timeout,
            max_retries=0,
        )

    def parameter_count(self) -> int | None:
        """Unknown for remote models."""
        return None

    async def aclose(self) -> None:
        """Close the HTTP client and its connections."""
        await self._client.close()

    async def chat(self, messages: list[Message], params: GenParams | None = None, usage: Usage | None = None) -> str:
        """Return the whole completion, cut to `max_chars`. Raises BackendError on failure."""
        started = time.perf_counter()
        request = self._request(messages, params)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._client.chat.completions.create(**request)
                break
            except (openai.OpenAIError, json.JSONDecodeError) as e:
                failure, cause = self._classify(e), self._safe_cause(e)
            await self._pause_or_raise(failure, attempt, cause)
        try:
            text, finish_reason = _completion_text(response)
        except _BadResponse as e:
            raise self._error(f"unexpected response: {self._scrub(str(e))}") from None
        truncated = len(text) > self._max_chars
        if usage is not None:
            _fill_usage(usage, getattr(response, "usage", None))
            usage.latency_ms = _ms_since(started)
            usage.extra.update(attempts=attempt, finish_reason=finish_reason, truncated=truncated)
        return text[: self._max_chars]

    async def stream(
        self, messages: list[Message], params: GenParams | None = None, usage: Usage | None = None
    ) -> AsyncIterator[str]:
        """Yield content deltas, at most `max_chars` in all. Retries only until the first delta."""
        started = time.perf_counter()
        request = self._request(messages, params)
        attempt = sent = 0
        finish_reason: str | None = None
        while True:
            attempt += 1
            stream = None
            try:
                extra = {"stream_options": {"include_usage": True}} if self._stream_usage else {}
                stream = await self._client.chat.completions.create(**request, stream=True, **extra)
                chunks = 0
                async for chunk in stream:
                    chunks += 1
                    piece, finish_reason = _chunk_text(chunk, usage, finish_reason)
                    piece = piece[: self._max_chars - sent]
                    if piece:
                        sent += len(piece)
                        yield piece
                    if sent >= self._max_chars:
                        break  # stop reading a runaway completion; closing the stream drops the rest
                if not chunks:  # e.g. a plain JSON body: the SSE decoder finds no events in it
                    raise _BadResponse("the stream carried no chunks")
                break
            except (openai.OpenAIError, json.JSONDecodeError, _BadResponse) as e:
                failure, cause = self._classify(e), self._safe_cause(e)
                probe_failed = not sent and self._drop_stream_options(e)
            finally:
                if stream is not None:
                    await stream.close()
            # Raised outside the except block, so a key-echoing exception is not even the context.
            if sent:
                detail = failure.detail or failure.message
                raise self._error(f"stream broke after {sent} characters ({detail})",
                                  retryable=failure.retryable) from cause
            if probe_failed:
                attempt -= 1  # a feature probe, not a failed attempt
                continue
            await self._pause_or_raise(failure, attempt, cause)
        if usage is not None:
            usage.latency_ms = _ms_since(started)
            usage.extra.update(attempts=attempt, finish_reason=finish_reason, truncated=sent >= self._max_chars)

    def _request(self, messages: list[Message], params: GenParams | None) -> dict[str, Any]:
        if params is None:
            g = self.spec.generation
            params = GenParams(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                               repetition_penalty=g.repetition_penalty, seed=g.seed)
        # repetition_penalty has no OpenAI equivalent (frequency_penalty means something else).
        request: dict[str, Any] = {
            "model": self.spec.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            request["seed"] = params.seed
        if params.stop:
            request["stop"] = list(params.stop[:MAX_STOP_SEQUENCES])
        return request

    def _classify(self, e: BaseException) -> _Failure:
        if isinstance(e, _BadResponse):
            return _Failure(f"unexpected response: {self._scrub(str(e))}", retryable=False)
        if isinstance(e, openai.APIStatusError):
            return self._classify_status(e)
        if isinstance(e, openai.APITimeoutError):
            return _Failure("timed out", retryable=True, detail=f"no answer within {self.spec.timeout:g} s")
        if isinstance(e, openai.APIConnectionError):
            return _connection_failure(e)
        if isinstance(e, json.JSONDecodeError):  # a 200 whose body is not JSON
            return _Failure(f"response is not valid JSON ({e})", retryable=False)
        return _Failure(f"client error: {type(e).__name__}: {self._scrub(str(e))}", retryable=False)

    def _classify_status(self, e: openai.APIStatusError) -> _Failure:
        status = e.status_code
        if status in (401, 403):
            unset = "" if self._key else ", which is not set"
            return _Failure(f"API key rejected; check the {self.spec.api_key_env} environment variable{unset} "
                            f"(HTTP {status})", retryable=False)
        if status == 429:
            return _Failure("rate limited", retryable=True, detail="HTTP 429",
                            retry_after=_retry_after(e.response.headers))
        if status >= 500 or status == 408:  # 408 is the server's own timeout: transient like 5xx
            return _Failure("server error", retryable=True, detail=f"HTTP {status}")
        reason = self._scrub(_server_message(e))
        if status == 404:
            return _Failure(f"not found (HTTP 404); check model '{self.spec.model}' and base_url: {reason}",
                            retryable=False)
        return _Failure(f"request rejected (HTTP {status}): {reason}", retryable=False)

    def _drop_stream_options(self, e: BaseException) -> bool:
        """Some servers reject `stream_options`; retry once without it instead of failing."""
        if self._stream_usage and isinstance(e, openai.APIStatusError) and e.status_code in (400, 422):
            self._stream_usage = False
            log.info("model %r at %s rejected stream_options; streaming without usage", self.name, self.endpoint)
            return True
        return False

    async def _pause_or_raise(self, failure: _Failure, attempt: int, cause: BaseException | None) -> None:
        """Sleep before the next attempt, or raise the final BackendError."""
        if not failure.retryable:
            raise self._error(failure.message) from cause
        if attempt > self.spec.max_retries:
            tries = f"{attempt} attempt" + ("s" if attempt > 1 else "")
            raise self._error(f"{failure.message} after {tries} ({failure.detail})", retryable=True) from cause
        if failure.retry_after is not None:
            delay = min(failure.retry_after, MAX_RETRY_AFTER)
        else:
            # Jitter keeps several lessons that failed together from retrying in lockstep.
            delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)) * random.uniform(0.75, 1.25)
        log.warning("model %r at %s: %s (%s); retry %d of %d in %.1f s", self.name, self.endpoint,
                    failure.message, failure.detail, attempt, self.spec.max_retries, delay)
        await self._sleep(delay)

    def _safe_cause(self, e: BaseException) -> BaseException | None:
        """The exception to chain, or None when its text may carry the key (auth errors echo part of it)."""
        if isinstance(e, openai.APIStatusError) and e.status_code in (401, 403):
            return None
        seen: BaseException | None = e
        while seen is not None:
            if self._key and self._key in str(seen):
                return None
            seen = seen.__cause__ or seen.__context__
        return e

    def _error(self, message: str, *, retryable: bool = False) -> BackendError:
        return BackendError(self.name, message, endpoint=self.endpoint, retryable=retryable)

    def _scrub(self, text: str) -> str:
        """Remove the key from text that came from the server, in case it echoes it."""
        if len(self._key) >= 4:
            text = text.replace(self._key, "***")
        return text[:300]


def _completion_text(response: object) -> tuple[str, str | None]:
    if isinstance(response, str):  # the client hands back non-JSON bodies as text
        raise _BadResponse(f"body is not JSON: {response[:80]!r}")
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise _BadResponse("no `choices` in the completion")
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if content is not None and not isinstance(content, str):
        raise _BadResponse(f"message content is {type(content).__name__}, not text")
    return content or "", getattr(choices[0], "finish_reason", None)


def _chunk_text(chunk: object, usage: Usage | None, finish_reason: str | None) -> tuple[str, str | None]:
    """The content delta of one stream chunk; also records usage and the finish reason."""
    choices = getattr(chunk, "choices", None)
    if not isinstance(choices, list):
        raise _BadResponse("a stream chunk has no `choices`")
    if usage is not None:
        _fill_usage(usage, getattr(chunk, "usage", None))
    if not choices:
        return "", finish_reason  # the usage-only chunk at the end
    content = getattr(getattr(choices[0], "delta", None), "content", None)
    if content is not None and not isinstance(content, str):
        raise _BadResponse(f"a stream delta is {type(content).__name__}, not text")
    return content or "", getattr(choices[0], "finish_reason", None) or finish_reason


def _fill_usage(usage: Usage, reported: object) -> None:
    for field in ("prompt_tokens", "completion_tokens"):
        value = getattr(reported, field, None)
        if isinstance(value, int):
            setattr(usage, field, value)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date), if given."""
    if ms := headers.get("retry-after-ms"):
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _connection_failure(e: BaseException) -> _Failure:
    """Why a connection failed, in a few words; the most specific cause is deepest in the chain."""
    chain: list[BaseException] = []
    seen: BaseException | None = e
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    names = {type(x).__name__ for x in chain}
    if any(isinstance(x, ConnectionRefusedError) for x in chain):
        return _Failure("endpoint unreachable", retryable=True, detail="connection refused")
    if any(isinstance(x, socket.gaierror) for x in chain):
        return _Failure("endpoint unreachable", retryable=True, detail="host name not found")
    if "ConnectError" in names:
        return _Failure("endpoint unreachable", retryable=True, detail="could not connect")
    if "RemoteProtocolError" in names:
        return _Failure("connection failed", retryable=True, detail="connection closed by the server")
    return _Failure("connection failed", retryable=True, detail=type(chain[-1]).__name__)


def _server_message(e: openai.APIStatusError) -> str:
    """The error message the server sent, if it used the OpenAI error shape."""
    body = e.body.get("error", e.body) if isinstance(e.body, dict) else e.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return body if isinstance(body, str) and body else e.message


def _display_url(url: str) -> str:
    """The URL without credentials or query string, safe to show."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
