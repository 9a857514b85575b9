"""Several instances on one PostgreSQL database, on the real Prosody.

Two service processes run the same config (each its own HTTP port) against a fresh
database of the session's private PostgreSQL cluster. Exactly one holds the XMPP
session (healthz "connected"), the other stands by (healthz 200, "standby"); both
serve REST; notifications committed on either are delivered by the connected one;
when it is SIGKILLed the standby takes over and delivers whatever was committed.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from local_prosody import LocalProsody, free_port
from tests.e2e.conftest import (
    HEALTH_KEYS,
    RestApi,
    ServiceProcess,
    XmppUser,
    healthy,
    jid,
    management,
    service_config,
    toml_text,
    wait_for_health,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgresql]


def standby(status: int, body: dict[str, Any]) -> bool:
    return status == 200 and set(body) == HEALTH_KEYS and body["xmpp"] == "standby" and body["storage"] == "ok"


class Instance:
    def __init__(self, name: str, prosody: LocalProsody, url: str, tmp_path: Path, http: aiohttp.ClientSession) -> None:
        port = free_port()
        raw = service_config(prosody, tmp_path / "unused.sqlite3", port) | {"logging": {"level": "INFO"}}
        raw["storage"] = {"url": url}
        self.config_path = tmp_path / f"{name}.toml"
        self.config_path.write_text(toml_text(raw))
        self.base_url = f"http://127.0.0.1:{port}"
        self.api = RestApi(http, self.base_url)
        self.log_path = tmp_path / f"{name}.log"
        self.process = ServiceProcess(self.config_path, self.log_path)

    async def start(self) -> None:
        await self.process.start()

    async def health(self, http: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
        async with http.get(f"{self.base_url}/healthz") as resp:
            return resp.status, await resp.json()


class Pair:
    """Instance `a` started first (it becomes the connected one), then `b` (standby)."""

    def __init__(self, a: Instance, b: Instance) -> None:
        self.a, self.b = a, b


@pytest.fixture
async def instances(
    ensure_prosody_up: LocalProsody, postgres, tmp_path: Path, http: aiohttp.ClientSession
) -> AsyncIterator[Pair]:
    url = postgres.new_database("instances")
    a = Instance("a", ensure_prosody_up, url, tmp_path, http)
    b = Instance("b", ensure_prosody_up, url, tmp_path, http)
    try:
        await a.start()
        await wait_for_health(a.base_url, healthy("granted"))
        await b.start()
        await wait_for_health(b.base_url, standby)
        yield Pair(a, b)
    finally:
        for instance in (b, a):
            await instance.process.stop()


async def no_more_management(*users: XmppUser) -> None:
    """Nothing else queued for these users (called once every outbox is empty)."""
    await asyncio.sleep(0.5)  # let a duplicate, if any were sent, arrive
    for user in users:
        assert user.management.empty(), f"{user.name} got a message twice"


async def outbox_drained(instance: Instance, http: aiohttp.ClientSession) -> None:
    await wait_for_health(
        instance.base_url, lambda status, body: status == 200 and body["outbox_pending"] == 0
    )


async def test_create_on_one_instance_accept_on_the_other_each_message_once(
    instances: Pair, xmpp_users, http: aiohttp.ClientSession,
) -> None:
    alice = await xmpp_users("alice")
    bob = await xmpp_users("bob")
    a, b = instances.a, instances.b
    assert (await a.health(http))[1]["xmpp"] == "connected"
    assert (await b.health(http))[1]["xmpp"] == "standby"

    # A token issued by one instance works on the other.
    alice_session = await a.api.login("alice")
    bob_session = await b.api.login("bob")

    status, body = await a.api.create(alice_session, toJid=jid("bob"))
    assert status == 200, body
    request_id = body["data"]["id"]
    assert await alice.next_management() == [management(request_id, "create", "sent", "pending")]
    assert await bob.next_management() == [management(request_id, "create", "received", "pending")]

    status, body = await b.api.transition(bob_session, request_id, "accept")
    assert (status, body["data"]["status"]) == (200, "accepted"), body
    assert await alice.next_management() == [management(request_id, "update", "sent", "accepted")]
    assert await bob.next_management() == [management(request_id, "update", "received", "accepted")]

    # Both instances see the same state; the tokens work crosswise.
    status, body = await b.api.get(alice_session, request_id)
    assert (status, body["data"]["status"]) == (200, "accepted"), body
    status, body = await a.api.get(bob_session, request_id)
    assert (status, body["data"]["status"]) == (200, "accepted"), body

    await outbox_drained(a, http)
    await no_more_management(alice, bob)


async def test_sigkill_of_the_connected_instance_the_standby_takes_over_and_delivers_everything(
    instances: Pair, xmpp_users, http: aiohttp.ClientSession,
) -> None:
    a, b = instances.a, instances.b
    senders = ("alice", "bob", "carol", "dave")
    clients = {name: await xmpp_users(name) for name in senders}
    sessions = {name: await a.api.login(name) for name in senders}

    acknowledged: dict[str, str] = {}  # request id -> sender
    killed = asyncio.Event()

    async def committed_by_the_dead(sender: str, target: str) -> str | None:
        """The request `a` committed before dying without answering (found on `b`)."""
        status, page = await b.api.list(sessions[sender], "sent", params={"format": "full", "limit": "1000"})
        assert status == 200, page
        return next((r["id"] for r in page["data"] if r["toJid"] == target), None)

    async def create(n: int) -> None:
        sender = senders[n % len(senders)]
        target = f"target{n}@example.test"
        answers: list[object] = []
        # Alternate between the instances; once `a` is dead, `b` takes its share.
        for instance in ((a, b) if n % 2 == 0 else (b, a)):
            if instance is a and killed.is_set():
                continue
            try:
                status, body = await instance.api.create(sessions[sender], toJid=target)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                answers.append(type(exc).__name__)
                continue  # the killed instance: try the other
            answers.append(status)
            if status == 200:
                acknowledged[body["data"]["id"]] = sender
                return
            if status == 409 and instance is b and len(answers) > 1:
                # `a` committed it, then died before answering: the request exists.
                request_id = await committed_by_the_dead(sender, target)
                if request_id is not None:
                    acknowledged[request_id] = sender
                    return
        raise AssertionError(f"create {n} was refused by both instances: {answers}")

    async def kill_a_midway() -> None:
        while len(acknowledged) < 15:
            await asyncio.sleep(0.01)
        assert await a.process.kill() == -signal.SIGKILL
        killed.set()

    killer = asyncio.create_task(kill_a_midway())
    waves = [create(n) for n in range(50)]
    # Not all at once: creates keep coming while the kill happens.
    for start in range(0, 50, 5):
        await asyncio.gather(*waves[start:start + 5])
    await killer
    assert len(acknowledged) == 50

    # The standby connects within seconds...
    await wait_for_health(b.base_url, healthy("granted"))
    # ...and every acknowledged create's message reaches its sender (at least once).
    expected = {name: {i for i, s in acknowledged.items() if s == name} for name in senders}
    for name, client in clients.items():
        seen: set[str] = set()
        async with asyncio.timeout(60):
            while not expected[name] <= seen:
                message = await client.management.get()
                if message.handshake.get("action") == "create":
                    seen.add(message.handshake["id"])
    await outbox_drained(b, http)
