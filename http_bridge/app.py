"""The aiohttp application: middlewares (request id, logging, the one error path) and routes."""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from aiohttp import web

from component.config import HttpConfig
from component.errors import INTERNAL, INTERNAL_TEXT, DomainError, WireError
from component.logfields import untrusted
from http_bridge import kazoo, metrics, rainbow, xlink
from http_bridge.context import HTTP_SETTINGS, REQUEST_ID, SERVICES, USER_JID, Services
from http_bridge.envelopes import json_response, render_error

log = logging.getLogger("http_bridge")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

# Generated request ids: 32 hex digits like Kazoo's, unique for the process's life
# (a random half per start, then a counter). uuid4 made a getrandom() syscall per
# request, about 8% of the event loop's time under load (benchmarks, issue #5).
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def logged_path(request: web.Request) -> str:
    """The path as a log line may show it: no invite code in full, no character that
    could end the line or fake another (component.logfields)."""
    return untrusted(xlink.redact_invite_codes(request.path))


@web.middleware
async def request_context(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Request id (X-Request-Id, taken from the caller when sane) and one log line per
    request, made here and handed to `Services.request_log`."""
    given = request.headers.get("X-Request-Id", "")
    request_id = given if _REQUEST_ID.fullmatch(given) else new_request_id()
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        return response
    finally:
        status = response.status if response is not None else 500
        if response is not None:
            response.headers["X-Request-Id"] = request_id
        metrics.count_request(request.app, request.path, status)
        request.app[SERVICES].request_log(
            f"http {untrusted(request.method)} {logged_path(request)} -> {status}"
            f" in {(time.perf_counter() - started) * 1000:.1f} ms request_id={request_id}"
            f" user={untrusted(request.get(USER_JID, '-'))}"
        )


@web.middleware
async def error_envelopes(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """The single HTTP error path: handlers raise, this renders the family's envelope."""
    try:
        return await handler(request)
    except DomainError as exc:
        return render_error(request, exc.wire, exc.detail, exc.field, exc.rule, exc.retry_after_s)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        wire = WireError("cancel", "undefined-condition", exc.status, exc.status * 1000)
        detail = {
            404: "no such resource",
            405: f"method {request.method} not allowed here",
            408: "request body not received in time",
            413: "request body too large",
        }.get(exc.status, exc.reason)
        response = render_error(request, wire, detail)
        if exc.status == 408:
            response.force_close()  # the client is too slow to keep
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception(
            "http %s %s: unexpected error request_id=%s",
            untrusted(request.method), logged_path(request), request.get(REQUEST_ID),
        )
        return render_error(request, INTERNAL, INTERNAL_TEXT)


async def healthz(request: web.Request) -> web.Response:
    ok, body = await request.app[SERVICES].health()
    return json_response(body, status=200 if ok else 503)


def build_app(services: Services, settings: HttpConfig = HttpConfig()) -> web.Application:
    """The REST bridge over `services`; serve it with `HttpListener` (http_bridge.listener),
    which applies the rest of `settings` (address, timeouts, connection cap)."""
    app = web.Application(
        middlewares=[request_context, error_envelopes], client_max_size=settings.max_body_bytes
    )
    app[SERVICES] = services
    app[HTTP_SETTINGS] = settings
    app[metrics.HTTP_COUNTS] = Counter()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics.metrics)
    rainbow.add_routes(app)
    kazoo.add_routes(app)
    xlink.add_routes(app)
    return app

