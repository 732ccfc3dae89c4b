"""Nightly LoRA training of the student: dataset (`data`), loop (`loop`), job entry point (`python -m trainer`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


def check_known_keys(config_class: type, values: Mapping[str, Any], what: str) -> None:
    """Raise ValueError naming any key of a job's config object that `config_class` (a dataclass) lacks,
    so a typo in a job file cannot pass silently."""
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
