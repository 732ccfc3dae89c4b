"""Failing models don't take the bot down: each fault ends a lesson cleanly (or is retried), with a readable
reason in the thread and in lessons.reason, and the bot keeps serving other commands right after.

The paid teacher `prof` talks to tests/fakeopenai.py over real HTTP; the student `kid` is scripted. A local
model that raises (out of memory) runs a tiny random model whose generation step is made to raise.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

import pytest

import backends.openai_backend  # noqa: F401  (imported up front: the bot's first import of openai takes seconds)
from plugins.common.context import BotOptions
from settings import ModelSpec
from storage import lessons as q
from tests import discord_fixtures as fixtures
from tests.discord_fixtures import reply_to
from tests.fakeopenai import FakeOpenAI, Fault, refused_url

pytestmark = pytest.mark.simcord(settle_timeout=fixtures.SETTLE)

SOURCE = ("shares.md", b"# Shares\nA share is a slice of a company. Its price moves with demand.\n")


@dataclass(frozen=True)
class Case:
    """One injected fault: what the endpoint does, and how the lesson must end."""

    faults: tuple[str | Fault, ...]
    status: str
    reason: str | None = None  # part of lessons.reason, also shown in the thread's summary
    plan: bool = False  # no source document: the fault hits the (non-streaming) planning call
    refused: bool = False  # nothing listens at the endpoint
    timeout: float = 30.0  # the teacher's request timeout, in simulated seconds
    logged: str | None = None  # part of a warning the backend logs (the retry it makes)


TIMEOUT = Fault("timeout", seconds=3600)
CASES = {
    "connection refused": Case((), "failed", "endpoint unreachable after 2 attempts (connection refused)", refused=True),
    "timeout, retried": Case((TIMEOUT,), "finished", timeout=5),
    "timeouts": Case((TIMEOUT, TIMEOUT), "failed", "timed out after 2 attempts (no answer within 5 s)", timeout=5),
    "429 with Retry-After, retried": Case((Fault("429", retry_after=0.2),), "finished",
                                          logged="rate limited (HTTP 429); retry 1 of 1 in 0.2 s"),
    "429 twice": Case((Fault("429", retry_after=0.2),) * 2, "failed", "rate limited after 2 attempts (HTTP 429)"),
    "500, retried": Case(("500",), "finished"),
    "500 twice": Case(("500", "500"), "failed", "server error after 2 attempts (HTTP 500)"),
    "500 twice, planning": Case(("500", "500"), "failed", "server error after 2 attempts (HTTP 500)", plan=True),
    "malformed JSON, planning": Case(("malformed",), "failed", "response is not valid JSON", plan=True),
    "malformed JSON, streaming": Case(("malformed",), "failed", "not valid JSON"),
    "stream cut mid-token": Case(("cut",), "failed", "stream broke after "),
    "connection dropped twice": Case(("drop", "drop"), "failed", "connection failed after 2 attempts"),
    "empty completion, retried": Case(("empty",), "finished"),
    "empty completions": Case(("empty",) * 3, "failed", "teacher 'prof' gave no usable reply (empty or repeating)"),
    "200 KB completion": Case(("huge",), "finished"),
}


def paid_teacher(settings, base_url: str, timeout: float):
    prof = ModelSpec(name="prof", backend="openai", model="fake-model", base_url=base_url, max_retries=1, timeout=timeout,
                     persona={"display_name": fixtures.PERSONAS["prof"]})
    return settings.model_copy(update={"models": {**settings.models, "prof": prof}})


LINES = [
    "A share is a slice of a company. Do you follow?",
    "Yes, that's right: owning shares means owning part of the firm.",
    "Prices move when more people want to buy than to sell. Clear so far?",
    "Exactly. Demand pushes the price up, selling pushes it down.",
]


def numbered_teacher():
    """A teacher whose every reply differs (so a retried turn is never taken for an echo)."""
    n = itertools.count(1)

    def reply(messages):
        if "key points" in messages[-1]["content"]:
            return fixtures.PLAN
        return LINES[next(n) % len(LINES)]

    return reply


async def restart_with_external_models(classroom, backends, settings=None) -> None:
    """Restart the bot over these backends. Lessons and answers run as declared external waits: the simulated
    server doesn't wait for their real HTTP round trips, and their timers (request timeouts, edit intervals)
    follow the simulated clock, which `until` drives."""
    classroom.factory.backends = backends
    if settings is not None:
        classroom.factory.settings = settings
    classroom.factory.options = BotOptions(
        long_wait=lambda work: classroom.env.external_wait(work, reason="a model is answering over HTTP"))
    await classroom.restart()


SERVER: list[FakeOpenAI] = []  # the fake server of the running test, if any


async def until(classroom, done, *, real_seconds: float = 60) -> None:
    """Let real time pass for the I/O, and advance simulated time a quarter second whenever the fake server
    isn't answering, until done(). Request timeouts are simulated seconds, so they fire only at hung faults."""
    deadline = time.perf_counter() + real_seconds
    while not done():
        assert time.perf_counter() < deadline, "the bot never got there"
        await asyncio.to_thread(time.sleep, 0.02)
        if not (SERVER and SERVER[0].answering):
            await classroom.env.advance_time(0.25)


async def still_serving(classroom) -> None:
    """Right after the fault, other commands answer: /lesson list and /ask."""
    listed = reply_to(await classroom.bob.slash(classroom.channel, "lesson list"))
    assert listed.embeds and "#1" in listed.embeds[0].description
    await classroom.carol.slash(classroom.channel, "ask", question="What is a share?")
    await until(classroom, lambda: any(m.content == fixtures.STUDENT_ANSWER for m in classroom.channel.history()))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_a_failing_teacher_ends_or_retries_the_lesson_cleanly(classroom, fake_openai, case, monkeypatch, caplog):
    monkeypatch.setattr(f"{__name__}.SERVER", [fake_openai])
    fake_openai.set_reply(numbered_teacher())
    fake_openai.enqueue(*case.faults)
    url = refused_url() if case.refused else fake_openai.base_url
    await restart_with_external_models(classroom, {"kid": classroom.student},
                                       paid_teacher(classroom.settings, url, case.timeout))

    source = {} if case.plan else {"source": SOURCE}
    started = reply_to(await classroom.start_lesson(turns=3, **source))
    assert "started" in started.content
    await until(classroom, lambda: not classroom.live_lessons())

    with classroom.db() as db:
        lesson = q.get_lesson(db, 1)
        turns = q.turns(db, 1)
    assert fake_openai.pending_faults() == 0
    if case.logged:
        assert case.logged in caplog.text
    assert lesson["status"] == case.status, lesson["reason"]
    card = classroom.summary().embeds[0].description
    if case.status == "finished":
        assert [t["role"] for t in turns] == ["teacher", "student", "teacher"]
        assert all(len(t["content"]) <= 100_000 for t in turns)
    else:
        assert case.reason in lesson["reason"]
        assert lesson["reason"].startswith("model 'prof' at ") or lesson["reason"].startswith("teacher 'prof'")
        assert "Failed" in card and case.reason[:60] in " ".join(card.split())
    await still_serving(classroom)


# ---- a local model that raises


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    from tests.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


async def test_a_local_teacher_running_out_of_memory_fails_the_lesson_with_the_reason(classroom, tiny_dir, monkeypatch):
    from backends.local import LocalBackend, LocalModelHost
    from backends.local.batching import DecodeBatch

    host = LocalModelHost(tiny_dir, device="cpu")
    await host.ensure_loaded()  # loading is slow native work; the fault is in generation
    teacher = LocalBackend(ModelSpec(name="prof", backend="local", path=tiny_dir), host, owns_host=True)
    calls = []

    def out_of_memory(self):  # the decode step after the prompt's prefill: where a long reply runs out
        calls.append(len(self))
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)")

    monkeypatch.setattr(DecodeBatch, "step", out_of_memory)
    await restart_with_external_models(classroom, {"prof": teacher, "kid": classroom.student})
    await classroom.start_lesson(turns=3, source=SOURCE)
    await until(classroom, lambda: not classroom.live_lessons())

    with classroom.db() as db:
        lesson = q.get_lesson(db, 1)
    assert calls, "generation was reached"
    assert lesson["status"] == "failed"
    assert lesson["reason"] == ("model 'prof': ran out of memory on cpu (CUDA out of memory. Tried to allocate 2.00 GiB "
                                "(GPU 0; 7.79 GiB total capacity)); try a smaller max_new_tokens, a shorter "
                                "conversation or a smaller dtype")
    assert "ran out of memory" in classroom.summary().embeds[0].description
    await still_serving(classroom)
    await teacher.aclose()
