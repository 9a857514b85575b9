"""`[roster] backend = "ejabberd_api"` against the real ejabberd 23.01 (scripts/local_ejabberd.py):
the backend alone (what it reads and writes through mod_http_api), then the service's
`/healthz` `roster` for each backend and when the API does not work."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from component.config import RosterConfig
from component.delivery import RosterRefused
from component.rosters import GRANTED, UNAVAILABLE, RosterItem
from component.xmpp import ejabberd_api
from component.xmpp.ejabberd_api import EjabberdApiRosters
from local_ejabberd import LocalEjabberd, free_port
from storage import outbox
from tests.e2e.conftest import (
    COMPONENT,
    DOMAIN,
    RestApi,
    ServiceFactory,
    healthy,
    jid,
    management,
    wait_for_health,
)

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("xmpp_server", ["ejabberd"], indirect=True)]

SERVED = frozenset({DOMAIN})


def backend(url: str, **on: object) -> EjabberdApiRosters:
    return EjabberdApiRosters(
        RosterConfig(backend="ejabberd_api", ejabberd_api_url=url, ejabberd_api_timeout_s=5), SERVED, COMPONENT,
        **on,  # type: ignore[arg-type]
    )


async def test_items_are_read_and_written_whole_through_the_api(xmpp_server: LocalEjabberd, xmpp_users) -> None:
    alice = await xmpp_users("alice")
    rosters = backend(xmpp_server.api_url)
    try:
        await rosters.session_started()
        assert rosters.status == GRANTED and rosters.allowed(alice.jid)
        assert not rosters.allowed("mallory@evil.test")

        # What the user set from a client is read back whole: name, every group.
        await alice.set_contact(jid("bob"), "Bobby", ("Friends", "Work"))
        await alice.roster_push_for(jid("bob"), "none")
        assert (await rosters.items(alice.jid))[jid("bob")] == RosterItem(jid("bob"), "none", "Bobby", ("Friends", "Work"))

        # A write sets the whole item and is pushed to the user's clients.
        await rosters.set_item(alice.jid, RosterItem(jid("bob"), "to", "Bobby", ("Friends", "Work")))
        assert await alice.roster_push_for(jid("bob"), "to") == [(jid("bob"), "to")]
        assert (await alice.roster_items())[jid("bob")] == ("to", "Bobby", ("Friends", "Work"))
        # A contact on the component (family 2 and 3 items), without name or group.
        device = f"2001@{COMPONENT}"
        await rosters.set_item(alice.jid, RosterItem(device, "to"))
        await alice.roster_push_for(device, "to")
        assert (await rosters.items(alice.jid))[device] == RosterItem(device, "to")

        await rosters.remove_item(alice.jid, jid("bob"))
        await alice.roster_push_for(jid("bob"), "remove")
        await rosters.remove_item(alice.jid, jid("bob"))  # already gone: done
        assert set(await rosters.items(alice.jid)) == {device}
        await rosters.remove_item(alice.jid, device)
        assert await alice.roster() == {}
    finally:
        await rosters.close()


async def test_the_users_own_pending_request_reads_as_ask(xmpp_server: LocalEjabberd, xmpp_users) -> None:
    alice = await xmpp_users("alice")
    rosters = backend(xmpp_server.api_url)
    try:
        alice.send_subscription(jid("carol"), "subscribe")  # carol is offline: it stays pending
        await alice.roster_push_for(jid("carol"), "none")
        assert (await rosters.items(alice.jid))[jid("carol")].ask == "subscribe"
        await rosters.set_item(alice.jid, RosterItem(jid("carol"), "from", None, (), "subscribe"))
        await alice.roster_push_for(jid("carol"), "from")
        # add_rosteritem keeps it (measured on 23.01): the merge rule "keep the user's
        # pending request" holds on this backend too.
        assert (await rosters.items(alice.jid))[jid("carol")] == RosterItem(jid("carol"), "from", None, (), "subscribe")
    finally:
        await rosters.close()


async def test_an_api_that_does_not_answer_makes_changes_wait_until_it_does(
    xmpp_server: LocalEjabberd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ejabberd_api, "RECHECK_S", 0.05)
    granted = asyncio.Event()
    rosters = backend(f"http://127.0.0.1:{free_port()}/api", on_granted=granted.set)
    try:
        await rosters.session_started()
        assert rosters.status == UNAVAILABLE and not rosters.allowed(jid("alice"))
        with pytest.raises(RosterRefused):
            await rosters.items(jid("alice"))
        # The API comes (here: the right URL); the re-check grants and wakes the dispatcher.
        rosters.url = xmpp_server.api_url
        await asyncio.wait_for(granted.wait(), 20)
        assert rosters.status == GRANTED
    finally:
        await rosters.close()


async def test_a_path_without_mod_http_api_is_unavailable(xmpp_server: LocalEjabberd) -> None:
    rosters = backend(xmpp_server.api_url.replace("/api", "/nothing-here"))
    try:
        await rosters.session_started()
        assert rosters.status == UNAVAILABLE
    finally:
        await rosters.close()


# ---- the service: /healthz roster for each backend ------------------------------------------


async def test_healthz_says_unavailable_while_the_api_does_not_work_and_messages_still_flow(
    xmpp_server: LocalEjabberd, make_service: ServiceFactory, xmpp_users, http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    running = await make_service(
        xmpp_server, roster="unavailable",
        sections={"roster": {"backend": "ejabberd_api", "ejabberd_api_url": f"http://127.0.0.1:{free_port()}/api"}},
    )
    api = RestApi(http, running.base_url)
    alice, bob = await xmpp_users("alice"), await xmpp_users("bob")
    a, b = await api.login("alice"), await api.login("bob")
    status, body = await api.create(a, toJid=bob.jid)
    request_id = body["data"]["id"]
    assert await alice.next_management() == [management(request_id, "create", "sent", "pending")]
    status, body = await api.transition(b, request_id, "accept")
    assert (status, body["data"]["status"]) == (200, "accepted")
    assert await bob.next_management(2) == [
        management(request_id, "create", "received", "pending"),
        management(request_id, "update", "received", "accepted"),
    ]
    assert await alice.roster() == {} and await bob.roster() == {}  # the roster rows wait
    # The messages are confirmed and deleted; the two roster rows wait.
    await wait_for_health(running.base_url, lambda s, b: healthy("unavailable")(s, b) and b["outbox_pending"] == 2)
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("component") and r.levelname == "WARNING"]
    assert any("ejabberd's API" in w and "api_permissions" in w for w in warnings), warnings


async def test_backend_none_is_off_and_leaves_rosters_alone(
    xmpp_server: LocalEjabberd, make_service: ServiceFactory, xmpp_users, http: aiohttp.ClientSession
) -> None:
    running = await make_service(xmpp_server, roster="off", sections={"roster": {"backend": "none"}})
    api = RestApi(http, running.base_url)
    alice, bob = await xmpp_users("alice"), await xmpp_users("bob")
    a, b = await api.login("alice"), await api.login("bob")
    status, body = await api.create(a, toJid=bob.jid)
    request_id = body["data"]["id"]
    status, body = await api.transition(b, request_id, "accept")
    assert (status, body["data"]["status"]) == (200, "accepted")
    assert await alice.next_management(2) == [
        management(request_id, "create", "sent", "pending"), management(request_id, "update", "sent", "accepted"),
    ]
    status, health = await wait_for_health(running.base_url, lambda s, b: healthy("off")(s, b) and b["outbox_pending"] == 0)
    assert await alice.roster() == {} and await bob.roster() == {}


async def test_xep0356_on_ejabberd_23_01_says_to_use_the_api(
    xmpp_server: LocalEjabberd, make_service: ServiceFactory, xmpp_users, http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The measured pitfall: 23.01 advertises roster "both" in urn:xmpp:privilege:1 and fails
    every privileged roster set. The service says which backend to use, twice: at the
    advertisement and at the first failed change (which is retried, never dropped)."""
    caplog.set_level(logging.INFO)
    running = await make_service(xmpp_server, sections={"roster": {"backend": "xep0356"}})
    api = RestApi(http, running.base_url)
    alice, bob = await xmpp_users("alice"), await xmpp_users("bob")
    a, b = await api.login("alice"), await api.login("bob")
    status, body = await api.create(a, toJid=bob.jid)
    status, body = await api.transition(b, body["data"]["id"], "accept")
    assert (status, body["data"]["status"]) == (200, "accepted")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    async with asyncio.timeout(20):
        while not any("failed a privileged roster IQ" in w for w in warnings()):
            await asyncio.sleep(0.05)
    assert any("urn:xmpp:privilege:1" in w and 'backend = "ejabberd_api"' in w for w in warnings())
    assert any("internal-server-error" in w and 'backend = "ejabberd_api"' in w for w in warnings())
    assert await alice.roster() == {}  # nothing shared: the rows wait for a retry
    assert (await running.db.read(outbox.count)) >= 1
