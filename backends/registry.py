"""Named models, built lazily from settings. The one place that knows which backend serves which name."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from backends.base import ChatBackend, GenParams
from settings import ConfigError, ModelSpec, Settings

log = logging.getLogger(__name__)

LARGE_PARAMS = 3_000_000_000
"""Local models at or above this many parameters count as LLMs when naming a lesson's direction."""


class ModelRegistry:
    """Maps model names to backends. Local models on the same base share one host (one copy of weights).

    Students (trainable models) get their own adapter slot named after them; teachers on the
    same base run with adapters disabled, so a teacher never speaks with a student's voice.
    """

    def __init__(
        self,
        specs: Mapping[str, ModelSpec],
        *,
        cache_dir: Path,
        env: Mapping[str, str] | None = None,
        backends: Mapping[str, ChatBackend] | None = None,
        adapter_source: Callable[[str], Awaitable[str | None]] | None = None,
    ):
        self.specs = dict(specs)
        self.cache_dir = cache_dir
        self.env = os.environ if env is None else env
        self._backends: dict[str, ChatBackend] = dict(backends or {})
        # where the truth about each student's active adapter lives (the database), if anywhere
        self.adapter_source = adapter_source
        self._pool = None  # created on first local model, so importing torch is deferred
        self._adapters: dict[str, str | None] = {}  # what each student's live backend has loaded (a cache of the DB)

    @classmethod
    def from_settings(cls, settings: Settings, env: Mapping[str, str] | None = None) -> ModelRegistry:
        """A registry over every model in the settings."""
        return cls(settings.models, cache_dir=settings.cache_dir, env=env)

    def names(self) -> list[str]:
        """Every configured model name, sorted."""
        return sorted(self.specs)

    def spec(self, name: str) -> ModelSpec:
        """The spec of `name`, or ConfigError listing the known names."""
        try:
            return self.specs[name]
        except KeyError:
            raise ConfigError(f"unknown model '{name}' (known: {', '.join(self.names()) or 'none'})") from None

    def get(self, name: str) -> ChatBackend:
        """An already-built backend, or an API backend built now. Local models need `await backend(name)`."""
        if name not in self._backends:
            spec = self.spec(name)
            if spec.backend != "openai":
                raise RuntimeError(f"local model '{name}' must be built with `await registry.backend(name)`")
            self._backends[name] = self._build_api(spec)
        return self._backends[name]

    async def backend(self, name: str) -> ChatBackend:
        """The backend for `name`, built on first use, with a student's adapter brought in line first.

        Local models are loaded off the event loop and share one host (one copy of the weights)
        per base model. Syncing the adapter on every request means one promoted or rolled back
        by another process (the CLI, a training run) is used by the very next request, without
        a restart.
        """
        spec = self.spec(name)
        if name not in self._backends:
            if spec.backend == "openai":
                self._backends[name] = self._build_api(spec)
            else:
                from backends.local import HostPool

                if self._pool is None:
                    self._pool = HostPool(self.cache_dir)
                adapter = spec.name if spec.trainable else None
                self._backends.setdefault(name, await self._pool.backend_for(spec, adapter_name=adapter))
        backend = self._backends[name]
        if self.adapter_source is not None and spec.trainable:
            await self.sync_adapter(name, await self.adapter_source(name))
        return backend

    def is_built(self, name: str) -> bool:
        """Whether the backend for `name` exists already (a local model may be loaded)."""
        return name in self._backends

    def params(self, name: str) -> GenParams:
        """Default generation settings of a model."""
        g = self.spec(name).generation
        return GenParams(
            max_new_tokens=g.max_new_tokens,
            temperature=g.temperature,
            top_p=g.top_p,
            repetition_penalty=g.repetition_penalty,
            seed=g.seed,
        )

    def _build_api(self, spec: ModelSpec) -> ChatBackend:
        from backends.openai_backend import OpenAIBackend

        return OpenAIBackend(spec, env=self.env)

    async def set_adapter(self, student: str, path: Path | str | None) -> None:
        """Swap a student's live adapter (None: base weights). Requests in flight finish on the old one.

        An API student's "adapter" is its fine-tuned model id: requests from now on name that model
        (None: the configured `model` again).
        """
        backend = await self.backend(student) if student not in self._backends else self._backends[student]
        spec = self.spec(student)
        if spec.backend == "openai":
            from backends.openai_backend import OpenAIBackend

            if isinstance(backend, OpenAIBackend):  # each request reads the model id from its spec
                backend.spec = spec.model_copy(update={"model": str(path) if path else spec.model})
            self._adapters[student] = str(path) if path else None
            return
        host = getattr(backend, "host", None)
        if host is None:
            raise ConfigError(f"model '{student}' is not a local model; it has no adapters")
        await host.set_adapter(student, path)
        self._adapters[student] = str(path) if path else None

    async def sync_adapter(self, student: str, path: Path | str | None) -> bool:
        """Load `path` as the student's adapter unless it already is; True if a swap happened."""
        wanted = str(path) if path else None
        if self._adapters.get(student) == wanted:
            return False
        await self.set_adapter(student, wanted)
        return True

    def current_adapter(self, student: str) -> str | None:
        """The adapter directory (an API student: fine-tuned model id) the live student uses now, or None for base."""
        return self._adapters.get(student)

    def size_class(self, name: str) -> str:
        """'LLM' or 'SLM', from parameter count for local models, configured size class for API models."""
        spec = self.spec(name)
        if spec.size_class:
            return "LLM" if spec.size_class == "large" else "SLM"
        if spec.backend == "openai":
            return "LLM"
        count = self.get(name).parameter_count() if name in self._backends else None
        if count is None:
            return "SLM"
        return "LLM" if count >= LARGE_PARAMS else "SLM"

    async def aclose(self) -> None:
        """Close every backend that was built, then the shared local model hosts."""
        for backend in self._backends.values():
            try:
                await backend.aclose()
            except Exception:  # closing must go on for the others; log what failed
                log.exception("closing model backend %s failed", backend.name)
        if self._pool is not None:
            await self._pool.aclose()
