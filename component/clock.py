"""Time, injected so that expiry and dates are testable without sleeping."""

from __future__ import annotations

import time
from datetime import datetime, timedelta


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


# UTC, naive: isoformat() then writes no offset, and the `Z` is ours.
_EPOCH = datetime(1970, 1, 1)


def iso_ms(ms: int | None) -> str | None:
    """ISO 8601 UTC with milliseconds and a `Z`, as the Rainbow API writes dates.

    Integer arithmetic (exact for every millisecond) and the C isoformat: a list of 100
    requests renders a few hundred dates, and strftime cost twice as much (issue #14)."""
    if ms is None:
        return None
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds") + "Z"
