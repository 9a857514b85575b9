"""Untrusted text in log lines, escaped in one place so that no one can forge a line.

Whatever a remote party chose (an HTTP path or method, an IQ id, an error text that names
its input, a JID) goes through `untrusted()` before it is written to a log line. Every
character that is not printable (control characters such as CR, LF and ESC, Unicode line
and paragraph separators, format characters such as bidi controls, lone surrogates) and the
backslash itself become Python escapes: one event stays one line, and reads back
unambiguously (`/a%0ab` is logged as `/a\\x0ab`).
"""

from __future__ import annotations


def untrusted(value: object) -> str:
    text = str(value)
    if text.isprintable() and "\\" not in text:
        return text  # the common case, unchanged
    return "".join(_escaped(ch) for ch in text)


def _escaped(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch.isprintable():
        return ch
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
