"""Error bodies, one per REST family, rendered from the one error table."""

from __future__ import annotations

from aiohttp import web

from component.errors import WireError


def render_error(request: web.Request, wire: WireError, detail: str) -> web.Response:
    """The family's error envelope for `wire` (Rainbow's for its paths and anything unmatched)."""
    body = {
        "errorCode": wire.http_status,
        "errorMsg": wire.http_reason,
        "errorDetails": detail,
        "errorDetailsCode": wire.rainbow_code,
    }
    return web.json_response(body, status=wire.http_status)
