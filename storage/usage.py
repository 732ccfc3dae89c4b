"""Tokens spent on paid models, per server, per model, per UTC day (for daily token budgets)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlite_utils import Database


def utc_day(when: datetime | None = None) -> str:
    """The UTC calendar day, YYYY-MM-DD, that budgets count in."""
    return (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%d")


def add_tokens(db: Database, guild_id: int, model: str, day: str, prompt_tokens: int, completion_tokens: int) -> None:
    """Add one call's tokens to the server's tally for that model and day."""
    db.execute(
        "INSERT INTO token_usage (guild_id, day, model, prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (guild_id, day, model) DO UPDATE SET"
        " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
        " completion_tokens = completion_tokens + excluded.completion_tokens",
        [guild_id, day, model, max(0, prompt_tokens), max(0, completion_tokens)],
    )


def tokens_used(db: Database, guild_id: int, day: str, model: str | None = None) -> int:
    """Prompt plus completion tokens a server spent that day: on one model, or on all of them."""
    sql = "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM token_usage WHERE guild_id = ? AND day = ?"
    args: list[object] = [guild_id, day]
    if model is not None:
        sql += " AND model = ?"
        args.append(model)
    return int(db.execute(sql, args).fetchone()[0])
