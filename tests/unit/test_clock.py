"""Dates on the wire: ISO 8601 UTC with milliseconds and a `Z`, exact to the millisecond."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from component.clock import iso_ms


def _by_strftime(ms: int) -> str:
    """The way dates were written before (datetime.fromtimestamp, strftime)."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def test_known_dates() -> None:
    assert iso_ms(None) is None
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(1_767_225_600_000) == "2026-01-01T00:00:00.000Z"
    assert iso_ms(1_767_225_600_999) == "2026-01-01T00:00:00.999Z"
    assert iso_ms(1_767_225_599_001) == "2025-12-31T23:59:59.001Z"
    assert iso_ms(951_782_400_000) == "2000-02-29T00:00:00.000Z"
    assert iso_ms(-1) == "1969-12-31T23:59:59.999Z"
    assert iso_ms(253_402_300_799_999) == "9999-12-31T23:59:59.999Z"


def test_every_millisecond_agrees_with_strftime() -> None:
    rng = random.Random(14)
    samples = [rng.randrange(0, 4_102_444_800_000) for _ in range(20_000)]  # up to 2100
    samples += [1_767_225_600_000 + k for k in range(-1500, 1500)]  # around a second's edges
    for ms in samples:
        assert iso_ms(ms) == _by_strftime(ms), ms
