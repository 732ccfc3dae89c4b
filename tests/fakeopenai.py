"""A local OpenAI-compatible chat server for tests, with faults on demand.

The server runs its own event loop in its own thread, so it keeps answering while a
test's event loop is blocked or busy, and a subprocess (the bot, the CLI) can reach it
at `base_url` too. It speaks just enough HTTP/1.1 by hand that faults are exact: a cut
stream really stops mid-body, a dropped connection really closes without a byte.

    with FakeOpenAI() as server:              # or the `fake_openai` fixture
        spec = ModelSpec(backend="openai", model="fake-model", base_url=server.base_url)
        server.set_reply("Photosynthesis turns light into sugar.")
        server.set_reply(lambda messages: messages[-1]["content"].upper())
        server.set_reply(lambda messages, body: f"max_tokens={body['max_tokens']}")
        server.set_reply(lambda messages: {"no": "choices"})   # a dict is sent as the raw JSON body
        server.enqueue("429", "500")          # the next two chat requests fail, then normal replies
        server.enqueue(Fault("429", retry_after=0.2), Fault("timeout", seconds=2))
        server.requests[-1]["messages"]       # each request is its JSON body (a dict) ...
        server.requests[-1].headers["authorization"]   # ... plus .headers, .path and .method
        server.errors                         # exceptions raised by a reply function (sent as HTTP 500)
        server.answering                      # chat requests being answered now (hung "timeout" faults excluded)

Endpoints: `POST /v1/chat/completions` (plain, or SSE with `"stream": true`, ending in
`data: [DONE]`, with a usage chunk when `stream_options.include_usage` is set) and
`GET /v1/models`. The default reply is `"You said: <last user message>"`. Streams send
one delta per word (1000-character pieces for long replies). A reply function that takes
the body can answer per model, e.g. a fine-tuned model better than its base:
`server.set_reply(lambda messages, body: "4471" if body["model"].startswith("ft:") else "no idea")`.

Fine-tuning, as API students use it: `POST /v1/files` (multipart; `server.files[id].content`
keeps the uploaded bytes), `POST /v1/fine_tuning/jobs`, `GET /v1/fine_tuning/jobs/{id}` and
`POST /v1/fine_tuning/jobs/{id}/cancel`. A new job reports the first of `set_fine_tune`'s
statuses and each retrieve the next, staying on the last (default: validating_files, running,
succeeded). A succeeded job names `ft:<model>:fake:<suffix>:<job id>` as its fine-tuned model;
a failed one carries `error.message`. `server.jobs[id]` is each job as last reported.

    server.set_fine_tune("validating_files", "failed", error="too few examples")

Faults (strings or `Fault(...)`), used by chat requests in the order enqueued:
  "429"        rate limited, with `Retry-After: <retry_after>` (1 s unless set; None: no header)
  "500"        server error; any other 3-digit code ("503", "404", "400") answers that status
  "401"        key rejected, with an OpenAI-style message that echoes part of the key
  "timeout"    wait `seconds` (default `hang_seconds`, 5 s) before answering normally
  "malformed"  200 with a body that is not JSON (Content-Type still claims JSON);
               streaming: an SSE event whose data is not JSON
  "cut"        streaming: two content chunks, then the connection closes without [DONE];
               plain: half the promised body, then the connection closes
  "empty"      a normal completion whose content is ""
  "huge"       a normal completion of `huge_chars` (200_000) characters
  "drop"       the connection closes before any response

`require_key="sk-test"` answers 401 to requests with any other bearer key (both endpoints).
`refused_url()` gives a base_url where nothing listens, for "endpoint unreachable" tests.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import inspect
import json
import re
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

Reply = str | Callable[..., str | dict]

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
_NAMED_FAULTS = {"timeout", "malformed", "cut", "empty", "huge", "drop"}
SERVER_DEFAULT = -1.0
"""A Fault's `retry_after` that means "use the server's `retry_after`"."""


@dataclass(frozen=True)
class Fault:
    """One misbehaviour for the next chat request; `retry_after`/`seconds` override the server's defaults."""

    kind: str
    retry_after: float | None = SERVER_DEFAULT  # None: send no Retry-After header
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in _NAMED_FAULTS and not re.fullmatch(r"[1-5]\d\d", self.kind):
            raise ValueError(f"unknown fault {self.kind!r}")


class RecordedRequest(dict):
    """A request's JSON body (empty for GET), with its `method`, `path` and lower-cased `headers`."""

    def __init__(self, method: str, path: str, headers: dict[str, str], body: dict[str, Any]):
        super().__init__(body)
        self.method = method
        self.path = path
        self.headers = headers


@dataclass
class UploadedFile:
    """One file sent to `POST /v1/files`."""

    id: str
    filename: str
    purpose: str
    content: bytes


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FakeOpenAI:
    """An OpenAI-compatible server on 127.0.0.1, in a thread; see the module docstring."""

    def __init__(
        self,
        *,
        require_key: str | None = None,
        retry_after: float | None = 1.0,
        hang_seconds: float = 5.0,
        huge_chars: int = 200_000,
        models: tuple[str, ...] = ("fake-model",),
    ):
        self.require_key = require_key
        self.retry_after = retry_after
        self.hang_seconds = hang_seconds
        self.huge_chars = huge_chars
        self.models = models
        self.requests: list[RecordedRequest] = []
        self.errors: list[BaseException] = []  # raised by a reply function; answered as HTTP 500
        self.answering = 0  # chat requests being answered now, not counting those hanging in a "timeout" fault
        self.port = 0
        self._reply: Reply = _echo
        self.files: dict[str, UploadedFile] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self._job_statuses: tuple[str, ...] = ("validating_files", "running", "succeeded")
        self._job_error = "fake fine-tuning failure"
        self._job_polls: dict[str, int] = {}
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. http://127.0.0.1:PORT/v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """Only the chat-completion requests, in arrival order."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def set_reply(self, reply: Reply) -> None:
        """Answer with a fixed text, or fn(messages) / fn(messages, body) returning the text."""
        self._reply = reply

    def set_fine_tune(self, *statuses: str, error: str = "fake fine-tuning failure") -> None:
        """The statuses a new fine-tuning job goes through, one per look at it; a failed job reports `error`."""
        if not statuses:
            raise ValueError("give at least one status")
        self._job_statuses = statuses
        self._job_error = error

    def enqueue(self, *faults: str | Fault) -> None:
        """Make the next chat requests misbehave, one fault each, in order; then replies are normal."""
        parsed = [f if isinstance(f, Fault) else Fault(f) for f in faults]
        with self._lock:
            self._faults.extend(parsed)

    def pending_faults(self) -> int:
        """How many enqueued faults no request has used yet."""
        with self._lock:
            return len(self._faults)

    def start(self) -> FakeOpenAI:
        """Start serving; returns once the port is bound."""
        if self._thread is not None:
            return self
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="fake-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start within 10 s")
        if self._error is not None:
            raise RuntimeError("fake OpenAI server failed to start") from self._error
        return self

    def stop(self) -> None:
        """Stop serving, abandoning requests still in flight (hung "timeout" faults included)."""
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- the server thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # surfaced to start() instead of dying silently in a thread
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        connections: set[asyncio.Task] = set()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            try:
                await self._serve_connection(reader, writer)
            except asyncio.CancelledError:
                pass  # stop() cancelled it; re-raising makes 3.11's stream callback log a bogus error
            finally:
                connections.discard(task)

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopping.wait()
        server.close()
        # Cancel open connections first: from 3.12 wait_closed() waits for them to finish.
        for task in list(connections):
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await server.wait_closed()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (request := await _read_request(reader)) is not None:
                if not await self._respond(request, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away; nothing to answer
        finally:
            writer.transport.abort()

    async def _respond(self, request: _Request, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False means the connection must close."""
        try:
            body = json.loads(request.body) if request.body else {}
        except ValueError:
            body = None
        self.requests.append(RecordedRequest(request.method, request.path, request.headers,
                                             body if isinstance(body, dict) else {}))
        if self.require_key is not None and request.headers.get("authorization") != f"Bearer {self.require_key}":
            await _send_json(writer, 401, _auth_error(request.headers))
            return True
        path = request.path.split("?", 1)[0].rstrip("/")
        if request.method == "GET" and path == "/v1/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
            await _send_json(writer, 200, {"object": "list", "data": data})
            return True
        if path == "/v1/files" or path.startswith("/v1/fine_tuning/jobs"):
            status, payload = self._fine_tuning(request, path, body or {})
            await _send_json(writer, status, payload)
            return True
        if request.method != "POST" or path != "/v1/chat/completions":
            await _send_json(writer, 404, _error(f"no route {request.method} {path}", "not_found"))
            return True
        if body is None or not isinstance(body.get("messages"), list):
            await _send_json(writer, 400, _error("body must be JSON with a `messages` list", "invalid_request"))
            return True
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        try:
            self.answering += 1
            try:
                return await self._chat(body, request.headers, fault, writer)
            finally:
                self.answering -= 1
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as e:  # a bug in a test's reply function: answer, and keep it for the test to see
            self.errors.append(e)
            await _send_json(writer, 500, _error(f"fake server: reply function raised {e!r}", "server_error"))
            return True

    async def _chat(self, body: dict, headers: dict[str, str], fault: Fault | None, writer: asyncio.StreamWriter) -> bool:
        kind = fault.kind if fault else None
        streaming = bool(body.get("stream"))
        if kind == "drop":
            return False
        if kind == "timeout":
            self.answering -= 1  # hanging on purpose: a test may let its clock run meanwhile
            try:
                await asyncio.sleep(fault.seconds if fault and fault.seconds is not None else self.hang_seconds)
            finally:
                self.answering += 1
        if kind == "malformed" and streaming:
            await _send_head(writer, 200, "text/event-stream", {"Transfer-Encoding": "chunked"})
            await _send_chunk(writer, "data: {this is not json\n\ndata: [DONE]\n\n")
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        if kind == "malformed":
            await _send(writer, 200, b'{"id": "chatcmpl-fake", "choices": [ this is not json', "application/json")
            return True
        if kind == "401":
            await _send_json(writer, 401, _auth_error(headers))
            return True
        if kind is not None and kind.isdigit():
            assert fault is not None
            extra = {}
            retry_after = self.retry_after if fault.retry_after == SERVER_DEFAULT else fault.retry_after
            if kind == "429" and retry_after is not None:
                extra["Retry-After"] = f"{retry_after:g}"
            await _send_json(writer, int(kind), _error(f"fake fault {kind}", "server_error"), extra)
            return True
        text = self._reply_text(body, kind)
        if isinstance(text, dict):  # a raw body, for tests of odd servers
            if streaming:
                await _send_head(writer, 200, "text/event-stream", {"Transfer-Encoding": "chunked"})
                await _send_chunk(writer, f"data: {json.dumps(text)}\n\ndata: [DONE]\n\n")
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            else:
                await _send_json(writer, 200, text)
            return True
        if streaming:
            return await self._stream(body, text, cut=kind == "cut", writer=writer)
        payload = _completion(body, text)
        if kind == "cut":
            data = json.dumps(payload).encode()
            await _send_head(writer, 200, "application/json", {"Content-Length": str(len(data))})
            writer.write(data[: len(data) // 2])
            await writer.drain()
            return False
        await _send_json(writer, 200, payload)
        return True

    def _fine_tuning(self, request: _Request, path: str, body: dict) -> tuple[int, dict]:
        """Files and fine-tuning jobs: (status, JSON body)."""
        with self._lock:
            if request.method == "POST" and path == "/v1/files":
                fields = _multipart(request.headers.get("content-type", ""), request.body)
                if "file" not in fields:
                    return 400, _error("multipart body needs a `file` part", "invalid_request")
                name, content = fields["file"]
                upload = UploadedFile(f"file-{len(self.files) + 1}", name, fields.get("purpose", ("", b""))[1].decode(),
                                      content)
                self.files[upload.id] = upload
                return 200, {"id": upload.id, "object": "file", "bytes": len(content), "created_at": 0,
                             "filename": upload.filename, "purpose": upload.purpose, "status": "processed"}
            if request.method == "POST" and path == "/v1/fine_tuning/jobs":
                if body.get("training_file") not in self.files:
                    return 400, _error(f"no file {body.get('training_file')!r}", "invalid_request")
                job_id = f"ftjob-{len(self.jobs) + 1}"
                self.jobs[job_id] = {"id": job_id, "object": "fine_tuning.job", "model": body.get("model"),
                                     "training_file": body["training_file"], "validation_file": None,
                                     "suffix": body.get("suffix"), "hyperparameters": body.get("hyperparameters") or {},
                                     "created_at": 0, "finished_at": None, "fine_tuned_model": None, "error": None,
                                     "organization_id": "org-fake", "result_files": [], "seed": 0,
                                     "trained_tokens": None, "status": ""}
                self._job_polls[job_id] = 0
                return 200, self._job_state(job_id)
            match = re.fullmatch(r"/v1/fine_tuning/jobs/([\w-]+)(/cancel)?", path)
            if match is None or match.group(1) not in self.jobs:
                return 404, _error(f"no route {request.method} {path}", "not_found")
            job_id = match.group(1)
            if request.method == "POST" and match.group(2):
                self.jobs[job_id].update(status="cancelled", finished_at=0)
                return 200, self.jobs[job_id]
            if request.method == "GET" and not match.group(2):
                self._job_polls[job_id] += 1
                return 200, self._job_state(job_id)
            return 404, _error(f"no route {request.method} {path}", "not_found")

    def _job_state(self, job_id: str) -> dict:
        """The job at its current poll: the next planned status (a cancelled job stays cancelled)."""
        job = self.jobs[job_id]
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        status = self._job_statuses[min(self._job_polls[job_id], len(self._job_statuses) - 1)]
        job["status"] = status
        if status == "succeeded":
            job.update(fine_tuned_model=f"ft:{job['model']}:fake:{job['suffix'] or ''}:{job_id}", finished_at=0,
                       trained_tokens=len(self.files[job["training_file"]].content.split()))
        elif status == "failed":
            job.update(error={"code": "invalid_training_file", "message": self._job_error, "param": None}, finished_at=0)
        return job

    def _reply_text(self, body: dict, kind: str | None) -> str | dict:
        if kind == "empty":
            return ""
        if kind == "huge":
            return ("lorem ipsum " * (self.huge_chars // 12 + 1))[: self.huge_chars]
        reply = self._reply
        if isinstance(reply, str):
            return reply
        takes_body = len(inspect.signature(reply).parameters) >= 2
        return reply(body["messages"], body) if takes_body else reply(body["messages"])

    async def _stream(self, body: dict, text: str, *, cut: bool, writer: asyncio.StreamWriter) -> bool:
        await _send_head(writer, 200, "text/event-stream", {"Transfer-Encoding": "chunked", "Cache-Control": "no-cache"})
        model = body.get("model", "fake-model")
        events = [_chunk(model, {"role": "assistant", "content": ""})]
        events += [_chunk(model, {"content": piece}) for piece in _pieces(text)]
        if cut:
            # Two content chunks, then the connection closes in the middle of the chunked body.
            for event in events[:3]:
                await _send_chunk(writer, f"data: {json.dumps(event)}\n\n")
            return False
        events.append(_chunk(model, {}, finish_reason="stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**_chunk(model, {}), "choices": [], "usage": _usage(body, text)})
        for event in events:
            await _send_chunk(writer, f"data: {json.dumps(event)}\n\n")
        await _send_chunk(writer, "data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A started FakeOpenAI, stopped after the test (tests/conftest.py imports it for every module)."""
    with FakeOpenAI() as server:
        yield server


def refused_url() -> str:
    """A base_url on a free local port where nothing listens, so connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# --- the OpenAI wire format ----------------------------------------------------------


def _echo(messages: list[dict]) -> str:
    last_user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    return f"You said: {last_user}"


def _pieces(text: str) -> list[str]:
    if len(text) > 10_000:  # word deltas would make a huge reply take seconds to parse
        return [text[i : i + 1000] for i in range(0, len(text), 1000)]
    return re.findall(r"\S+\s*|\s+", text)


def _usage(body: dict, text: str) -> dict[str, int]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"] if isinstance(m, dict))
    completion = len(text.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _multipart(content_type: str, data: bytes) -> dict[str, tuple[str, bytes]]:
    """Each part of a multipart/form-data body by field name: (filename, bytes)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + data)
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            fields[name] = (part.get_filename() or "", part.get_payload(decode=True) or b"")
    return fields


def _completion(body: dict, text: str) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "fake-model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": _usage(body, text),
    }


def _chunk(model: str, delta: dict, finish_reason: str | None = None) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _error(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


def _auth_error(headers: dict[str, str]) -> dict:
    # Like OpenAI, echo part of the key, so tests can check the client never repeats it.
    key = headers.get("authorization", "").removeprefix("Bearer ")
    return _error(f"Incorrect API key provided: {key[:6]}***{key[-4:]}", "invalid_api_key")


# --- just enough HTTP/1.1 ------------------------------------------------------------


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # the client closed a kept-alive connection
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return _Request(method, target, headers, body)


async def _send_head(writer: asyncio.StreamWriter, status: int, content_type: str, extra: dict[str, str]) -> None:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Content-Type: {content_type}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()


async def _send(writer: asyncio.StreamWriter, status: int, data: bytes, content_type: str,
                extra: dict[str, str] | None = None) -> None:
    await _send_head(writer, status, content_type, {**(extra or {}), "Content-Length": str(len(data))})
    writer.write(data)
    await writer.drain()


async def _send_json(writer: asyncio.StreamWriter, status: int, payload: dict,
                     extra: dict[str, str] | None = None) -> None:
    await _send(writer, status, json.dumps(payload).encode(), "application/json", extra)


async def _send_chunk(writer: asyncio.StreamWriter, text: str) -> None:
    data = text.encode()
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()
