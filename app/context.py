"""One object holding the app's long-lived parts, opened and closed in one place."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from backends.registry import ModelRegistry
from lessons.budget import TokenBudget
from lessons.engine import LessonEngine
from settings import Settings
from storage import AsyncStore, open_db, training

log = logging.getLogger(__name__)


@dataclass
class AppContext:
    """The store, the models and the lesson engine, built from one Settings."""

    settings: Settings
    store: AsyncStore
    models: ModelRegistry
    engine: LessonEngine
    training_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@asynccontextmanager
async def open_app(
    settings: Settings, *, env: Mapping[str, str] | None = None, models: ModelRegistry | None = None
) -> AsyncIterator[AppContext]:
    """Open the database and the model registry; close both on exit. `models` lets tests inject scripted ones."""
    settings.home.mkdir(parents=True, exist_ok=True)
    store = AsyncStore(open_db(settings.db_path))
    registry = models or ModelRegistry.from_settings(settings, env=env)

    async def active_adapter_path(student: str) -> str | None:
        row = await store.call(training.active_adapter, student)
        return row["path"] if row else None

    if registry.adapter_source is None:
        registry.adapter_source = active_adapter_path
    try:
        yield AppContext(settings=settings, store=store, models=registry, engine=LessonEngine(store, registry, TokenBudget(store, settings)))
    finally:
        await registry.aclose()
        store.close()
