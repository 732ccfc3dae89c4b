"""Local models with transformers + peft: a shared host per set of weights, a ChatBackend per model spec."""

from backends.local.backend import LocalBackend
from backends.local.host import (
    AdapterError,
    HostClosed,
    LocalModelHost,
    ModelLoadError,
    resolve_device,
    resolve_dtype,
)
from backends.local.pool import HostPool

__all__ = [
    "AdapterError",
    "HostClosed",
    "HostPool",
    "LocalBackend",
    "LocalModelHost",
    "ModelLoadError",
    "resolve_device",
    "resolve_dtype",
]
