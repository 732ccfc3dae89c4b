"""Teacher and student post as separate participants: one channel webhook per persona.

Without Manage Webhooks (or when a channel is full of webhooks) a persona falls back to
bot messages whose embed author carries the persona's name and avatar. Either way a
poster sends and edits text with no mentions allowed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import discord

from backends.registry import ModelRegistry
from plugins.common.context import NO_MENTIONS, app_of

log = logging.getLogger(__name__)

WEBHOOK_PREFIX = "classroom"
_FORBIDDEN_IN_NAMES = re.compile(r"discord|clyde", re.IGNORECASE)


@dataclass(frozen=True)
class Persona:
    """How a model appears in Discord."""

    model: str
    name: str
    avatar_url: str | None


class Poster(Protocol):
    """Posts and edits one persona's messages in one place."""

    persona: Persona
    limit: int
    buttons_work: bool

    async def send(self, text: str, view: discord.ui.View | None = None) -> discord.Message:
        """Post a new message."""
        ...

    async def edit(self, message: discord.Message, text: str, view: discord.ui.View | None = None) -> discord.Message:
        """Replace a message's text (and buttons, when `view` is given)."""
        ...


Destination = discord.TextChannel | discord.Thread


def persona_of(models: ModelRegistry, name: str) -> Persona:
    """The persona configured for model `name`."""
    spec = models.spec(name)
    return Persona(model=name, name=safe_username(spec.display_name), avatar_url=spec.persona.avatar_url)


def safe_username(name: str) -> str:
    """A webhook username Discord accepts: 1-80 characters, not containing 'discord' or 'clyde'."""
    cleaned = _FORBIDDEN_IN_NAMES.sub(lambda m: m.group(0)[0] + "\u200b" + m.group(0)[1:], name).strip()
    if cleaned.lower() in ("everyone", "here") or not cleaned:
        cleaned = f"{cleaned or 'model'} (AI)"
    return cleaned[:80]


class WebhookPoster:
    """A persona speaking through a webhook the bot owns (into a thread of its channel if given)."""

    limit = 2000

    def __init__(
        self,
        webhook: discord.Webhook,
        persona: Persona,
        thread: discord.Thread | None,
        renew: Callable[[], Awaitable[discord.Webhook]] | None = None,
    ):
        self.webhook = webhook
        self.persona = persona
        self.thread = thread
        self.buttons_work = True
        self._renew = renew

    async def send(self, text: str, view: discord.ui.View | None = None) -> discord.Message:
        """Post as the persona (through a new webhook if an admin deleted ours)."""
        try:
            return await self._send(text, view)
        except discord.NotFound:
            if self._renew is None:
                raise
            log.info("webhook %s was deleted; making a new one for %s", self.webhook.id, self.persona.model)
            self.webhook = await self._renew()
            return await self._send(text, view)

    async def _send(self, text: str, view: discord.ui.View | None) -> discord.Message:
        kwargs: dict = {"content": text, "username": self.persona.name, "wait": True, "allowed_mentions": NO_MENTIONS}
        if self.persona.avatar_url:
            kwargs["avatar_url"] = self.persona.avatar_url
        if self.thread is not None:
            kwargs["thread"] = self.thread
        if view is not None and self.buttons_work:
            try:
                return await self.webhook.send(view=view, **kwargs)
            except discord.HTTPException as e:
                if e.status != 400:
                    raise
                # Only webhooks owned by the application may carry buttons; reactions carry the votes then.
                log.warning("webhook %s refused buttons (%s); voting on its messages is by reaction", self.webhook.id, e)
                self.buttons_work = False
        return await self.webhook.send(**kwargs)

    async def edit(self, message: discord.Message, text: str, view: discord.ui.View | None = None) -> discord.Message:
        """Edit a message this webhook posted."""
        kwargs: dict = {"content": text, "allowed_mentions": NO_MENTIONS}
        if view is not None and self.buttons_work:
            kwargs["view"] = view
        if self.thread is not None:
            kwargs["thread"] = self.thread
        return await self.webhook.edit_message(message.id, **kwargs)


class EmbedPoster:
    """A persona shown as the embed author of the bot's own messages (no webhook permission)."""

    limit = 4000
    buttons_work = True

    def __init__(self, destination: Destination, persona: Persona):
        self.destination = destination
        self.persona = persona

    def _embed(self, text: str) -> discord.Embed:
        embed = discord.Embed(description=text)
        embed.set_author(name=self.persona.name, icon_url=self.persona.avatar_url)
        return embed

    async def send(self, text: str, view: discord.ui.View | None = None) -> discord.Message:
        """Post a bot message with the persona as embed author."""
        if view is None:
            return await self.destination.send(embed=self._embed(text), allowed_mentions=NO_MENTIONS)
        return await self.destination.send(embed=self._embed(text), view=view, allowed_mentions=NO_MENTIONS)

    async def edit(self, message: discord.Message, text: str, view: discord.ui.View | None = None) -> discord.Message:
        """Edit one of the bot's persona messages."""
        if view is None:
            return await message.edit(embed=self._embed(text), allowed_mentions=NO_MENTIONS)
        return await message.edit(embed=self._embed(text), view=view, allowed_mentions=NO_MENTIONS)


class PersonaDirectory:
    """Finds or creates each persona's webhook per channel, and remembers them while the bot runs.

    The webhooks themselves are the state (Discord keeps them); this cache only saves a
    lookup per message. `fallback_reason` says why the last poster had to be an embed.
    """

    def __init__(self, client: discord.Client, models: ModelRegistry):
        self.client = client
        self.models = models
        self._webhooks: dict[tuple[int, str], discord.Webhook] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    async def poster(self, destination: Destination, model: str) -> tuple[Poster, str | None]:
        """A poster for `model` in `destination`, and why it is an embed fallback (None when a webhook)."""
        persona = persona_of(self.models, model)
        channel = destination.parent if isinstance(destination, discord.Thread) else destination
        thread = destination if isinstance(destination, discord.Thread) else None
        if not isinstance(channel, discord.TextChannel):
            return EmbedPoster(destination, persona), "this kind of channel has no webhooks"
        me = channel.guild.me
        if me is None or not channel.permissions_for(me).manage_webhooks:
            return EmbedPoster(destination, persona), "I lack the Manage Webhooks permission in this channel"
        try:
            webhook = await self._webhook(channel, model)
        except discord.Forbidden:
            return EmbedPoster(destination, persona), "I lack the Manage Webhooks permission in this channel"
        except discord.HTTPException as e:
            log.warning("could not get a webhook for %s in channel %s: %s", model, channel.id, e)
            return EmbedPoster(destination, persona), f"Discord refused a new webhook here ({e.text or e.status})"
        return WebhookPoster(webhook, persona, thread, renew=lambda: self._renew(channel, model)), None

    async def _renew(self, channel: discord.TextChannel, model: str) -> discord.Webhook:
        """Our webhook was deleted under us: forget it and find or make another."""
        self._webhooks.pop((channel.id, model), None)
        return await self._webhook(channel, model)

    async def _webhook(self, channel: discord.TextChannel, model: str) -> discord.Webhook:
        key = (channel.id, model)
        if key in self._webhooks:
            return self._webhooks[key]
        async with self._locks.setdefault(channel.id, asyncio.Lock()):
            if key in self._webhooks:
                return self._webhooks[key]
            name = webhook_name(model)
            me = self.client.user
            found = None
            for hook in await channel.webhooks():
                if hook.name == name and hook.token and hook.user is not None and me is not None and hook.user.id == me.id:
                    found = hook
                    break
            if found is None:
                found = await channel.create_webhook(name=name, reason=f"classroom: lets {model} post as itself")
            self._webhooks[key] = found
            return found


def webhook_name(model: str) -> str:
    """The name of the webhook a persona posts through (its messages show the persona's name instead)."""
    return safe_username(f"{WEBHOOK_PREFIX} {model}")


def personas_of(client: discord.Client) -> PersonaDirectory:
    """The bot's one PersonaDirectory, shared by every extension so each webhook is looked up once."""
    directory = getattr(client, "_classroom_personas", None)
    if not isinstance(directory, PersonaDirectory):
        directory = PersonaDirectory(client, app_of(client).models)
        client._classroom_personas = directory  # type: ignore[attr-defined]
    return directory
