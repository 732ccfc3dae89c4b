"""Running a trainer subprocess that speaks JSON lines, without blocking the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], Awaitable[None] | None]


@dataclass
class JsonRun:
    """How a JSON-lines subprocess ended."""

    returncode: int
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr_tail: str = ""

    @property
    def last(self) -> dict[str, Any]:
        return self.events[-1] if self.events else {}

    def failure_reason(self) -> str:
        """A readable reason: the error event's, else the last lines of stderr, else the exit code."""
        errors = [e for e in self.events if e.get("event") == "error"]
        if errors:
            return str(errors[-1].get("reason", "unknown error"))
        if self.returncode < 0:
            return f"killed by signal {signal.Signals(-self.returncode).name}"
        tail = self.stderr_tail.strip().splitlines()[-3:]
        return " | ".join(tail) if tail else f"exited with code {self.returncode}"


async def run_module(module: str, args: list[str], on_event: EventHandler | None = None,
                     env: dict[str, str] | None = None) -> JsonRun:
    """Run `python -m module args…`, feeding each JSON stdout line to `on_event`; kill it if cancelled."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})}, start_new_session=True,
    )
    run = JsonRun(returncode=0)
    if on_event is not None:  # lets a caller (a test, a kill switch) reach the process group
        spawned = on_event({"event": "spawned", "module": module, "pid": proc.pid})
        if asyncio.iscoroutine(spawned):
            await spawned
    stderr_task = asyncio.create_task(_tail(proc.stderr))
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                log.debug("%s printed a non-JSON line: %s", module, line[:200])
                continue
            run.events.append(event)
            if on_event is not None:
                result = on_event(event)
                if asyncio.iscoroutine(result):
                    await result
        run.returncode = await proc.wait()
    except BaseException:
        _kill(proc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 10)
        raise
    finally:
        run.stderr_tail = await stderr_task
    return run


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


async def _tail(stream: asyncio.StreamReader | None, keep: int = 8000) -> str:
    text = ""
    if stream is None:
        return text
    async for raw in stream:
        text = (text + raw.decode("utf-8", "replace"))[-keep:]
    return text
