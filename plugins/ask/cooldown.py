"""Per-member cooldown on questions, on the event loop's clock (so it follows simulated time in tests)."""

from __future__ import annotations

import asyncio
import math


class Cooldowns:
    """Remembers when each member last asked; in memory, since a restart may fairly forget it."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._last: dict[int, float] = {}

    def retry_after(self, member_id: int) -> float:
        """Seconds until the member may ask again (0 when they may ask now)."""
        last = self._last.get(member_id)
        if last is None:
            return 0.0
        return max(0.0, self.seconds - (_now() - last))

    def start(self, member_id: int) -> None:
        """The member just asked."""
        self._last[member_id] = _now()

    def reset(self, member_id: int) -> None:
        """Give the member their question back (the answer failed)."""
        self._last.pop(member_id, None)


def wait_text(seconds: float) -> str:
    """'in 12 seconds': how long a member waits, rounded up to whole seconds."""
    whole = max(1, math.ceil(seconds))
    return f"in {whole} second{'s' if whole != 1 else ''}"


def _now() -> float:
    return asyncio.get_running_loop().time()
