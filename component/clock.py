"""Time, injected so that expiry and dates are testable without sleeping."""

from __future__ import annotations

import functools
import time


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


# "00".."99" and "000".."999": a date's fields without a format call each.
_TWO = tuple(f"{n:02d}" for n in range(100))
_MILLIS = tuple(f"{m:03d}" for m in range(1000))


@functools.lru_cache(maxsize=4096)
def _second(s: int) -> str:
    """`YYYY-MM-DDTHH:MM:SS.` of second `s` since the epoch (UTC). Cached: a list
    renders many dates, often of the same seconds (requests made together), and a
    client polling a list renders the same ones again (4096 seconds, under 1 MB)."""
    year, month, day, hour, minute, second = time.gmtime(s)[:6]
    return f"{year:04d}-{_TWO[month]}-{_TWO[day]}T{_TWO[hour]}:{_TWO[minute]}:{_TWO[second]}."


def iso_ms(ms: int | None) -> str | None:
    """ISO 8601 UTC with milliseconds and a `Z`, as the Rainbow API writes dates.

    Integer arithmetic (exact for every millisecond) and a cache of the second's part:
    a list of 100 requests renders a few hundred dates. Per date 0.3 us when the
    second is cached, 1.9 us when not, against 2.1 us with datetime's isoformat and
    twice that with strftime (issue #14)."""
    if ms is None:
        return None
    s, m = divmod(ms, 1000)
    return _second(s) + _MILLIS[m] + "Z"
