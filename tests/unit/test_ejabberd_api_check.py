"""The check of `[roster] backend = "ejabberd_api"` (component/xmpp/ejabberd_api.py) when
the API gives an answer ejabberd gives only when something is wrong: a local HTTP server
plays the API here. What the backend reads and writes is tested against the real ejabberd
in tests/e2e/test_ejabberd_api.py."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from component.config import RosterConfig
from component.rosters import GRANTED, UNAVAILABLE
from component.xmpp import ejabberd_api
from component.xmpp.ejabberd_api import EjabberdApiRosters

SERVED = frozenset({"example.test"})


@pytest.fixture(autouse=True)
def quick_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ejabberd_api, "RECHECK_S", 0.05)


def api_answering(answers: list[tuple[int, object]], calls: list[str]) -> TestServer:
    """An HTTP API on a free loopback port (aiohttp's TestServer, started by `async
    with`): each call is recorded in `calls` and gets the next of `answers`, then 200 `[]`
    (an empty roster)."""

    async def command(request: web.Request) -> web.Response:
        calls.append(request.match_info["command"])
        status, body = answers.pop(0) if answers else (200, [])
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_post("/api/{command}", command)
    return TestServer(app)


def backend(url: str, granted: asyncio.Event) -> EjabberdApiRosters:
    config = RosterConfig(backend="ejabberd_api", ejabberd_api_url=url, ejabberd_api_timeout_s=5)
    return EjabberdApiRosters(config, SERVED, "presence.example.test", on_granted=granted.set)


async def test_a_check_answered_with_an_error_is_logged_and_asked_again(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    granted = asyncio.Event()
    async with api_answering([(500, {"message": "mnesia is not ready"})] * 2, calls) as api:
        rosters = backend(str(api.make_url("/api")), granted)
        try:
            with caplog.at_level(logging.INFO, logger="component.xmpp.ejabberd_api"):
                await rosters.session_started()
                assert rosters.status == UNAVAILABLE
                async with asyncio.timeout(10):
                    await granted.wait()
        finally:
            await rosters.close()
    assert rosters.status == GRANTED
    assert calls == ["get_roster"] * 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings  # once per change, not once per try
    assert "get_roster answered HTTP 500: mnesia is not ready" in warnings[0], warnings


async def test_an_unexpected_error_in_the_check_does_not_end_the_checking(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    granted = asyncio.Event()
    async with api_answering([], calls) as api:
        rosters = backend(str(api.make_url("/api")), granted)
        real_call = rosters._call
        failures = [ZeroDivisionError("a bug")]

        async def call_failing_once(command: str, args: dict[str, str]) -> object:
            if failures:
                raise failures.pop()
            return await real_call(command, args)

        monkeypatch.setattr(rosters, "_call", call_failing_once)
        try:
            with caplog.at_level(logging.INFO, logger="component.xmpp.ejabberd_api"):
                await rosters.session_started()  # does not raise: the session goes on
                assert rosters.status == UNAVAILABLE
                async with asyncio.timeout(10):
                    await granted.wait()
        finally:
            await rosters.close()
    assert rosters.status == GRANTED and calls == ["get_roster"]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is not None, caplog.records
