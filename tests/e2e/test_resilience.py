"""What survives: a Prosody restart, a SIGKILLed service, a server without roster privilege."""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
from collections.abc import AsyncIterator

import aiohttp
import pytest

from local_prosody import LocalProsody, free_port
from storage import outbox
from tests.e2e.conftest import (
    XmppServer,
    both_servers,
    RestApi,
    RunningService,
    ServiceFactory,
    ServiceProcesses,
    healthy,
    jid,
    management,
    wait_for_health,
    wait_until,
)

pytestmark = pytest.mark.e2e


async def outbox_rows(running: RunningService) -> int:
    """Committed notifications the service has not yet handed to the server."""
    return await running.db.read(outbox.count)


# ---- Prosody stopped and started under a running service -------------------------------------


class Gate:
    """A loopback TCP forwarder between the service and Prosody's component port.

    It is plain bytes in both directions (the XMPP server is still the real
    Prosody); closing its listener keeps the component from reconnecting while
    the test gets the clients back online.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def close(self) -> None:
        """Stop accepting; connections already through stay up."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def shutdown(self) -> None:
        await self.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            down_w.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            await asyncio.gather(self._pipe(down_r, up_w), self._pipe(up_r, down_w))
        finally:
            self._pipes.discard(task)
            for writer in (up_w, down_w):
                writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def gate(ensure_server_up: XmppServer) -> AsyncIterator[Gate]:
    g = Gate(ensure_server_up.component_port)
    await g.open()
    yield g
    await g.shutdown()


@both_servers
async def test_xmpp_server_restart_while_running_loses_nothing(
    ensure_server_up: XmppServer, gate: Gate, make_service: ServiceFactory, xmpp_users, http: aiohttp.ClientSession
) -> None:
    prosody = ensure_server_up  # Prosody, or ejabberd
    running = await make_service(prosody, server_port=gate.port)
    api = RestApi(http, running.base_url)
    alice, bob = await xmpp_users("alice"), await xmpp_users("bob")
    a, b = await api.login("alice"), await api.login("bob")

    # Outage. Close the gate first so the component cannot come back on its own.
    await gate.close()
    await asyncio.to_thread(prosody.stop)
    status, body = await wait_for_health(running.base_url, lambda s, b: s == 503)
    assert {k: body[k] for k in ("xmpp", "storage", "roster")} == {
        "xmpp": "disconnected", "storage": "ok", "roster": "unavailable",
    }

    # REST keeps working on local storage; the announcements wait in the outbox.
    status, created = await api.create(a, toJid=bob.jid)
    assert status == 200, created
    request_id = created["data"]["id"]
    assert await outbox_rows(running) == 2
    # /healthz says how far behind delivery is.
    status, body = await wait_for_health(running.base_url, lambda s, b: s == 503 and b["outbox_pending"] == 2)
    assert 0 <= body["outbox_oldest_age_s"] < 60 and (body["mail_pending"], body["dead_letters"]) == (0, 0)
    status, page = await api.list(b, "received")
    assert [r["id"] for r in page["data"]] == [request_id]

    # Prosody back; the clients (dropped with it) log in again before the component
    # may reconnect, so the delivery this asserts reaches live sessions, not
    # Prosody's offline store: no race between the two reconnections.
    await asyncio.to_thread(prosody.start)
    await alice.reconnect()
    await bob.reconnect()
    await gate.open()
    await wait_for_health(running.base_url, healthy("granted"))

    assert await alice.next_management() == [management(request_id, "create", "sent", "pending")]
    assert await bob.next_management() == [management(request_id, "create", "received", "pending")]

    async def outbox_empty() -> bool:
        return await outbox_rows(running) == 0

    await wait_until(outbox_empty)

    # And the service is whole again: a transition goes through end to end.
    status, body = await api.transition(b, request_id, "accept")
    assert (status, body["data"]["status"]) == (200, "accepted")
    assert await alice.next_management() == [management(request_id, "update", "sent", "accepted")]
    assert await bob.next_management() == [management(request_id, "update", "received", "accepted")]
    assert await alice.roster_push_for(bob.jid, "to") == [(bob.jid, "to")]
    # Each owner's item is its own change: wait for bob's too (ejabberd's API is slower).
    assert await bob.roster_push_for(alice.jid, "from") == [(alice.jid, "from")]
    assert (await alice.roster())[bob.jid] == "to"
    assert (await bob.roster())[alice.jid] == "from"


# ---- the service as a real process, SIGKILLed ----------------------------------------------


async def test_sigkill_keeps_every_acknowledged_request_and_token(
    service_processes: ServiceProcesses,
) -> None:
    api = service_processes.api
    db_path = service_processes.db_path
    first = await service_processes.start()
    users = {name: await api.login(name) for name in ("alice", "bob", "carol", "dave")}
    pairs = [("alice", "bob"), ("alice", "carol"), ("alice", "dave"), ("bob", "carol"), ("carol", "dave"), ("dave", "bob")]
    acknowledged: dict[str, tuple[str, str]] = {}
    for sender, receiver in pairs:
        status, body = await api.create(users[sender], toUserId=users[receiver].user_id)
        assert status == 200, body
        acknowledged[body["data"]["id"]] = (sender, receiver)
    accepted_id = next(i for i, pair in acknowledged.items() if pair == ("alice", "bob"))
    status, body = await api.transition(users["bob"], accepted_id, "accept")
    assert status == 200, body

    assert await first.kill() == -signal.SIGKILL

    await service_processes.start()

    # Tokens issued before the kill still work, and every acknowledged request is there.
    for name, who in users.items():
        status, page = await api.list(who, "sent")
        assert status == 200, page
        assert {r["id"] for r in page["data"]} == {i for i, (s, _) in acknowledged.items() if s == name}
        for request in page["data"]:
            _, receiver = acknowledged[request["id"]]
            assert request["toUserId"] == users[receiver].user_id
            assert request["status"] == ("accepted" if request["id"] == accepted_id else "pending")
        status, page = await api.list(who, "received")
        assert {r["id"] for r in page["data"]} == {i for i, (_, r) in acknowledged.items() if r == name}

    # Announcements committed before the kill are delivered by the new process.
    def outbox_rows() -> int:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM outbox").fetchone()[0]

    async def outbox_empty() -> bool:
        return await asyncio.to_thread(outbox_rows) == 0

    await wait_until(outbox_empty)


# ---- a server that grants no roster privilege ------------------------------------------------


async def test_without_roster_privilege_messages_still_flow(
    unprivileged_prosody: LocalProsody, make_service: ServiceFactory, xmpp_users,
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    running: RunningService = await make_service(unprivileged_prosody, roster="unavailable")
    api = RestApi(http, running.base_url)
    alice = await xmpp_users("alice", unprivileged_prosody)
    bob = await xmpp_users("bob", unprivileged_prosody)
    a, b = await api.login("alice"), await api.login("bob")

    status, body = await api.create(a, toJid=jid("bob"))
    assert status == 200, body
    request_id = body["data"]["id"]
    assert await alice.next_management() == [management(request_id, "create", "sent", "pending")]
    assert await bob.next_management() == [management(request_id, "create", "received", "pending")]
    status, body = await api.transition(b, request_id, "accept")
    assert (status, body["data"]["status"]) == (200, "accepted")
    assert await alice.next_management() == [management(request_id, "update", "sent", "accepted")]
    assert await bob.next_management() == [management(request_id, "update", "received", "accepted")]

    # The rosters were left alone (this server's are fresh: nothing else wrote them).
    assert await alice.roster() == {}
    assert await bob.roster() == {}
    status, health = await wait_for_health(running.base_url, healthy("unavailable"))
    assert health["roster"] == "unavailable"

    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "roster privilege" in r.getMessage()
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
