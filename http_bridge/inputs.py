"""Request inputs every family reads the same way: the caller's token and JSON bodies."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from component.errors import BadRequest

# A token is visible ASCII (RFC 9110 section 5.6.2 VCHAR: what RFC 6750's b64token and our
# token_urlsafe tokens are made of). aiohttp decodes header bytes as UTF-8 with
# surrogateescape, so a byte that is not ASCII arrives as a character outside this range.
_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")


def bearer_token(request: web.Request) -> str | None:
    """The caller's token from any of the three header styles the families use:
    `Authorization: Bearer` (Rainbow), `X-Auth-Token` (Kazoo), `Access-Token` (Xlink).

    When `Authorization` says Bearer, only it counts; otherwise the first non-empty of
    X-Auth-Token and Access-Token. A value that is not a token (bytes that are not
    visible ASCII, such as non-UTF-8 or control bytes) is no token: None, so the caller
    gets the family's 401, and nothing malformed is ever echoed or hashed."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        value = auth[7:].strip()
    else:
        value = request.headers.get("X-Auth-Token") or request.headers.get("Access-Token") or ""
    return value if _TOKEN.fullmatch(value) else None


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; 400 when empty, malformed or not an object."""
    raw = await request.read()  # bounded by client_max_size: 413 beyond it
    if not raw.strip():
        raise BadRequest("a JSON object body is required")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body
