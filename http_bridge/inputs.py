"""Request inputs every family reads the same way: the caller's token and JSON bodies."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiohttp import web

from component.errors import BadRequest
from http_bridge.context import HTTP_SETTINGS

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


# Deepest nesting of arrays and objects a body may have: our bodies need 3 levels. json.loads
# recurses once per level (about 1000 levels raise RecursionError), and so would any code
# walking the result, so depth is counted first, without recursion.
MAX_JSON_DEPTH = 32
# A JSON string, escapes included (the unrolled form: linear, no backtracking).
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def _nesting_exceeds(text: str, limit: int) -> bool:
    if text.count("[") + text.count("{") <= limit:
        return False  # the common case: too few brackets to nest that deep
    depth = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")  # RFC 8259 has no NaN or Infinity


# Built once: json.loads with an option builds a new decoder per call (most of the cost
# of parsing a small body).
_DECODER = json.JSONDecoder(parse_constant=_not_json)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object (RFC 8259: UTF-8, at most MAX_JSON_DEPTH levels of
    nesting); 400 when empty, cut short, not UTF-8, malformed, too deep or not an object;
    408 when it does not arrive whole within `[http] body_timeout_s` (http_bridge.listener)."""
    try:
        async with asyncio.timeout(request.app[HTTP_SETTINGS].body_timeout_s):
            raw = await request.read()  # bounded by client_max_size: 413 beyond it
    except TimeoutError:
        raise web.HTTPRequestTimeout() from None
    except web.RequestPayloadError as exc:  # aiohttp's parser refused the framing (chunks)
        raise BadRequest("request body is malformed") from exc
    except ConnectionError:  # the client hung up: nobody reads the answer, but it is no 500
        raise BadRequest("the connection was closed before the body arrived") from None
    if not raw.strip():
        raise BadRequest("a JSON object body is required")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("body is not UTF-8") from exc
    if _nesting_exceeds(text, MAX_JSON_DEPTH):
        raise BadRequest(f"body nests more than {MAX_JSON_DEPTH} levels of arrays and objects")
    try:
        body = _DECODER.decode(text)
    except ValueError as exc:
        raise BadRequest("body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body
