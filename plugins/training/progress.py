"""A training run's progress in one Discord message: the state the trainer's events build, its text,
and the throttle that keeps edits at least a few seconds apart.

The trainer reports many small events (a step every fraction of a second on a small model).
Discord would rate-limit an edit per event, so the board shows the newest state at most once
per interval; an event that comes too soon is not lost, it is shown when the interval is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import discord

from plugins.common.context import NO_MENTIONS
from plugins.common.text import shorten

log = logging.getLogger(__name__)

EDIT_INTERVAL = 3.0  # seconds between edits of a progress message
MIN_INTERVAL = 1.0  # never edit faster than this, whatever the caller asks
BAR_WIDTH = 20

STAGES = {
    "starting": "starting",
    "dataset": "building the dataset",
    "quiz": "writing held-out quiz items",
    "train": "training",
    "preference": "preference step (DPO/KTO on members' chosen/rejected answers)",
    "trained": "training done",
    "evaluate": "held-out quiz: before and after",
}
OUTCOMES = {
    "promoted": "✅ Finished: the new adapter was promoted",
    "rejected": "↩️ Finished: the new adapter was rejected",
    "skipped": "⏭️ Skipped",
    "failed": "❌ Failed",
    "interrupted": "⚠️ Interrupted: the bot shut down",
}

Show = Callable[[str], Awaitable[None]]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass
class ProgressState:
    """What a run's progress message shows, built from the trainer's progress events."""

    student: str
    display_name: str
    trigger: str
    stage: str = "starting"
    note: str = ""
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    examples: int | None = None
    tokens: int | None = None
    outcome: str | None = None

    def apply(self, event: dict[str, Any]) -> bool:
        """Take in one event; returns whether it changes what the message shows."""
        kind = event.get("event")
        if kind == "stage":
            self.stage, self.note = str(event.get("stage", "")), str(event.get("message", ""))
        elif kind == "start":
            self.examples, self.tokens = event.get("examples"), event.get("tokens")
            self.total_steps = event.get("total_steps") or self.total_steps
        elif kind == "progress":
            # the optional preference step reports its own steps after SFT's (trainer/preference.py)
            self.stage = "preference" if event.get("stage") == "preference" else "train"
            self.step = int(event.get("step") or 0)
            self.total_steps = event.get("total_steps") or self.total_steps
            self.loss, self.tokens_per_s, self.eta_s = event.get("loss"), event.get("tokens_per_s"), event.get("eta_s")
        elif kind == "error":
            self.note = f"error: {event.get('reason', 'unknown')}"
        elif kind == "done":
            self.stage, self.note, self.eta_s = "trained", "", 0.0
            if self.total_steps:
                self.step = self.total_steps
        else:
            return False  # "spawned" and anything new: nothing a member needs to see
        return True

    @property
    def fraction(self) -> float:
        """How far the training steps are, 0 to 1 (1 once training is done)."""
        if self.outcome in ("promoted", "rejected") or self.stage in ("trained", "evaluate"):
            return 1.0
        if not self.total_steps:
            return 0.0
        return max(0.0, min(1.0, self.step / self.total_steps))


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """A text progress bar like `██████░░░░░░░░░░░░░░` 30%."""
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return f"`{'█' * filled}{'░' * (width - filled)}` {fraction * 100:.0f}%"


def duration(seconds: float | None) -> str:
    """0:42, 12:05 or 1:02:03; – when unknown."""
    if seconds is None:
        return "–"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render_progress(state: ProgressState) -> str:
    """The progress message: title, bar with step/total, stage, then loss, speed and ETA while training."""
    when = "nightly run" if state.trigger == "schedule" else f"{state.trigger} run"
    icon = "🏋️" if state.outcome is None else ""
    lines = [f"{icon} **Training {state.display_name}** (`{state.student}`) · {when}".strip()]
    steps = f"step {state.step}/{state.total_steps}" if state.total_steps else "step –"
    lines.append(f"{bar(state.fraction)} · {steps}")
    if state.outcome is not None:
        lines.append(OUTCOMES.get(state.outcome, state.outcome))
    else:
        stage = STAGES.get(state.stage, state.stage)
        lines.append(f"Stage: {stage}" + (f" — {shorten(state.note, 300)}" if state.note else ""))
    if state.loss is not None or state.stage in ("train", "preference"):
        loss = f"{state.loss:.3f}" if state.loss is not None else "–"
        speed = f"{state.tokens_per_s:,.0f}" if state.tokens_per_s is not None else "–"
        eta = duration(state.eta_s) if state.outcome is None else "–"
        lines.append(f"Loss {loss} · {speed} tokens/s · ETA {eta}")
    return "\n".join(lines)


class Throttle:
    """Allows an action at most once per `interval` seconds (never more than once a second)."""

    def __init__(self, interval: float):
        self.interval = max(MIN_INTERVAL, interval)
        self.last: float | None = None

    def wait_time(self, now: float) -> float:
        """Seconds to wait before the next action is allowed (0: now)."""
        return 0.0 if self.last is None else max(0.0, self.last + self.interval - now)

    def mark(self, now: float) -> None:
        """The action happened at `now`."""
        self.last = now


class ProgressBoard:
    """Shows a run's state through `show` at most once per interval, always ending on the newest state.

    `on_event` never waits for Discord: a background task does the showing, so a slow edit
    can't hold up the trainer's events.
    """

    def __init__(
        self,
        state: ProgressState,
        show: Show,
        *,
        interval: float = EDIT_INTERVAL,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
    ):
        self.state = state
        self._show_text = show
        self.throttle = Throttle(interval)
        self._clock = clock or asyncio.get_running_loop().time
        self._sleep = sleep
        self._shown: str | None = None
        self._pending: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        """Whether anything was shown yet."""
        return self._shown is not None

    async def on_event(self, event: dict[str, Any]) -> None:
        """A trainer progress event (the job's progress callback)."""
        if self.state.outcome is None and self.state.apply(event) and self._pending is None:
            self._pending = asyncio.create_task(self._show_when_allowed(), name=f"training-progress-{self.state.student}")

    async def finish(self, outcome: str, *, hurry: bool = False) -> None:
        """Show the final state (after the interval, if the last edit was recent), then stop.

        `hurry` (shutting down) waits only until a second has passed since the last edit.
        """
        await self.close()
        if not self.started:
            return
        self.state.outcome = outcome
        wait = self.throttle.wait_time(self._clock())
        if hurry:
            wait = max(0.0, wait - (self.throttle.interval - MIN_INTERVAL))
        if wait > 0:
            await self._sleep(wait)
        await self._show()

    async def close(self) -> None:
        """Stop any pending edit."""
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending

    async def _show_when_allowed(self) -> None:
        try:
            while True:
                wait = self.throttle.wait_time(self._clock())
                if wait > 0:
                    await self._sleep(wait)
                await self._show()
                if render_progress(self.state) == self._shown:
                    return  # nothing new arrived while Discord answered
        finally:
            if self._pending is asyncio.current_task():
                self._pending = None

    async def _show(self) -> None:
        text = render_progress(self.state)
        if text == self._shown:
            return
        self.throttle.mark(self._clock())
        self._shown = text
        await self._show_text(text)


class ProgressMessage:
    """One message in a channel: posted the first time, edited after. Discord errors are logged, not raised."""

    def __init__(self, channel: discord.abc.Messageable):
        self.channel = channel
        self.message: discord.Message | None = None

    async def show(self, text: str) -> None:
        """Post or edit the message to read `text`."""
        try:
            if self.message is None:
                self.message = await self.channel.send(text, allowed_mentions=NO_MENTIONS)
            else:
                await self.message.edit(content=text, allowed_mentions=NO_MENTIONS)
        except discord.NotFound:
            log.info("the training progress message was deleted; posting a new one next time")
            self.message = None
        except discord.HTTPException as e:
            log.warning("could not show training progress in channel %s: %s", getattr(self.channel, "id", "?"), e)
