"""The offline sandbox: the real bot in simcord's simulated server, shown in a browser on 127.0.0.1.

Not an extension. `python bot.py` without DISCORD_TOKEN runs it in its own process,
because simcord patches timing functions process-wide. What the host does for the page:
- settles for up to SETTLE_SECONDS, longer than the slowest model call;
- moves the simulated clock with the real one every second (cooldowns, timestamps);
- runs lessons in the channel (the page can't open threads) and adds 👍/👎 to each turn
  (the page can toggle reactions but has no emoji picker);
- gives each persona its own webhook and avatar image (served offline through `assets`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import discord

from plugins.common.context import BotOptions
from settings import Settings

log = logging.getLogger(__name__)

SETTLE_SECONDS = 300.0
SANDBOX_OPTIONS = BotOptions(lesson_threads=False, seed_reactions=True, message_content=True)
AVATAR_HOST = "https://avatars.classroom.invalid"
CLI_HINT = (
    "Without a browser sandbox you can still run everything from a terminal:\n"
    "  classroom lesson --topic \"what a stock is\" --turns 6\n"
    "  classroom lessons; classroom show 1; classroom approve 1; classroom ask \"What is a share?\""
)


def sandbox_options(running: dict[str, Any]) -> BotOptions:
    """Bot options for the sandbox. Lessons and answers run as declared external waits of
    `running["env"]`, so a member's click doesn't wait for a whole lesson to settle; their
    timers then follow the clock pump."""

    def long_wait(work: Awaitable[Any]) -> Awaitable[Any]:
        env = running.get("env")
        return env.external_wait(work, reason="a lesson or an answer is being written") if env else work

    return dataclasses.replace(SANDBOX_OPTIONS, long_wait=long_wait)


@dataclass
class Sandbox:
    """The simulated server around the bot, and the page showing it."""

    env: Any
    preview: Any
    channel: Any
    you: Any
    guest: Any


def model_app_owned_webhooks(patch: Any = None) -> bool:
    """Close two simcord 3.2 gaps about webhooks the bot created, so they behave as on Discord.

    1. Discord lets application-owned webhooks carry buttons (`with_components=true`);
       simcord refuses interactive components on every channel webhook.
    2. Discord posts a webhook message into a thread of the webhook's channel when
       `thread_id` is given; simcord posts it into the parent channel.

    `patch` is a pytest monkeypatch (undone after the test); without one the change lasts
    for the process. Returns False, changing nothing, when simcord's internals moved: the
    bot then falls back to reaction votes and the parent channel.
    """
    try:
        from simcord.http.routes import interactions as routes
    except ImportError:
        return False
    body_of = getattr(routes, "_incoming_webhook_body", None)
    webhook_of = getattr(routes, "_incoming_webhook", None)
    if body_of is None or webhook_of is None:
        return False
    if getattr(body_of, "_classroom_shim", False):
        return True

    def body_allowing_app_components(ctx: Any) -> tuple[dict[str, Any], bool]:
        webhook = webhook_of(ctx)
        if webhook.creator_id != ctx.backend.bot_user.id:
            return body_of(ctx)
        body = dict(ctx.body())
        with_components = str(ctx.params.get("with_components", "")).lower() in {"1", "true"}
        if not with_components:
            body.pop("components", None)
        return body, with_components

    def webhook_in_thread(ctx: Any) -> Any:
        webhook = webhook_of(ctx)
        thread_id = ctx.params.get("thread_id")
        if thread_id is None:
            return webhook
        thread = ctx.backend.get_channel(int(thread_id))
        if not thread.is_thread or thread.parent_id != webhook.channel_id:
            return webhook
        return dataclasses.replace(webhook, channel_id=thread.id)

    body_allowing_app_components._classroom_shim = True  # type: ignore[attr-defined]
    for name, value in (("_incoming_webhook_body", body_allowing_app_components), ("_incoming_webhook", webhook_in_thread)):
        if patch is not None:
            patch.setattr(routes, name, value)
        else:
            setattr(routes, name, value)
    return True


def with_avatars(settings: Settings) -> tuple[Settings, dict[str, tuple[str, bytes]]]:
    """Every persona gets an avatar the offline page can show: a drawn one, under the configured
    URL (which can't be fetched offline) or under a made-up one when none is configured."""
    models, assets = {}, {}
    for name, spec in settings.models.items():
        url = spec.persona.avatar_url
        if url is None:
            url = f"{AVATAR_HOST}/{name}.png"
            spec = spec.model_copy(update={"persona": spec.persona.model_copy(update={"avatar_url": url})})
        assets[url] = (f"{name}.png", avatar_png(spec.display_name))
        models[name] = spec
    return settings.model_copy(update={"models": models}), assets


def avatar_png(name: str, size: int = 128) -> bytes:
    """A round avatar with the name's initial on a colour derived from the name."""
    from PIL import Image, ImageDraw

    digest = hashlib.sha256(name.encode()).digest()
    colour = (64 + digest[0] % 160, 64 + digest[1] % 160, 64 + digest[2] % 160)
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse((0, 0, size - 1, size - 1), fill=colour)
    initial = (name.strip()[:1] or "?").upper()
    draw.text((size / 2, size / 2), initial, fill="white", anchor="mm", font_size=size // 2)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@asynccontextmanager
async def open_sandbox(bot: discord.Client, assets: dict[str, tuple[str, bytes]], *, port: int) -> AsyncIterator[Sandbox]:
    """The bot in a simulated server with a #classroom channel, you (a curator) and a guest, and its page."""
    import simcord

    async with simcord.run(bot, check_errors=False, settle_timeout=SETTLE_SECONDS) as env:
        guild = env.create_guild("Classroom sandbox")
        curators = guild.create_role("Curators", permissions=discord.Permissions(manage_guild=True))
        channel = guild.create_text_channel("classroom", topic="Try /lesson start, /ask and /models")
        you = guild.add_member(env.create_user("you", global_name="You (curator)"), roles=[curators])
        guest = guild.add_member(env.create_user("guest", global_name="Guest"))
        host = guild.create_webhook(channel, "Sandbox")
        await host.send(
            "👋 This is an offline copy of the classroom bot. Type `/lesson start` to watch a teacher teach a "
            "student, vote with 👍/👎 on each turn, and approve the lesson as a curator. `/ask` asks the student; "
            "`/models` lists the models. Switch between *you* (a curator) and *guest* to see both sides. "
            "New posts appear when you act or press Refresh.",
            username="Sandbox",
        )
        async with env.preview(channel, viewers=[you, guest], layout="channel", port=port, assets=assets) as preview:
            yield Sandbox(env, preview, channel, you, guest)


async def pump_clock(env: Any, *, every: float = 1.0) -> None:
    """Move simulated time along with real time, so cooldowns expire and timestamps are now-ish."""
    from simcord import SetupError

    last = time.monotonic()
    while True:
        await asyncio.sleep(every)
        now = time.monotonic()
        try:
            await env.advance_time(now - last)
        except SetupError:
            continue  # a member is acting right now; catch up on the next tick
        except TimeoutError:
            log.warning("the bot was busy for a long time; the simulated clock fell behind")
        last = now


async def run_sandbox(settings: Settings, make_bot: Callable[..., discord.Client], *, port: int = 8765) -> int:
    """Serve the sandbox until the page's End session, Ctrl-C or SIGTERM. Returns the exit code."""
    try:
        import simcord  # noqa: F401
        from simcord.preview import _require_preview_runtime

        _require_preview_runtime()
    except Exception as e:  # ImportError, or simcord's SetupError naming the missing extra
        print(f"The offline sandbox needs simcord's preview: pip install 'simcord[preview]' ({e}).\n\n{CLI_HINT}")
        return 2
    if not model_app_owned_webhooks():
        log.warning("this simcord version changed; turn buttons fall back to reaction votes in the sandbox")
    settings, assets = with_avatars(settings)
    running: dict[str, Any] = {}
    bot = make_bot(settings, options=sandbox_options(running))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with open_sandbox(bot, assets, port=port) as sandbox:
            running["env"] = sandbox.env
            print(
                f"\nClassroom sandbox (offline, no Discord token): open\n\n    {sandbox.preview.url}\n\n"
                "in your browser. Keep the address private: it lets its holder act as you. Ctrl-C stops.\n",
                flush=True,
            )
            pump = asyncio.create_task(pump_clock(sandbox.env))
            closed = asyncio.create_task(sandbox.preview.wait_closed())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task in (pump, closed, stopping):
                task.cancel()
            await asyncio.gather(pump, closed, stopping, return_exceptions=True)
    finally:
        close_app = getattr(bot, "close_app", None)
        if close_app is not None:
            await close_app()
    print("Sandbox closed. Lessons, votes and approvals are in", settings.db_path)
    return 0
