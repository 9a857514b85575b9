"""Request inputs every family reads the same way: the caller's token and JSON bodies."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from component.errors import BadRequest


def bearer_token(request: web.Request) -> str | None:
    """The caller's token from any of the three header styles the families use:
    `Authorization: Bearer` (Rainbow), `X-Auth-Token` (Kazoo), `Access-Token` (Xlink)."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("X-Auth-Token") or request.headers.get("Access-Token") or None


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
