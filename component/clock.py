"""Time, injected so that expiry and dates are testable without sleeping."""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class FixedClock(Clock):
    """A clock that only moves when told to (tests)."""

    def __init__(self, start_ms: int = 1_767_225_600_000) -> None:  # 2026-01-01T00:00:00Z
        self.value = start_ms

    def now_ms(self) -> int:
        return self.value

    def advance(self, ms: int) -> None:
        self.value += ms


def iso_ms(ms: int | None) -> str | None:
    """ISO 8601 UTC with milliseconds and a `Z`, as the Rainbow API writes dates."""
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
