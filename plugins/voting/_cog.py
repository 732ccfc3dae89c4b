"""Reactions count as votes: 👍/👎 on a turn or a lesson summary go to the same row a button click uses."""

from __future__ import annotations

import logging

import discord
from discord.ext import commands

from plugins.common.context import NO_MENTIONS, app_of
from plugins.common.summary import card_embed, read_card
from plugins.voting import ballots
from plugins.voting.buttons import summary_view, vote_view
from storage import discord as dq
from storage import votes as v

log = logging.getLogger(__name__)


class ReactionVotes(commands.Cog):
    """Turns reaction events into votes and keeps the button counts in step."""

    def __init__(self, bot: commands.Bot):
        self.bot = bot
        self._webhooks: dict[int, discord.Webhook] = {}

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        """A member reacted 👍 or 👎: set their vote."""
        if payload.member is not None and payload.member.bot:
            return
        await self._react(payload, added=True)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        """A member took a 👍 or 👎 back: clear that vote if it is still theirs."""
        await self._react(payload, added=False)

    async def _react(self, payload: discord.RawReactionActionEvent, *, added: bool) -> None:
        value = ballots.EMOJI_VALUES.get(str(payload.emoji))
        me = self.bot.user
        if value is None or payload.guild_id is None or (me is not None and payload.user_id == me.id):
            return
        app = app_of(self.bot)
        threshold = app.settings.lessons.approval_threshold
        target = await app.store.call(
            ballots.react, payload.message_id, str(payload.user_id), value, added, threshold
        )
        if target is not None:
            await self.refresh_buttons(*target)

    async def refresh_buttons(self, target_type: str, target_id: int) -> None:
        """Redraw the counts on the message carrying a target's buttons (best effort: the vote is stored)."""
        app = app_of(self.bot)
        where = await app.store.call(dq.button_message, target_type, target_id)
        if where is None:
            return
        try:
            channel = self.bot.get_channel(where["channel_id"]) or await self.bot.fetch_channel(where["channel_id"])
            if not isinstance(channel, discord.TextChannel | discord.Thread):
                return
            message = await channel.fetch_message(where["message_id"])
            if not message.components:
                return  # posted without buttons (Discord refused them): the reactions are the count
            if target_type == "lesson":
                card = await app.store.call(read_card, target_id)
                if card is None:
                    return
                await message.edit(embed=card_embed(app, card), view=summary_view(card), allowed_mentions=NO_MENTIONS)
                return
            view = vote_view(target_type, target_id, await app.store.call(v.tally, target_type, target_id))
            if message.webhook_id is None:
                await message.edit(view=view, allowed_mentions=NO_MENTIONS)
                return
            webhook = await self._webhook(message.webhook_id)
            thread = channel if isinstance(channel, discord.Thread) else discord.utils.MISSING
            await webhook.edit_message(message.id, view=view, thread=thread, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as e:
            log.warning("could not refresh vote counts on %s %s: %s", target_type, target_id, e)

    async def _webhook(self, webhook_id: int) -> discord.Webhook:
        if webhook_id not in self._webhooks:
            self._webhooks[webhook_id] = await self.bot.fetch_webhook(webhook_id)
        return self._webhooks[webhook_id]
