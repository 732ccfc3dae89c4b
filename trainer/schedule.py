"""The nightly schedule: an APScheduler 3 AsyncIOScheduler in the bot process, with a persistent job store.

The job only *launches* training (a subprocess) and awaits it, so the bot keeps answering.
With a SQLite job store, coalescing and a long misfire grace time, a night missed while the
bot was down runs once at start-up, not once per missed night.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from settings import ConfigError, TrainingSettings

log = logging.getLogger(__name__)

JOB_ID = "nightly-training"
MISFIRE_GRACE_SECONDS = 20 * 3600  # a night missed by less than this still runs, once, when the bot is back

NightlyRunner = Callable[[], Awaitable[object]]
# APScheduler persists jobs by reference to an importable function, so the live runner is
# registered here by the scheduler's owner; the schedule itself lives in the job store.
_runner: NightlyRunner | None = None


async def run_nightly() -> None:
    """The persisted job's target: hands over to the runner registered by `start_scheduler`."""
    if _runner is None:
        log.warning("nightly training fired but no runner is registered; skipping")
        return
    await _runner()


def trigger_for(cfg: TrainingSettings) -> CronTrigger:
    """A cron trigger from 'HH:MM' and a timezone name; ConfigError if either is invalid."""
    try:
        hour, minute = (int(x) for x in cfg.schedule.split(":"))
        if not (0 <= hour < 24 and 0 <= minute < 60):
            raise ValueError
    except ValueError:
        raise ConfigError(f"training.schedule: '{cfg.schedule}' is not a time like 03:00") from None
    try:
        return CronTrigger(hour=hour, minute=minute, timezone=cfg.timezone)
    except Exception as e:  # unknown timezone names raise several exception types across tz libraries
        raise ConfigError(f"training.timezone: '{cfg.timezone}' is not a known timezone ({e})") from None


def start_scheduler(cfg: TrainingSettings, jobs_db: Path, runner: NightlyRunner) -> AsyncIOScheduler:
    """Start the scheduler on the running loop with the nightly job (created or updated in the store)."""
    global _runner
    _runner = runner
    jobs_db.parent.mkdir(parents=True, exist_ok=True)
    scheduler = AsyncIOScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{jobs_db}")},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE_SECONDS},
    )
    scheduler.start(paused=True)
    trigger = trigger_for(cfg)
    existing = scheduler.get_job(JOB_ID)
    if existing is None:
        scheduler.add_job(run_nightly, trigger, id=JOB_ID, name="train students on approved lessons")
    elif str(existing.trigger) != str(trigger):
        # a changed schedule in the config wins over the stored one; the missed-run bookkeeping stays
        scheduler.reschedule_job(JOB_ID, trigger=trigger)
    scheduler.resume()
    job = scheduler.get_job(JOB_ID)
    log.info("nightly training scheduled; next run %s", job.next_run_time if job else "?")
    return scheduler


def stop_scheduler(scheduler: AsyncIOScheduler) -> None:
    """Shut the scheduler down without waiting for a running job (its subprocess is killed by its owner).

    AsyncIOScheduler completes the shutdown on the loop's next iteration.
    """
    global _runner
    if scheduler.running:
        scheduler.shutdown(wait=False)
    _runner = None
