"""HostPool: one LocalModelHost per set of weights, so a teacher and a student on the same base share memory."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from backends.base import BackendError
from backends.bundled import bundled_gguf_path, resolve_model_dir
from backends.local.backend import LocalBackend
from backends.local.batching import PREFIX_CACHE_BYTES
from backends.local.host import LocalModelHost, resolve_device, resolve_dtype
from backends.local.kernels import cpu_supported
from settings import BUNDLED_MODEL, ModelSpec


class HostPool:
    """The app's local model hosts, keyed by (model directory, device, dtype).

    The app creates one pool, asks it for hosts or backends, and closes it on shutdown,
    which closes every host.
    """

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)
        self._hosts: dict[tuple[str, str, str], LocalModelHost] = {}
        # One resolution at a time, so two specs on the same GGUF wait for one conversion.
        self._resolving = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._hosts)

    def get(
        self, model_dir: str, device: str = "auto", dtype: str = "auto", *, max_batch: int = 1, batch_window: float = 0.0,
        gguf: str | None = None, prompt_cache_bytes: int = PREFIX_CACHE_BYTES,
    ) -> LocalModelHost:
        """The host for already-resolved weights, created (not loaded) on first request.

        `max_batch`, `batch_window` (seconds) and `prompt_cache_bytes` apply when this call creates
        the host; `gguf` is the file `model_dir` was converted from (dtype "gguf" serves from its blocks).

        With 'auto' device or dtype this asks torch about the GPU; prefer `host_for` on the event loop.
        """
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        key = (os.path.realpath(model_dir) if os.path.isdir(model_dir) else model_dir, device, dtype)
        host = self._hosts.get(key)
        if host is None or host.closing:
            host = self._hosts[key] = LocalModelHost(
                key[0], device=device, dtype=dtype, max_batch=max_batch, batch_window=batch_window, gguf=gguf,
                kernel_dir=kernel_dir(self.cache_dir), prompt_cache_bytes=prompt_cache_bytes,
            )
        return host

    async def host_for(self, spec: ModelSpec) -> LocalModelHost:
        """The host for a local ModelSpec, converting a GGUF first if needed. Raises BackendError."""
        if spec.backend != "local" or not spec.path:
            raise BackendError(spec.name, "is not a local model")
        async with self._resolving:
            try:
                model_dir, device, dtype, gguf = await asyncio.to_thread(_resolve, spec, self.cache_dir)
            except Exception as e:
                raise BackendError(spec.name, f"cannot prepare {spec.path}: {e}") from e
            return self.get(
                model_dir, device, dtype, max_batch=spec.max_batch, batch_window=spec.batch_window_ms / 1000, gguf=gguf,
                prompt_cache_bytes=int(spec.prompt_cache_mb * 2**20),
            )

    async def backend_for(self, spec: ModelSpec, adapter_name: str | None = None) -> LocalBackend:
        """A LocalBackend for `spec` on its shared host; `adapter_name` is the student's adapter, None for base weights."""
        return LocalBackend(spec, await self.host_for(spec), adapter_name)

    async def aclose(self) -> None:
        """Close every host and forget them."""
        hosts, self._hosts = list(self._hosts.values()), {}
        await asyncio.gather(*(h.aclose() for h in hosts))


def _resolve(spec: ModelSpec, cache_dir: Path) -> tuple[str, str, str, str | None]:
    """(model directory, device, dtype, source GGUF or None) for a local spec; blocking (may convert)."""
    assert spec.path is not None
    model_dir = resolve_model_dir(spec.path, cache_dir)
    device = resolve_device(spec.device)
    gguf = source_gguf(spec.path)
    if spec.dtype == "gguf" and gguf is None:
        raise ValueError(f'dtype "gguf" needs a .gguf file or the bundled model as path, not {spec.path}')
    if blocks_source(spec):
        return model_dir, device, "gguf", gguf
    return model_dir, device, resolve_dtype(spec.dtype, device), gguf


def blocks_source(spec: ModelSpec) -> str | None:
    """The GGUF file whose blocks a host for `spec` multiplies by on the CPU (dtype "gguf", or
    "auto" for a GGUF model on a CPU the kernels run on); None when it runs in a plain dtype."""
    gguf = source_gguf(spec.path or "")
    if gguf is None or resolve_device(spec.device) != "cpu":
        return None
    return gguf if spec.dtype == "gguf" or (spec.dtype == "auto" and cpu_supported() is None) else None


def kernel_dir(cache_dir: Path) -> Path:
    """Where the kernels are built, under the app's cache directory."""
    return Path(cache_dir) / "kernels"


def source_gguf(path: str) -> str | None:
    """The GGUF file a local model path stands for, if it is one."""
    if path == BUNDLED_MODEL:
        return str(bundled_gguf_path())
    return str(Path(path).expanduser()) if path.endswith(".gguf") else None
