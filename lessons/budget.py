"""Daily token budgets for paid teachers: each server may spend so many tokens per UTC day.

A budget is set per model (`models.<name>.daily_token_budget`) or for all paid models
together (`lessons.daily_token_budget`); both are off unless set. Only openai-backend models
count (local models cost nothing per token), only in a server (the CLI has no server), and
both prompt and completion tokens, as each backend reports them in its Usage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from backends.base import Usage
from lessons.engine import LessonError
from settings import Settings
from storage import AsyncStore
from storage import usage as uq


class BudgetExceeded(LessonError):
    """The server has spent its tokens for today; the message says which budget and when it resets."""

    status = "stopped"  # a running lesson stops cleanly: its turns so far stand


class TokenBudget:
    """Counts paid tokens per server and day in SQLite and says when a budget is spent."""

    def __init__(self, store: AsyncStore, settings: Settings, today: Callable[[], str] | None = None):
        self.store = store
        self.settings = settings
        self._today = today

    def today(self) -> str:
        """The UTC day that counts now."""
        return self._today() if self._today is not None else uq.utc_day()

    def paid(self, model: str) -> bool:
        """Whether a model's tokens count against budgets."""
        spec = self.settings.models.get(model)
        return spec is not None and spec.backend == "openai"

    async def record(self, guild_id: int | None, model: str, usage: Usage) -> None:
        """Add one call's tokens to the server's tally (nothing for free models or outside a server)."""
        tokens = usage.prompt_tokens + usage.completion_tokens
        if guild_id is None or not self.paid(model) or tokens <= 0:
            return
        await self.store.call(uq.add_tokens, guild_id, model, self.today(), usage.prompt_tokens, usage.completion_tokens)

    async def check(self, guild_id: int | None, models: Iterable[str]) -> None:
        """Raise BudgetExceeded if the server spent today's budget for any of these models, or in all."""
        if guild_id is None:
            return
        paid = [m for m in dict.fromkeys(models) if self.paid(m)]
        if not paid:
            return
        day = self.today()
        overall = self.settings.lessons.daily_token_budget
        if overall is not None:
            used = await self.store.call(uq.tokens_used, guild_id, day)
            if used >= overall:
                raise BudgetExceeded(_spent("paid models", used, overall))
        for model in paid:
            limit = self.settings.models[model].daily_token_budget
            if limit is None:
                continue
            used = await self.store.call(uq.tokens_used, guild_id, day, model)
            if used >= limit:
                raise BudgetExceeded(_spent(f"'{model}'", used, limit))


def _spent(what: str, used: int, limit: int) -> str:
    return (
        f"this server has used its daily token budget for {what} ({used:,} of {limit:,} tokens today); "
        "it resets at midnight UTC"
    )
