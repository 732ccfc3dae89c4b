"""A training run with its Discord side: one progress message per student, edited as it trains, then a report.

It runs the same job as the CLI and the schedule (`trainer.job.train_student`, one student
after another as `train_all` does), so each student gets its own progress message and report.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import discord

from app import AppContext
from plugins.common.context import NO_MENTIONS
from plugins.training.progress import EDIT_INTERVAL, ProgressBoard, ProgressMessage, ProgressState
from plugins.training.report import chart_file, report_text
from storage import training as tq
from trainer import job
from trainer.job import TrainResult

log = logging.getLogger(__name__)

NOTHING_NEW = "no newly approved lessons"


@dataclass
class LiveRun:
    """Training this bot is doing now: what /train status shows and what shutdown cancels. The truth is in SQLite."""

    students: list[str]
    trigger: str
    started_by: int | None  # the member who ran /train now; None for the nightly run
    channel: discord.abc.Messageable | None  # where progress and reports go; None: the log only
    state: ProgressState | None = None  # the student training now
    results: list[TrainResult] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


async def run_training(app: AppContext, live: LiveRun, *, interval: float = EDIT_INTERVAL) -> None:
    """Train each student of `live` in turn, showing progress and posting a report for each."""
    for student in live.students:
        display_name = app.models.spec(student).display_name
        state = ProgressState(student, display_name, live.trigger)
        live.state = state
        board = ProgressBoard(state, ProgressMessage(live.channel).show if live.channel else _log_only, interval=interval)
        try:
            result = await job.train_student(app, student, live.trigger, board.on_event)
        except asyncio.CancelledError:
            await board.finish("interrupted", hurry=True)
            raise
        finally:
            await board.close()
        live.results.append(result)
        log.info("training %s (%s): %s — %s", student, live.trigger, result.status, result.reason or "")
        await board.finish(result.status)
        await post_report(app, live, result, display_name)
    live.state = None


async def post_report(app: AppContext, live: LiveRun, result: TrainResult, display_name: str) -> None:
    """The report with the score chart, where the run reports. A quiet nightly skip posts nothing."""
    if live.channel is None:
        return
    if live.trigger == "schedule" and result.status == "skipped" and NOTHING_NEW in (result.reason or ""):
        return  # a night with nothing approved: the run is recorded, the channel stays quiet
    active = await app.store.call(tq.active_adapter, result.student)
    text = report_text(result, display_name, active["version"] if active else None)
    file = None
    if result.status in ("promoted", "rejected"):
        adapters = await app.store.call(tq.adapters, result.student)
        runs = await app.store.call(tq.list_runs, result.student, 1000)
        file = await asyncio.to_thread(chart_file, result.student, adapters, runs)
    try:
        if file is not None:
            await live.channel.send(text, file=file, allowed_mentions=NO_MENTIONS)
        else:
            await live.channel.send(text, allowed_mentions=NO_MENTIONS)
    except discord.HTTPException as e:
        log.warning("could not post the training report for %s (run %s): %s", result.student, result.run_id, e)


async def _log_only(text: str) -> None:
    """Progress of a run with nowhere to report (a nightly run without a report channel): the debug log."""
    log.debug("training progress: %s", text.replace("\n", " | "))
