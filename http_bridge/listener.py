"""Serving the REST bridge on TCP, with the limits a slow or greedy client needs.

aiohttp's defaults let any client hold a connection for an hour: a request head may
trickle in forever (nothing times it out but the 3630 s keep-alive timer), a body too
(`request.read()` has no deadline), and connections are accepted without limit. What
each limit here does, and why it is built this way:

- `header_timeout_s`: aiohttp's own keep-alive timer, set to this value. A RequestHandler
  arms it when the connection opens and again after each answer, and when it fires it
  closes the connection if the handler is still waiting for a complete request head
  (`RequestHandler._process_keepalive` checks that no message was parsed, not that no byte
  came). So a head must be complete within `header_timeout_s` of the connection opening or
  of the previous answer, and an idle keep-alive connection lasts that long. No wrapper
  duplicates that logic; tests/unit/test_http_listener.py holds aiohttp to it.
- `body_timeout_s`: a body must arrive whole within that time once its handler reads it
  (`read_json_object`, the one reader of bodies: 408 otherwise, and the connection is then
  closed). A body no handler reads, or the rest after an early answer (408, 413), is read
  and dropped by aiohttp for at most `body_timeout_s` more (its "lingering" time, meant to
  let the client see the answer before the close), then the connection is closed.
- `max_connections`: aiohttp has no cap, and `web.TCPSite` hands asyncio aiohttp's
  protocol factory as it is. `HttpListener` serves the same factory (`web.Server`, which
  aiohttp documents as one) through `_ConnectionCap`, which counts the connections open
  and closes a new one at once when the cap is reached: nothing is read or answered
  (a client retries later), and the connections already open are not slowed down.

A request aiohttp cannot parse (a bad request line, a NUL in a header) is answered 400 by
aiohttp itself, which then logs a traceback whose message echoes the raw line, a token in
`Authorization` included, over several lines. Its connections log through
`_ServerLog` instead: one line naming the client and the error's class, nothing the
client sent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from component.config import HttpConfig
from component.logfields import untrusted
from http_bridge.context import HTTP_SETTINGS

log = logging.getLogger("http_bridge")


class HttpListener:
    """The app (from `build_app`) on `[http] host` and `port`, with its limits."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.settings: HttpConfig = app[HTTP_SETTINGS]
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._cap: _ConnectionCap | None = None

    async def start(self) -> None:
        settings = self.settings
        self._runner = web.AppRunner(
            self.app,
            access_log=None,  # request_context logs one line per request
            keepalive_timeout=settings.header_timeout_s,
            lingering_time=settings.body_timeout_s,
            logger=_ServerLog(logging.getLogger("aiohttp.server"), {}),
        )
        await self._runner.setup()
        assert self._runner.server is not None
        self._cap = _ConnectionCap(self._runner.server, settings.max_connections)
        self._server = await asyncio.get_running_loop().create_server(
            self._cap, settings.host, settings.port
        )

    @property
    def port(self) -> int:
        """The port listened on (the one the system chose when `port` is 0)."""
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()  # closes the open connections, answers in flight first


class _ConnectionCap:
    """A protocol factory: aiohttp's, while fewer than `limit` connections are open."""

    def __init__(self, make_handler: web.Server, limit: int) -> None:
        self._make_handler = make_handler
        self._limit = limit
        self.open = 0
        self._refused = 0

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self._limit:
            if not self._refused:
                log.warning(
                    "http: %d connections open ([http] max_connections): closing new ones", self.open
                )
            self._refused += 1
            return _Refused()
        self.open += 1
        return _Counted(self._make_handler(), self)

    def closed(self) -> None:
        self.open -= 1
        if self._refused and self.open < self._limit:
            log.info("http: accepting connections again (%d were closed at the limit)", self._refused)
            self._refused = 0


class _ServerLog(logging.LoggerAdapter):
    """aiohttp's connection logger (`RequestHandler(logger=...)`): a request aiohttp could
    not parse is one line without its content, at info (or at debug where aiohttp logs it
    at debug: a first request that is not HTTP at all); every other record is logged as
    aiohttp logs it. aiohttp passes the error as `exc_info`."""

    def log(self, level: int, msg: object, *args: Any, exc_info: Any = None, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            # aiohttp's message is "Error handling request from %s", with the peer's address.
            peer = untrusted(str(args[0])) if args else "-"
            log.log(min(level, logging.INFO), "http: a request from %s that is not valid HTTP was refused: %d %s",
                    peer, exc_info.code, type(exc_info).__name__)
            return
        super().log(level, msg, *args, exc_info=exc_info, **kwargs)


class _Counted(asyncio.Protocol):
    """aiohttp's RequestHandler for one connection, passed every event as it is, and
    counted until the connection is lost."""

    __slots__ = ("_handler", "_cap")

    def __init__(self, handler: asyncio.Protocol, cap: _ConnectionCap) -> None:
        self._handler = handler
        self._cap = cap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cap.closed()
        self._handler.connection_lost(exc)


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()
