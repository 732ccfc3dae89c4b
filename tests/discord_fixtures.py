"""Arrange code shared by the Discord tests: a server with members, the real bot, scripted teacher and student.

A test module makes the fixtures visible by assignment (an import would trip ruff's F811 on
every test that takes one as a parameter):
    from tests import discord_fixtures as fixtures
    classroom = fixtures.classroom  # and bot_factory, bot_options, classroom_settings, ...
and marks itself with `pytestmark = pytest.mark.simcord(settle_timeout=fixtures.SETTLE)`: the
bot's sleeps at least that long are virtual, driven by `env.advance_time`; shorter ones are real.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord
import pytest
import pytest_asyncio
import simcord
from sqlite_utils import Database

from backends.registry import ModelRegistry
from bot import ClassroomBot, create_bot
from plugins.common.context import BotOptions
from plugins.sandbox import model_app_owned_webhooks
from settings import ModelSpec, Settings
from storage import open_db
from tests.scripted import ScriptedBackend

SETTLE = 0.5
"""Real seconds each simulated action may take to settle. 0.1 flaked on a busy 2-core machine (starting
a lesson is ~25 store and REST round trips); the bot's own waits (a second between edits) stay virtual."""
PLAN = "1. What a share is\n2. How prices move\n3. Dividends"
AVATARS = {"prof": "https://example.com/avatars/prof.png", "kid": "https://example.com/avatars/kid.png"}
PERSONAS = {"prof": "Professor Prof", "kid": "Kid the Student"}
STUDENT_ANSWER = "Is it like owning a slice of a company?"


def teacher_reply(messages: list[dict[str, str]]) -> str:
    """A scripted teacher: plans three points, teaches each, confirms the student's answer."""
    last = messages[-1]["content"]
    if "key points" in last:
        return PLAN
    if last.startswith("Teach me this point:"):
        return f"Here is the point: {last.split(':', 1)[1].splitlines()[0].strip()}. Do you follow?"
    return "Yes, that's right. The key fact stands."


def student_reply(messages: list[dict[str, str]]) -> str:
    """A scripted student: always the same curious answer."""
    return STUDENT_ANSWER


def make_settings(home: Path, *, lessons: dict[str, Any] | None = None, discord: dict[str, Any] | None = None) -> Settings:
    """Settings for a scripted teacher `prof` and a trainable student `kid` with personas and avatars."""
    models = {name: make_spec(name) for name in ("prof", "kid")}
    return Settings(
        home=home,
        models=models,
        lessons={"default_teacher": "prof", "default_student": "kid", "max_turns": 9, **(lessons or {})},
        discord={"curator_role": "Curators", "ask_cooldown_seconds": 20, **(discord or {})},
    )


def make_spec(name: str) -> ModelSpec:
    """A scripted model's spec (served by a ScriptedBackend, never loaded)."""
    return ModelSpec(
        name=name,
        backend="local",
        path="scripted",
        trainable=name == "kid",
        persona={"display_name": PERSONAS.get(name, name), "avatar_url": AVATARS.get(name)},
    )


class TimedScript(ScriptedBackend):
    """A scripted model that streams a word every `word_seconds` of simulated time and notes what it saw.

    `observe` (set by the classroom fixture) counts the bot's REST calls so far; `seen_at_call`
    holds that count at each call and `words` the (time, count) at each streamed word, so
    tests can order model calls against Discord requests.
    """

    def __init__(self, name: str, replies: Any, word_seconds: float = 0.0):
        super().__init__(name, replies)
        self.word_seconds = word_seconds
        self.piece_chars: int | None = None  # stream fixed-size pieces instead of words (long replies stay fast)
        self.observe: Callable[[], int] = lambda: 0
        self.seen_at_call: list[int] = []
        self.words: list[tuple[float, int]] = []

    async def chat(self, messages: Any, params: Any = None, usage: Any = None) -> str:
        self.seen_at_call.append(self.observe())
        return await super().chat(messages, params, usage)

    async def stream(self, messages: Any, params: Any = None, usage: Any = None) -> AsyncIterator[str]:
        text = await self.chat(messages, params, usage)
        if self.piece_chars:
            pieces = [text[i : i + self.piece_chars] for i in range(0, len(text), self.piece_chars)]
        else:
            pieces = [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]
        for piece in pieces:
            await asyncio.sleep(self.word_seconds)
            self.words.append((asyncio.get_running_loop().time(), self.observe()))
            yield piece


@dataclass
class BotFactory:
    """Builds fresh bots over the same settings and scripted models, and closes their apps afterwards."""

    settings: Settings
    backends: dict[str, ScriptedBackend]
    options: BotOptions
    made: list[ClassroomBot] = field(default_factory=list)

    def __call__(self) -> ClassroomBot:
        registry = ModelRegistry(self.settings.models, cache_dir=self.settings.cache_dir, backends=self.backends)
        bot = create_bot(self.settings, models=registry, options=self.options)
        self.made.append(bot)
        return bot


@dataclass
class Classroom:
    """One simulated server with the bot, its members and the scripted models."""

    env: simcord.Env
    factory: BotFactory
    guild: simcord.GuildHandle
    channel: simcord.ChannelHandle
    alice: simcord.MemberActor
    bob: simcord.MemberActor
    carol: simcord.MemberActor  # a curator, by role
    teacher: TimedScript  # None when the test runs real models
    student: TimedScript

    @property
    def settings(self) -> Settings:
        return self.factory.settings

    async def restart(self) -> ClassroomBot:
        """Restart the bot process: a fresh bot over the same database and server."""
        bot = self.factory()
        await self.env.restart_bot(bot)
        return bot

    async def start_lesson(self, member: simcord.MemberActor | None = None, **options: Any) -> simcord.InteractionResult:
        """A member runs /lesson start (topic defaults to stocks)."""
        options.setdefault("topic", "what a stock is")
        return await (member or self.alice).slash(self.channel, "lesson start", **options)

    async def run_out(self, seconds: float = 120, step: float = 1.0) -> None:
        """Let simulated time pass, a step at a time, until no lesson is running (or `seconds` passed).

        Small steps: each advance must settle within the marker's settle_timeout of real time.
        """
        for _ in range(int(seconds / step)):
            await self.env.advance_time(step)
            if not self.live_lessons():
                return
        raise AssertionError(f"lessons still running after {seconds} simulated seconds: {self.live_lessons()}")

    def live_lessons(self) -> list[int]:
        """Ids of lessons the current bot is running."""
        cog = self.env.bot.get_cog("LessonsCog")
        return sorted(cog.live) if cog is not None else []

    def lesson_thread(self) -> simcord.ChannelHandle:
        """The newest thread under the channel."""
        threads = self.channel.threads
        assert threads, "no lesson thread was opened"
        return threads[-1]

    def messages(self, channel: simcord.ChannelHandle | None = None) -> list[discord.Message]:
        """Every message where lessons post: the newest lesson thread if there is one, else the channel."""
        if channel is None:
            channel = self.channel.threads[-1] if self.channel.threads else self.channel
        return channel.history()

    def webhook_messages(self, channel: simcord.ChannelHandle | None = None) -> list[discord.Message]:
        """Messages posted through persona webhooks."""
        return [m for m in self.messages(channel) if m.webhook_id is not None]

    def turn_messages(self, channel: simcord.ChannelHandle | None = None) -> list[discord.Message]:
        """Persona messages carrying vote buttons, in order."""
        return [m for m in self.webhook_messages(channel) if _custom_ids(m)]

    def summary(self, channel: simcord.ChannelHandle | None = None) -> discord.Message:
        """The last lesson summary message."""
        found = [m for m in self.messages(channel) if any("decide" in c for c in _custom_ids(m))]
        assert found, "no lesson summary was posted"
        return found[-1]

    def requests(self, method: str | None = None, path_part: str = "") -> list[simcord.HttpLogEntry]:
        """REST calls the bot made, optionally filtered."""
        return [
            r for r in self.env.http_requests if (method is None or r.method == method) and path_part in r.path
        ]

    @contextmanager
    def db(self) -> Iterator[Database]:
        """The SQLite database the CLI reads, opened on its own connection."""
        db = open_db(self.settings.db_path)
        try:
            yield db
        finally:
            db.conn.close()


def _custom_ids(message: discord.Message) -> list[str]:
    ids = []
    for row in message.components:
        for child in getattr(row, "children", []):
            if getattr(child, "custom_id", None):
                ids.append(child.custom_id)
    return ids


def reply_to(result: simcord.InteractionResult) -> simcord.ResponseMessage:
    """What the member was told last: the newest followup, else the (deferred, then edited) response."""
    message = result.followups[-1] if result.followups else result.response
    assert message is not None, "the bot never answered"
    return message


def button_labels(message: discord.Message) -> dict[str, str]:
    """{custom_id: label} of a message's buttons."""
    labels = {}
    for row in message.components:
        for child in getattr(row, "children", []):
            if getattr(child, "custom_id", None):
                labels[child.custom_id] = child.label
    return labels


@pytest.fixture
def scripted_models() -> dict[str, TimedScript]:
    """The scripted teacher `prof` and student `kid`; tests may swap their replies."""
    return {"prof": TimedScript("prof", teacher_reply), "kid": TimedScript("kid", student_reply)}


@pytest.fixture
def classroom_settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings in a fresh home. Override knobs with
    `@pytest.mark.parametrize("classroom_settings", [{"lessons": {...}, "discord": {...}}], indirect=True)`."""
    return make_settings(tmp_path / "home", **getattr(request, "param", {}))


@pytest.fixture
def bot_options(request: pytest.FixtureRequest) -> BotOptions:
    """Bot options; override with `@pytest.mark.parametrize("bot_options", [BotOptions(...)], indirect=True)`."""
    return getattr(request, "param", BotOptions())


@pytest.fixture
def bot_factory(
    classroom_settings: Settings, scripted_models: dict[str, ScriptedBackend], bot_options: BotOptions
) -> BotFactory:
    """Makes bots for this test (the first one and any restarts)."""
    return BotFactory(classroom_settings, scripted_models, bot_options)


@pytest_asyncio.fixture
async def simcord_bot(bot_factory: BotFactory, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The bot simcord_env runs; every bot made in the test has its store and models closed afterwards."""
    model_app_owned_webhooks(monkeypatch)
    yield bot_factory()
    for bot in bot_factory.made:
        await bot.close_app()


@pytest_asyncio.fixture
async def classroom(simcord_env: simcord.Env, bot_factory: BotFactory, scripted_models: dict[str, TimedScript]) -> Classroom:
    """A server with a #classroom channel, members alice and bob, and carol who holds the Curators role."""
    env = simcord_env
    guild = env.create_guild("School")
    channel = guild.create_text_channel("classroom")
    curators = guild.create_role("Curators")
    alice = guild.add_member(env.create_user("alice"))
    bob = guild.add_member(env.create_user("bob"))
    carol = guild.add_member(env.create_user("carol"), roles=[curators])
    for backend in scripted_models.values():
        backend.observe = lambda: len(env.http_requests)
    return Classroom(
        env=env,
        factory=bot_factory,
        guild=guild,
        channel=channel,
        alice=alice,
        bob=bob,
        carol=carol,
        teacher=scripted_models.get("prof"),
        student=scripted_models.get("kid"),
    )
