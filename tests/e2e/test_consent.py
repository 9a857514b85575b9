"""DESIGN "Consent rules" end to end (issue #9): real Prosody, real clients, real HTTP.

Each test is one way consent did not hold before: a user's own roster overwritten,
a managed device watched without an invitation, a deleted device still shared, a
share across served domains undone by the first probe, one account with several
identities, a contact removed in a client that stayed `accepted`, a realm's users
refused as managers, roster changes dropped while the server granted no privilege.
The last test records what Prosody 0.12 cannot do: show the contact's presence at
once after an accept (README, "Presence right after an accept").
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from component.__main__ import Service
from component.config import parse_config
from local_prosody import LocalProsody, free_port
from local_ejabberd import LocalEjabberd
from tests.e2e.conftest import (
    both_servers,
    COMPONENT,
    OTHER_DOMAIN,
    PASSWORDS,
    REPO,
    ExtensionPresence,
    RestApi,
    ServiceFactory,
    Session,
    SharingMessage,
    XmppUser,
    healthy,
    jid,
    management,
    service_config,
    stop_service,
    toml_text,
    wait_for_health,
    wait_until,
)
from tests.e2e.test_subscriptions import (
    Tenant,
    assert_kazoo_success,
    ext_jid,
    listing,
    post_state,
    provision,
    sequences,
    shows,
    subscribe,
)

pytestmark = pytest.mark.e2e

SHARE = "/v2/share/device"
DESK = "2001"  # alice manages the desk phone (provision()): its extension JID is 2001@component


# ---- helpers -------------------------------------------------------------------------


@pytest.fixture
async def tenant(api: RestApi) -> Tenant:
    """The Kazoo account of example.test: alice manages the desk phone (2001) and a softphone."""
    return await provision(api)


async def accepted(api: RestApi, sender: Session, receiver: Session) -> str:
    status, body = await api.create(sender, toJid=receiver.jid)
    assert status == 200, body
    request_id = body["data"]["id"]
    status, body = await api.transition(receiver, request_id, "accept")
    assert (status, body["data"]["status"]) == (200, "accepted"), body
    return request_id


async def share_desk(api: RestApi, tenant: Tenant, manager: Session, user: str) -> str:
    status, body = await api.xlink(
        "POST", SHARE, manager.token,
        body={"device_id": tenant.desk_id, "user": user, "expire": 3600, "mode": "app"},
    )
    assert status == 200, body
    return body["invite_code"]


async def xlink_command(api: RestApi, who: Session, action: str, code: str) -> tuple[int, Any]:
    return await api.xlink("POST", f"{SHARE}/{action}", who.token, body={"invite_code": code})


async def share_states(api: RestApi, who: Session) -> dict[str, str]:
    status, body = await api.xlink("GET", f"{SHARE}/list", who.token)
    assert status == 200, body
    return {entry["invite_code"]: entry["state"] for entry in body}


def sharing(code: str, side: str, status: str, tenant: Tenant) -> SharingMessage:
    return SharingMessage(
        COMPONENT, "management",
        {"id": code, "action": "update", "status": status, "device_id": tenant.desk_id, "mode": "app", "type": side},
    )


async def settle(user: XmppUser) -> None:
    """A round trip through Prosody: whatever it routed to `user` before has arrived."""
    await user.roster()


# ---- rosters belong to their users ------------------------------------------------------


@both_servers
async def test_accept_and_interrupt_keep_a_contacts_name_and_groups(
    api: RestApi, alice: XmppUser, bob: XmppUser
) -> None:
    """The issue's case: alice had bob as "Bobby" in "Friends"; accept made the item
    name "bob", no group; interrupt removed bob from her roster."""
    await alice.set_contact(bob.jid, "Bobby", ("Friends",))
    await alice.roster_push_for(bob.jid, "none")
    a, b = await api.login("alice"), await api.login("bob")

    request_id = await accepted(api, a, b)
    await alice.roster_push_for(bob.jid, "to")
    await bob.roster_push_for(alice.jid, "from")
    assert (await alice.roster_items())[bob.jid] == ("to", "Bobby", ("Friends",))
    assert (await bob.roster_items())[alice.jid] == ("from", "alice", ())  # the service's new item

    status, body = await api.transition(b, request_id, "interrupt")
    assert (status, body["data"]["status"]) == (200, "interrupted")
    await alice.roster_push_for(bob.jid, "none")
    await bob.roster_push_for(alice.jid, "remove")
    # alice's contact is hers: it stays, named and grouped. bob's item was the service's: gone.
    assert await alice.roster_items() == {bob.jid: ("none", "Bobby", ("Friends",))}
    assert await bob.roster_items() == {}


@both_servers
async def test_a_subscription_the_users_made_themselves_survives_the_consent(
    api: RestApi, alice: XmppUser, bob: XmppUser
) -> None:
    """bob already saw alice (a plain XMPP subscription alice approved). alice's request
    adds the other direction; bob's interrupt takes back that direction only."""
    bob.send_subscription(alice.jid, "subscribe")
    (request,) = await alice.next_contact_presence()
    assert request[1] == "subscribe"
    alice.send_subscription(bob.jid, "subscribed")
    await alice.roster_push_for(bob.jid, "from")
    await bob.roster_push_for(alice.jid, "to")
    await alice.set_contact(bob.jid, "Bobby", ("Friends",))
    a, b = await api.login("alice"), await api.login("bob")

    request_id = await accepted(api, a, b)
    await alice.roster_push_for(bob.jid, "both")
    await bob.roster_push_for(alice.jid, "both")
    assert (await alice.roster_items())[bob.jid] == ("both", "Bobby", ("Friends",))

    status, _ = await api.transition(b, request_id, "interrupt")
    assert status == 200
    await alice.roster_push_for(bob.jid, "from")
    await bob.roster_push_for(alice.jid, "to")
    assert (await alice.roster_items())[bob.jid] == ("from", "Bobby", ("Friends",))
    assert (await bob.roster_items())[alice.jid][0] == "to"  # bob still sees alice, as before


# ---- managed devices need an invitation ---------------------------------------------------


async def test_a_managed_device_refuses_strangers_and_revoked_users(
    api: RestApi, alice: XmppUser, bob: XmppUser, carol: XmppUser, tenant: Tenant
) -> None:
    # carol was never invited to the desk phone: `unsubscribed`, nothing recorded.
    carol.send_subscription(ext_jid(DESK), "subscribe")
    assert await carol.next_extension_presence() == [ExtensionPresence(ext_jid(DESK), "unsubscribed")]
    assert await listing(api, tenant) == {"subscriptions": {}}
    # The same extension-shaped address without a manager is open to the realm.
    await subscribe(carol, "*3101")

    a, b = await api.login("alice"), await api.login("bob")
    code = await share_desk(api, tenant, a, bob.jid)
    assert (await xlink_command(api, b, "accept", code))[0] == 200
    await bob.roster_push_for(ext_jid(DESK), "to")
    assert await bob.next_extension_presence() == [shows(DESK, "terminated", 1)]
    assert set(sequences(await listing(api, tenant))) == {("*3101", carol.jid), (DESK, bob.jid)}

    # alice revokes; bob subscribing again is refused again: revocation sticks.
    assert (await xlink_command(api, a, "cancel", code))[0] == 200
    assert await bob.next_extension_presence() == [ExtensionPresence(ext_jid(DESK), "unavailable")]
    await bob.roster_push_for(ext_jid(DESK), "remove")
    bob.send_subscription(ext_jid(DESK), "subscribe")
    assert await bob.next_extension_presence() == [ExtensionPresence(ext_jid(DESK), "unsubscribed")]
    assert set(sequences(await listing(api, tenant))) == {("*3101", carol.jid)}
    # And nothing of the device reaches bob or carol any more.
    await post_state(api, tenant.path(f"/devices/{tenant.desk_id}/presence"), {"action": "set", "state": "early"})
    await settle(bob)
    await settle(carol)
    assert bob.extension_presence.empty() and carol.extension_presence.empty()


# ---- deleting ends access -------------------------------------------------------------------


async def test_deleting_a_device_revokes_its_shares(
    api: RestApi, alice: XmppUser, bob: XmppUser, carol: XmppUser, tenant: Tenant
) -> None:
    a, b, c = await api.login("alice"), await api.login("bob"), await api.login("carol")
    given = await share_desk(api, tenant, a, bob.jid)
    assert (await xlink_command(api, b, "accept", given))[0] == 200
    await bob.roster_push_for(ext_jid(DESK), "to")
    assert await bob.next_extension_presence() == [shows(DESK, "terminated", 1)]
    waiting = await share_desk(api, tenant, a, carol.jid)
    await alice.next_sharing(3)  # create, accept, create
    await bob.next_sharing(2)
    await carol.next_sharing()

    status, body = await api.kazoo("DELETE", tenant.path(f"/devices/{tenant.desk_id}"))
    assert_kazoo_success(status, body)

    # Both shares are invalid, both parties of each are told, bob's access is gone.
    assert sorted(await alice.next_sharing(2), key=lambda m: m.attrs["id"]) == sorted(
        [sharing(given, "sent", "invalid", tenant), sharing(waiting, "sent", "invalid", tenant)],
        key=lambda m: m.attrs["id"],
    )
    assert await bob.next_sharing() == [sharing(given, "received", "invalid", tenant)]
    assert await carol.next_sharing() == [sharing(waiting, "received", "invalid", tenant)]
    assert await bob.next_extension_presence() == [ExtensionPresence(ext_jid(DESK), "unavailable")]
    await bob.roster_push_for(ext_jid(DESK), "remove")
    assert ext_jid(DESK) not in await bob.roster()
    assert await listing(api, tenant) == {"subscriptions": {}}
    assert await share_states(api, b) == {given: "invalid"}
    assert await share_states(api, c) == {waiting: "invalid"}

    # Cancelling afterwards says why it no longer works and revokes nothing more.
    status, body = await xlink_command(api, a, "cancel", given)
    assert (status, body["error"]["code"]) == (403, 4031012)
    status, body = await xlink_command(api, c, "accept", waiting)
    assert (status, body["error"]["code"]) == (403, 4031012)
    # The extension number is a plain extension now: its state reaches no former holder.
    await post_state(api, tenant.path(f"/presence/{DESK}"), {"action": "set", "state": "confirmed"})
    await settle(bob)
    assert bob.extension_presence.empty()


async def test_deleting_an_account_ends_every_share_and_subscription(
    api: RestApi, bob: XmppUser, carol: XmppUser, tenant: Tenant
) -> None:
    a, b = await api.login("alice"), await api.login("bob")
    code = await share_desk(api, tenant, a, bob.jid)
    assert (await xlink_command(api, b, "accept", code))[0] == 200
    await bob.roster_push_for(ext_jid(DESK), "to")
    await subscribe(carol, "*3101")
    await bob.next_extension_presence()

    status, body = await api.kazoo("DELETE", tenant.path())
    assert assert_kazoo_success(status, body)["id"] == tenant.account_id

    await bob.roster_push_for(ext_jid(DESK), "remove")
    assert await carol.next_extension_presence(2) == [
        ExtensionPresence(ext_jid("*3101"), "unsubscribed"), ExtensionPresence(ext_jid("*3101"), "unavailable"),
    ]
    assert (await carol.roster()).get(ext_jid("*3101"), "none") == "none"  # her server took `to` off
    assert await share_states(api, b) == {code: "invalid"}
    status, body = await api.kazoo("GET", tenant.path())
    assert status == 404, body


# ---- one consistent rule across served domains ------------------------------------------------


async def test_a_share_to_a_user_of_another_served_domain_survives_its_probes(
    make_service: ServiceFactory, ensure_prosody_up: LocalProsody, xmpp_users, http: aiohttp.ClientSession
) -> None:
    """The subscription is the device's account's: erin@other.test's logins probe the
    extension, and the answer is the device's state, not `unsubscribed`."""
    running = await make_service(ensure_prosody_up, domains=["example.test", OTHER_DOMAIN])
    api = RestApi(http, running.base_url)
    alice, erin = await xmpp_users("alice"), await xmpp_users("erin")
    tenant = await provision(api)
    a, e = await api.login("alice"), await api.login("erin")
    assert e.jid == "erin@other.test"

    code = await share_desk(api, tenant, a, erin.jid)
    assert (await xlink_command(api, e, "accept", code))[0] == 200
    await erin.roster_push_for(ext_jid(DESK), "to")
    assert await erin.next_extension_presence() == [shows(DESK, "terminated", 1)]

    await post_state(api, tenant.path(f"/devices/{tenant.desk_id}/presence"), {"action": "set", "state": "confirmed"})
    assert await erin.next_extension_presence() == [shows(DESK, "confirmed", 2)]

    # Her next login: Prosody probes 2001@component on her behalf.
    await erin.reconnect()
    assert await erin.next_extension_presence() == [shows(DESK, "confirmed", None)]
    await settle(erin)
    assert (await erin.roster())[ext_jid(DESK)] == "to"  # no `unsubscribed` undid it
    assert sequences(await listing(api, tenant)) == {(DESK, erin.jid): (2, "confirmed")}
    await alice.disconnect()


# ---- one account, one identity ----------------------------------------------------------


async def raw_login(api: RestApi, login: str, password: str) -> tuple[int, Any]:
    basic = base64.b64encode(f"{login}:{password}".encode()).decode()
    return await api.call("GET", api.LOGIN, headers={"Authorization": f"Basic {basic}"})


@pytest.mark.parametrize(
    "spelling",
    ["carol\u200b@example.test", "carol\u00ad@example.test", "car\ufeffol@example.test", "carol\u200d@example.test"],
    ids=["zero-width-space", "soft-hyphen", "bom", "zero-width-joiner"],
)
async def test_a_login_spelled_with_an_invisible_character_is_the_same_account(
    api: RestApi, spelling: str
) -> None:
    carol = await api.login("carol")
    status, body = await raw_login(api, spelling, PASSWORDS["carol"])
    assert status == 200, body
    assert body["loggedInUser"] == {"id": carol.user_id, "jid_im": "carol@example.test", "loginEmail": "carol@example.test"}

    # Duplicates, limits and transitions see one user: a second request by another spelling is a 409.
    alice = await api.login("alice")
    assert (await api.create(alice, toJid="carol@example.test"))[0] == 200
    status, body = await api.create(alice, toJid=spelling)
    assert (status, body["errorDetailsCode"]) == (409, 409661), body
    status, again = await raw_login(api, spelling, PASSWORDS["carol"])
    status, page = await api.call(
        "GET", f"/api/rainbow/enduser/v1.0/users/{carol.user_id}/presences/received", again["token"]
    )
    assert (status, page["total"]) == (200, 1)


async def test_a_login_the_server_case_folds_is_the_same_account(api: RestApi) -> None:
    """`Straße` is `strasse` for Prosody's nodeprep: the same account, the same id."""
    status, first = await raw_login(api, "strasse@example.test", PASSWORDS["strasse"])
    assert status == 200, first
    status, again = await raw_login(api, "Stra\u00dfe@example.test", PASSWORDS["strasse"])
    assert status == 200, again
    assert again["loggedInUser"]["id"] == first["loggedInUser"]["id"]
    assert again["loggedInUser"]["jid_im"] == "strasse@example.test"


async def test_what_the_server_refuses_is_refused(api: RestApi) -> None:
    status, body = await raw_login(api, "\u202ecarol@example.test", PASSWORDS["carol"])
    assert (status, body["errorDetailsCode"]) == (401, 401000), body
    alice = await api.login("alice")
    for refused in ("\u202ecarol@example.test", "\U0001f4de@example.test"):
        status, body = await api.create(alice, toJid=refused)
        assert (status, body["errorDetailsCode"]) == (400, 400000), body


# ---- consent ends from either side, from any client ---------------------------------------------


@both_servers
async def test_removing_the_watcher_in_a_client_interrupts_the_request(
    api: RestApi, alice: XmppUser, bob: XmppUser
) -> None:
    a, b = await api.login("alice"), await api.login("bob")
    request_id = await accepted(api, a, b)
    await alice.roster_push_for(bob.jid, "to")
    await bob.roster_push_for(alice.jid, "from")
    await alice.next_management(2)
    await bob.next_management(2)

    # bob removes alice in his client (RFC 6121 2.5: the server cancels both halves).
    await bob.remove_contact(alice.jid)
    # The service notices when bob's last resource goes (or, at the latest, at his next login:
    # ejabberd 23.01 forwards a user's available presence to the component, not the
    # unavailable one).
    await bob.disconnect()
    if at_next_login(bob):
        await bob.connect()
    assert await alice.next_management() == [management(request_id, "delete", "sent", "interrupted")]
    told = management(request_id, "delete", "received", "interrupted")
    if at_next_login(bob):
        assert await bob.next_management() == [told]  # online again: told at once
    else:
        await bob.connect()  # his message waited in the server's offline store

        async def bob_told() -> bool:
            return told in bob.offline

        await wait_until(bob_told)
    # The request is gone and alice's stale item (the service made it) too.
    assert (await api.get(a, request_id))[0] == 404
    await alice.roster_push_for(bob.jid, "remove")
    assert bob.jid not in await alice.roster()
    # A new request is a new request, not a conflict.
    status, body = await api.create(a, toJid=bob.jid)
    assert status == 200, body


@both_servers
async def test_unsubscribing_in_a_client_cancels_the_request(
    api: RestApi, alice: XmppUser, bob: XmppUser
) -> None:
    a, b = await api.login("alice"), await api.login("bob")
    request_id = await accepted(api, a, b)
    await alice.roster_push_for(bob.jid, "to")
    await alice.next_management(2)
    await bob.next_management(2)

    alice.send_subscription(bob.jid, "unsubscribe")  # alice stops watching bob
    await alice.roster_push_for(bob.jid, "none")
    await alice.disconnect()  # her last resource goes: the service checks her roster
    if at_next_login(alice):
        await alice.connect()  # ejabberd 23.01: at her next login
    assert await bob.next_management() == [management(request_id, "delete", "received", "canceled")]
    status, page = await api.list(b, "received")
    assert (status, page["total"]) == (200, 0)
    await wait_until(lambda: _absent_from_roster(bob, alice.jid))


def at_next_login(user: XmppUser) -> bool:
    """Whether the service checks `user`'s roster only at the next login, not when the last
    resource goes: ejabberd 23.01's mod_privilege forwards available presence only."""
    return isinstance(user.server, LocalEjabberd)


async def _absent_from_roster(user: XmppUser, contact: str) -> bool:
    return contact not in await user.roster()


@both_servers
async def test_removing_a_shared_device_in_a_client_ends_the_share(
    api: RestApi, alice: XmppUser, bob: XmppUser, tenant: Tenant
) -> None:
    a, b = await api.login("alice"), await api.login("bob")
    code = await share_desk(api, tenant, a, bob.jid)
    assert (await xlink_command(api, b, "accept", code))[0] == 200
    await bob.roster_push_for(ext_jid(DESK), "to")
    await alice.next_sharing(2)

    await bob.remove_contact(ext_jid(DESK))  # Prosody sends the extension `unsubscribe`
    assert await alice.next_sharing() == [sharing(code, "sent", "cancel", tenant)]
    assert await share_states(api, a) == {code: "cancel"}
    assert await listing(api, tenant) == {"subscriptions": {}}


# ---- realm membership is by domain -----------------------------------------------------------


async def test_any_user_of_the_realm_may_manage_a_device(api: RestApi, tenant: Tenant) -> None:
    """dave logged in once; nobody provisioned him. He is a member of example.test's account."""
    dave = await api.login("dave")
    status, body = await api.kazoo(
        "PUT", tenant.path("/devices"), body={"data": {"name": "Lab", "sip": {"username": "3001"}, "owner_id": dave.user_id}}
    )
    device = assert_kazoo_success(status, body, 201)
    assert device["owner_id"] == dave.user_id
    status, body = await api.kazoo("GET", tenant.path(f"/users/{dave.user_id}"))
    assert assert_kazoo_success(status, body) == {"id": dave.user_id, "username": "dave", "jid": dave.jid}
    # And he shares his device like any manager.
    status, body = await api.xlink(
        "POST", SHARE, dave.token, body={"device_id": device["id"], "user": jid("bob"), "expire": 60, "mode": "app"},
    )
    assert status == 200, body


# ---- roster changes wait for the privilege; resync re-derives them -------------------------------


async def test_roster_changes_wait_for_the_privilege_and_resync_rederives_them(
    unprivileged_prosody: LocalProsody, xmpp_users, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    server = unprivileged_prosody
    port = free_port()
    db_path = tmp_path / "presence.sqlite3"
    raw = service_config(server, db_path, port, privilege_wait_s=0.0)
    config_path = tmp_path / "config.toml"
    config_path.write_text(toml_text(raw))
    base_url = f"http://127.0.0.1:{port}"
    api = RestApi(http, base_url)

    # 1. A server that grants nothing: messages flow, roster changes wait in the outbox.
    service = Service(parse_config(raw))
    await service.start()
    try:
        await wait_for_health(base_url, healthy("unavailable"))
        alice, bob = await xmpp_users("alice", server), await xmpp_users("bob", server)
        a, b = await api.login("alice"), await api.login("bob")
        request_id = await accepted(api, a, b)
        await alice.next_management(2)
        assert await bob.next_management(2) == [
            management(request_id, "create", "received", "pending"),
            management(request_id, "update", "received", "accepted"),
        ]
        assert await alice.roster() == {} and await bob.roster() == {}
    finally:
        await stop_service(service)

    def roster_rows() -> list[str]:
        with sqlite3.connect(db_path) as conn:
            return [r[0] for r in conn.execute("SELECT recipient FROM outbox WHERE kind = 'roster' ORDER BY id")]

    assert roster_rows() == [alice.jid, bob.jid]

    # 2. Lost anyway (what versions before issue #9 did: deleted as if delivered)...
    with sqlite3.connect(db_path) as conn:
        conn.execute("DELETE FROM outbox")
    # ... and re-derived from the database by the documented command.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "component", "resync", "--config", str(config_path),
        cwd=str(REPO), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "queued 2 roster grant(s) and 0 removal(s) for 2 user(s)" in out.decode()
    assert roster_rows() == [alice.jid, bob.jid]

    # 3. The operator fixes the server: the next session applies them.
    server.grant_roster = True
    await asyncio.to_thread(server.restart)
    await alice.reconnect()
    await bob.reconnect()
    service = Service(parse_config(raw))
    await service.start()
    try:
        await wait_for_health(base_url, healthy("granted"))
        await wait_until(lambda: _holds(alice, bob.jid, "to"))
        await wait_until(lambda: _holds(bob, alice.jid, "from"))
        await wait_until(lambda: _outbox_empty(db_path))
    finally:
        await stop_service(service)


async def _holds(user: XmppUser, contact: str, subscription: str) -> bool:
    return (await user.roster()).get(contact) == subscription


async def _outbox_empty(db_path: Path) -> bool:
    def count() -> int:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM outbox").fetchone()[0]

    return await asyncio.to_thread(count) == 0


# ---- presence right after an accept: what Prosody 0.12 allows ------------------------------------


async def test_the_watcher_sees_the_contact_at_its_next_broadcast_or_by_probing(
    api: RestApi, alice: XmppUser, bob: XmppUser
) -> None:
    """XEP-0356 lets a component set roster items, not send presence on a user's behalf,
    and Prosody probes contacts only at a session's initial presence: after the accept,
    nothing sends bob's current presence to alice (README, "Presence right after an
    accept"). A client that probes on the `accepted` management message gets it at once
    (Prosody 0.12 routes client probes); otherwise bob's next broadcast brings it."""
    a, b = await api.login("alice"), await api.login("bob")
    await accepted(api, a, b)
    await alice.roster_push_for(bob.jid, "to")
    await alice.next_management(2)
    await settle(alice)
    assert alice.contact_presence.empty()  # the limitation, as measured

    alice.client.make_presence(pto=bob.jid, ptype="probe").send()
    ((sender, kind, _),) = await alice.next_contact_presence()
    assert (sender.partition("/")[0], kind) == (bob.jid, None)

    bob.broadcast("away")
    ((sender, kind, show),) = await alice.next_contact_presence()
    assert (sender.partition("/")[0], kind, show) == (bob.jid, None, "away")


# ---- a token acts for an account that exists ----------------------------------------------


async def test_an_account_deleted_on_the_server_loses_its_tokens(
    make_service: ServiceFactory, ensure_prosody_up: LocalProsody, http: aiohttp.ClientSession
) -> None:
    """Issue #10: tokens outlived the XMPP account until they expired; a JID created
    again later would have been somebody else's."""
    server = ensure_prosody_up
    server.register("zoe", "zoe-pw")
    try:
        running = await make_service(server, auth={"account_check_s": 0.2})
        api = RestApi(http, running.base_url)
        status, body = await raw_login(api, "zoe@example.test", "zoe-pw")
        assert status == 200, body
        token, zoe_id = body["token"], body["loggedInUser"]["id"]
        alice = await api.login("alice")
        presences = f"/api/rainbow/enduser/v1.0/users/{zoe_id}/presences/received"
        assert (await api.call("GET", presences, token))[0] == 200

        # Alice's account still exists: her token keeps working through the checks.
        server.unregister("zoe")

        async def zoe_refused() -> bool:
            return (await api.call("GET", presences, token))[0] == 401

        await wait_until(zoe_refused)
        assert (await api.list(alice, "received"))[0] == 200
    finally:
        try:
            server.unregister("zoe")
        except Exception:  # noqa: BLE001 - already gone
            pass
