"""The nightly schedule with a real APScheduler and a real SQLite job store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from settings import ConfigError, TrainingSettings
from trainer import schedule


def cfg_at(when: datetime) -> TrainingSettings:
    return TrainingSettings(schedule=when.strftime("%H:%M"), timezone="UTC")


async def wait_for(predicate, seconds: float = 10.0) -> bool:
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def test_job_fires_and_its_schedule_survives_a_restart(tmp_path):
    calls = []

    async def runner():
        calls.append(datetime.now(UTC))

    store = tmp_path / "jobs.sqlite"
    s = schedule.start_scheduler(TrainingSettings(schedule="03:00"), store, runner)
    job = s.get_job(schedule.JOB_ID)
    assert job.next_run_time.hour == 3 and job.next_run_time.minute == 0
    s.modify_job(schedule.JOB_ID, next_run_time=datetime.now(UTC) + timedelta(milliseconds=300))
    assert await wait_for(lambda: len(calls) == 1)
    schedule.stop_scheduler(s)
    await asyncio.sleep(0.2)

    # a new scheduler on the same store finds the job and its next night
    s2 = schedule.start_scheduler(TrainingSettings(schedule="03:00"), store, runner)
    try:
        again = s2.get_job(schedule.JOB_ID)
        assert again is not None and again.next_run_time > datetime.now(UTC)
        assert len(s2.get_jobs()) == 1
    finally:
        schedule.stop_scheduler(s2)


async def test_missed_nights_run_once_at_startup(tmp_path):
    calls = []

    async def runner():
        calls.append(1)

    store = tmp_path / "jobs.sqlite"
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    cfg = cfg_at(two_hours_ago)
    schedule.stop_scheduler(schedule.start_scheduler(cfg, store, runner))
    await asyncio.sleep(0.2)  # AsyncIOScheduler shuts down on its next loop iteration
    # the bot was down for four nights: rewrite the stored next run to three days before the last missed one
    offline = AsyncIOScheduler(jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{store}")})
    offline.start(paused=True)
    offline.modify_job(schedule.JOB_ID, next_run_time=two_hours_ago.replace(second=0, microsecond=0) - timedelta(days=3))
    offline.shutdown(wait=False)
    await asyncio.sleep(0.2)
    assert calls == []

    s2 = schedule.start_scheduler(cfg, store, runner)
    try:
        assert await wait_for(lambda: len(calls) >= 1)
        await asyncio.sleep(1.0)
        assert calls == [1]  # coalesced: once, not four times
        assert s2.get_job(schedule.JOB_ID).next_run_time > datetime.now(UTC)
    finally:
        schedule.stop_scheduler(s2)


def test_changed_schedule_in_config_replaces_the_stored_one(tmp_path):
    async def runner():
        return None

    async def go():
        store = tmp_path / "jobs.sqlite"
        schedule.stop_scheduler(schedule.start_scheduler(TrainingSettings(schedule="03:00"), store, runner))
        s = schedule.start_scheduler(TrainingSettings(schedule="04:30"), store, runner)
        job = s.get_job(schedule.JOB_ID)
        schedule.stop_scheduler(s)
        return job.next_run_time

    nxt = asyncio.run(go())
    assert (nxt.hour, nxt.minute) == (4, 30)


@pytest.mark.parametrize(("sched", "tz", "key"), [("25:00", "UTC", "training.schedule"), ("03:00", "Mars/Base", "training.timezone")])
def test_bad_schedule_config_is_a_clear_error(sched, tz, key):
    with pytest.raises(ConfigError, match=key):
        schedule.trigger_for(TrainingSettings(schedule=sched, timezone=tz))
