"""component.logfields.untrusted: one event, one line, whatever the text."""

from __future__ import annotations

import pytest

from component.logfields import untrusted


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("/api/rainbow/x", "/api/rainbow/x"),
        ("caf\u00e9 \u2026 ok", "caf\u00e9 \u2026 ok"),  # printable non-ASCII stays readable
        ("a\nb\rc\td", "a\\x0ab\\x0dc\\x09d"),
        ("\x1b[31m\x7f\x85", "\\x1b[31m\\x7f\\x85"),
        ("\u2028\u2029\u202e\u200b\ufeff", "\\u2028\\u2029\\u202e\\u200b\\ufeff"),
        ("\udcc3(", "\\udcc3("),  # a lone surrogate (header bytes that were not UTF-8)
        ("\U000e0001", "\\U000e0001"),
        ("a\\x0ab", "a\\\\x0ab"),  # an escape typed by the client stays distinguishable
        (42, "42"),
    ],
)
def test_untrusted_escapes_what_could_end_or_fake_a_line(text: object, logged: str) -> None:
    assert untrusted(text) == logged
    assert untrusted(text).isprintable()
