"""Family 2 (presence subscriptions, Kazoo paths) end to end.

Real Prosody, real clients, real HTTP. A client subscribes to an extension's JID
(`{extension}@presence.example.test`) with an ordinary presence subscription;
Prosody keeps the roster item, the service keeps the subscription. Each state
change is checked where it is seen: the presence stanza the subscriber receives,
in order, and the Kazoo listing on the REST side.

Presence the clients see from an extension, as the service maps dialog states:
terminated -> no <show/>, status Idle; early -> away, Ringing; confirmed -> dnd,
Busy; the raw state and the per-subscriber sequence in
`<dialog xmlns='urn:xmpp:presence-consent:0' state=... sequence=.../>`. Probe
answers carry the state and no sequence (they are not notifications).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import pytest
from slixmpp.xmlstream import ET

from local_prosody import LocalProsody
from storage import Conn
from tests.e2e.conftest import (
    both_servers,
    ADMIN_TOKEN,
    COMPONENT,
    DOMAIN,
    NS_PRESENCE_STATE,
    ExtensionPresence,
    RestApi,
    RunningService,
    ServiceFactory,
    XmppUser,
    ServiceProcesses,
    error_condition,
    jid,
    wait_until,
)

pytestmark = pytest.mark.e2e

DAVE = jid("dave")  # the one [auth] xmpp_admins entry of these tests' service
HEX32 = re.compile(r"[0-9a-f]{32}")
HEX24 = re.compile(r"[0-9a-f]{24}")
# Seconds from 0000-01-01 to 1970-01-01 (Kazoo's Gregorian timestamps).
GREGORIAN_OFFSET_S = 62_167_219_200
SHOWN = {"terminated": (None, "Idle"), "early": ("away", "Ringing"), "confirmed": ("dnd", "Busy")}


def ext_jid(extension: str) -> str:
    return f"{extension}@{COMPONENT}"


def subscribed(extension: str) -> ExtensionPresence:
    return ExtensionPresence(ext_jid(extension), "subscribed")


def shows(extension: str, state: str, sequence: int | None) -> ExtensionPresence:
    """The available presence a subscriber gets for `state` (sequence None: a probe answer)."""
    show, status = SHOWN[state]
    return ExtensionPresence(
        ext_jid(extension), None, show, status, state, None if sequence is None else str(sequence)
    )


def gregorian_now() -> int:
    return int(time.time()) + GREGORIAN_OFFSET_S


# ---- fixtures ------------------------------------------------------------------------


@pytest.fixture
async def service(make_service: ServiceFactory, ensure_prosody_up: LocalProsody) -> RunningService:
    """The service with dave as its one XMPP admin (the <presencestate/> IQ)."""
    return await make_service(ensure_prosody_up, auth={"xmpp_admins": [DAVE]})


@dataclass(frozen=True)
class Tenant:
    """The provisioned account: alice (no presence_id) owns a desk phone (presence_id
    2001, SIP 1001) and a softphone (no presence_id, SIP 1002)."""

    account_id: str
    alice_id: str
    desk_id: str
    soft_id: str

    def path(self, rest: str = "") -> str:
        return f"/v2/accounts/{self.account_id}{rest}"


def assert_kazoo_success(status: int, body: Any, expected_status: int = 200, token: str = ADMIN_TOKEN) -> Any:
    """Kazoo's envelope, exactly; returns its `data`."""
    assert status == expected_status, body
    assert set(body) == {"auth_token", "data", "request_id", "revision", "status"}, body
    assert body["auth_token"] == token
    assert body["status"] == "success"
    assert body["revision"] == "undefined"
    assert isinstance(body["request_id"], str) and body["request_id"]
    return body["data"]


def assert_kazoo_error(
    status: int,
    body: Any,
    expected_status: int,
    message: str,
    field: str | None = None,
    rule: str | None = None,
    token: str = "",
) -> None:
    """Kazoo's error envelope: `data` is {FIELD: {RULE: {"message"}}} or {"message"}."""
    assert status == expected_status, body
    assert set(body) == {"auth_token", "data", "error", "message", "request_id", "status"}, body
    assert body["error"] == str(expected_status)
    assert body["message"] == message
    assert body["status"] == "error"
    assert body["auth_token"] == token
    assert isinstance(body["request_id"], str) and body["request_id"]
    if field is None:
        assert set(body["data"]) == {"message"}, body
        assert isinstance(body["data"]["message"], str) and body["data"]["message"]
    else:
        assert set(body["data"]) == {field}, body
        assert set(body["data"][field]) == {rule}, body
        detail = body["data"][field][rule]
        assert set(detail) == {"message"} and isinstance(detail["message"], str) and detail["message"]


async def provision(api: RestApi) -> Tenant:
    """PUT account, user and devices over REST with the admin token, checking each answer."""
    status, body = await api.kazoo("PUT", "/v2/accounts", body={"data": {"name": "Example", "realm": DOMAIN}})
    account = assert_kazoo_success(status, body, 201)
    assert set(account) == {"id", "name", "realm"} and HEX32.fullmatch(account["id"])
    assert (account["name"], account["realm"]) == ("Example", DOMAIN)
    a = f"/v2/accounts/{account['id']}"

    status, body = await api.kazoo("PUT", f"{a}/users", body={"data": {"username": "alice"}})
    user = assert_kazoo_success(status, body, 201)
    assert set(user) == {"id", "username", "jid"} and HEX24.fullmatch(user["id"])
    assert (user["username"], user["jid"]) == ("alice", jid("alice"))

    devices = {}
    for name, sent in {
        "desk": {"name": "Desk phone", "sip": {"username": "1001"}, "presence_id": "2001", "owner_id": user["id"]},
        "soft": {"name": "Softphone", "sip": {"username": "1002"}, "owner_id": user["id"]},
    }.items():
        status, body = await api.kazoo("PUT", f"{a}/devices", body={"data": sent})
        device = assert_kazoo_success(status, body, 201)
        assert HEX32.fullmatch(device["id"])
        assert device == {"id": device["id"], **sent}
        devices[name] = device["id"]
    return Tenant(account["id"], user["id"], devices["desk"], devices["soft"])


@pytest.fixture
async def tenant(api: RestApi) -> Tenant:
    return await provision(api)


async def subscribe(user: XmppUser, extension: str, sequence: int = 1) -> None:
    """Subscribe; the client gets `subscribed`, then the state, and a roster item 'to'."""
    user.send_subscription(ext_jid(extension), "subscribe")
    assert await user.next_extension_presence(2) == [subscribed(extension), shows(extension, "terminated", sequence)]
    await user.roster_push_for(ext_jid(extension), "to")


async def extension_roster(user: XmppUser) -> dict[str, str]:
    return {c: s for c, s in (await user.roster()).items() if c.endswith("@" + COMPONENT)}


async def post_state(api: RestApi, path: str, data: dict[str, Any]) -> None:
    status, body = await api.kazoo("POST", path, body={"data": data})
    assert assert_kazoo_success(status, body, 202) == "command sent"


async def listing(api: RestApi, tenant: Tenant, rest: str = "", **params: str) -> dict[str, Any]:
    status, body = await api.kazoo("GET", tenant.path(f"/presence{rest}"), params=params or None)
    return assert_kazoo_success(status, body)


def sequences(data: dict[str, Any]) -> dict[tuple[str, str], tuple[int, str]]:
    """(extension, subscriber) -> (notify.sequence, notify.body) of a listing."""
    out = {}
    for extension, events in data["subscriptions"].items():
        for event, subs in events.items():
            assert event == "presence"
            for sub in subs.values():
                out[(extension, sub["from"])] = (sub["notify"]["sequence"], sub["notify"]["body"])
    return out


# ---- subscribe, list, change state -------------------------------------------------------


@both_servers
async def test_subscribe_lists_and_state_changes_reach_the_subscriber_in_order(
    api: RestApi, alice: XmppUser, tenant: Tenant
) -> None:
    """alice manages the desk phone (2001): she may watch it without an invitation."""
    before = gregorian_now()
    await subscribe(alice, "*3101")
    await subscribe(alice, "2001")
    after = gregorian_now()
    # Prosody's own roster handling: the approved outbound subscription is 'to'.
    assert await extension_roster(alice) == {ext_jid("*3101"): "to", ext_jid("2001"): "to"}

    data = await listing(api, tenant)
    assert set(data) == {"subscriptions"}
    subs = data["subscriptions"]
    assert set(subs) == {"*3101", "2001"}
    ids = set()
    for extension in ("*3101", "2001"):
        assert set(subs[extension]) == {"presence"}
        ((sub_id, sub),) = subs[extension]["presence"].items()
        assert HEX32.fullmatch(sub_id)
        ids.add(sub_id)
        assert sub == {
            "expires": 0,
            "from": alice.jid,
            "notify": {"body": "terminated", "reply": 0, "sequence": 1},
            "stalker": COMPONENT,
            "timestamp": sub["timestamp"],
            "version": 1,
        }
        assert before <= sub["timestamp"] <= after
    assert len(ids) == 2

    assert await listing(api, tenant, event="presence") == data
    assert await listing(api, tenant, event="dialog") == {"subscriptions": {}}
    assert await listing(api, tenant, "/*3101") == {"subscriptions": {"*3101": subs["*3101"]}}
    assert await listing(api, tenant, "/2001", event="dialog") == {"subscriptions": {}}

    # The desk phone has presence_id 2001: three changes back to back arrive in order.
    device = tenant.path(f"/devices/{tenant.desk_id}/presence")
    await post_state(api, device, {"action": "set", "state": "confirmed"})
    await post_state(api, device, {"action": "set", "state": "early"})
    await post_state(api, device, {"action": "reset"})
    assert await alice.next_extension_presence(3) == [
        shows("2001", "confirmed", 2),
        shows("2001", "early", 3),
        shows("2001", "terminated", 4),
    ]
    assert sequences(await listing(api, tenant)) == {
        ("*3101", alice.jid): (1, "terminated"),
        ("2001", alice.jid): (4, "terminated"),
    }

    # The arbitrary extension, with the seed's older body for the reset.
    extension = tenant.path("/presence/*3101")
    await post_state(api, extension, {"action": "set", "state": "confirmed"})
    assert await alice.next_extension_presence() == [shows("*3101", "confirmed", 2)]
    await post_state(api, extension, {"reset": True})
    assert await alice.next_extension_presence() == [shows("*3101", "terminated", 3)]
    await post_state(api, device, {"reset": True})
    assert await alice.next_extension_presence() == [shows("2001", "terminated", 5)]

    final = await listing(api, tenant)
    assert sequences(final) == {("*3101", alice.jid): (3, "terminated"), ("2001", alice.jid): (5, "terminated")}
    # Same subscriptions as before: ids, subscriber and creation time are kept.
    for extension in ("*3101", "2001"):
        ((sub_id, sub),) = final["subscriptions"][extension]["presence"].items()
        ((old_id, old),) = subs[extension]["presence"].items()
        assert (sub_id, sub["from"], sub["timestamp"]) == (old_id, old["from"], old["timestamp"])


async def test_device_falls_back_to_sip_username_and_user_to_each_owned_device(
    api: RestApi, alice: XmppUser, tenant: Tenant
) -> None:
    status, body = await api.kazoo("GET", tenant.path(f"/devices/{tenant.soft_id}"))
    assert "presence_id" not in assert_kazoo_success(status, body)
    status, body = await api.kazoo("GET", tenant.path(f"/users/{tenant.alice_id}"))
    assert "presence_id" not in assert_kazoo_success(status, body)

    # alice manages both devices, so she may watch them.
    await subscribe(alice, "1002")  # the softphone's SIP username
    await subscribe(alice, "2001")  # the desk phone's presence_id

    # A device without presence_id is its SIP username's extension.
    await post_state(api, tenant.path(f"/devices/{tenant.soft_id}/presence"), {"action": "set", "state": "confirmed"})
    assert await alice.next_extension_presence() == [shows("1002", "confirmed", 2)]

    # A user without presence_id is each device it owns: both extensions change.
    user = tenant.path(f"/users/{tenant.alice_id}/presence")
    await post_state(api, user, {"action": "set", "state": "early"})
    assert sorted(await alice.next_extension_presence(2), key=lambda p: p.sender) == [
        shows("1002", "early", 3), shows("2001", "early", 2),
    ]
    await post_state(api, user, {"reset": True})
    assert sorted(await alice.next_extension_presence(2), key=lambda p: p.sender) == [
        shows("1002", "terminated", 4), shows("2001", "terminated", 3),
    ]

    assert sequences(await listing(api, tenant)) == {
        ("1002", alice.jid): (4, "terminated"),
        ("2001", alice.jid): (3, "terminated"),
    }


async def test_a_client_logging_in_later_gets_the_current_state_from_the_probe(
    api: RestApi, bob: XmppUser, carol: XmppUser, tenant: Tenant
) -> None:
    await subscribe(bob, "*3101")
    await subscribe(carol, "*3101")
    await carol.disconnect()

    await post_state(api, tenant.path("/presence/*3101"), {"action": "set", "state": "confirmed"})
    assert await bob.next_extension_presence() == [shows("*3101", "confirmed", 2)]
    assert carol.extension_presence.empty()

    # Her initial presence makes Prosody probe the extension ('to' in her roster);
    # the service answers from the database with the current state.
    await carol.connect()
    assert await carol.next_extension_presence() == [shows("*3101", "confirmed", None)]

    await post_state(api, tenant.path("/presence/*3101"), {"action": "reset"})
    assert await bob.next_extension_presence() == [shows("*3101", "terminated", 3)]
    assert await carol.next_extension_presence() == [shows("*3101", "terminated", 3)]
    # The sequence counts what was sent to carol, online or not; the probe answer is no notification.
    assert sequences(await listing(api, tenant)) == {
        ("*3101", bob.jid): (3, "terminated"),
        ("*3101", carol.jid): (3, "terminated"),
    }


async def test_unsubscribe_removes_the_listing_entry(api: RestApi, alice: XmppUser, tenant: Tenant) -> None:
    await subscribe(alice, "*3101")
    await subscribe(alice, "2001")

    alice.send_subscription(ext_jid("*3101"), "unsubscribe")
    assert await alice.next_extension_presence() == [ExtensionPresence(ext_jid("*3101"), "unavailable")]
    await alice.roster_push_for(ext_jid("*3101"), "none")
    assert await extension_roster(alice) == {ext_jid("*3101"): "none", ext_jid("2001"): "to"}

    data = await listing(api, tenant)
    assert set(data["subscriptions"]) == {"2001"}
    assert await listing(api, tenant, "/*3101") == {"subscriptions": {}}

    # The extension no longer reaches alice; the other one still does.
    await post_state(api, tenant.path("/presence/*3101"), {"action": "set", "state": "confirmed"})
    await post_state(api, tenant.path(f"/devices/{tenant.desk_id}/presence"), {"action": "set", "state": "confirmed"})
    assert await alice.next_extension_presence() == [shows("2001", "confirmed", 2)]


# ---- the admin IQ ----------------------------------------------------------------------


def presencestate(**attrs: str) -> ET.Element:
    return ET.Element(f"{{{NS_PRESENCE_STATE}}}presencestate", attrs)


async def test_xmpp_admin_sets_state_and_others_are_forbidden(
    api: RestApi, bob: XmppUser, dave: XmppUser, tenant: Tenant
) -> None:
    await subscribe(bob, "*3101")

    answer = await dave.iq("set", presencestate(extension="*3101", action="set", state="confirmed"))
    assert answer["type"] == "result", answer
    child = answer.xml.find(f"{{{NS_PRESENCE_STATE}}}presencestate")
    assert dict(child.attrib) == {"extension": "*3101", "realm": DOMAIN, "state": "confirmed"}
    assert await bob.next_extension_presence() == [shows("*3101", "confirmed", 2)]

    # bob is not an admin; a bad state is refused before anything changes.
    answer = await bob.iq("set", presencestate(extension="*3101", action="reset"))
    assert error_condition(answer) == "forbidden"
    answer = await dave.iq("set", presencestate(extension="*3101", action="set", state="ringing"))
    assert error_condition(answer) == "bad-request"
    answer = await dave.iq("get", presencestate(extension="*3101", action="reset"))
    assert error_condition(answer) == "bad-request"

    answer = await dave.iq("set", presencestate(extension="*3101", action="reset"))
    assert answer["type"] == "result", answer
    # The next thing bob sees is dave's reset: none of the refused IQs notified him.
    assert await bob.next_extension_presence() == [shows("*3101", "terminated", 3)]
    assert sequences(await listing(api, tenant)) == {("*3101", bob.jid): (3, "terminated")}


# ---- errors through the real stack ---------------------------------------------------------


async def test_kazoo_errors_in_kazoo_envelope(api: RestApi, service: RunningService, tenant: Tenant) -> None:
    device = tenant.path(f"/devices/{tenant.desk_id}/presence")

    # 400: per-field data {FIELD: {RULE: {"message"}}}
    for data, field, rule in [
        ({"action": "toggle"}, "action", "enum"),
        ({}, "action", "required"),
        ({"action": "set"}, "state", "required"),
        ({"action": "set", "state": "ringing"}, "state", "enum"),
        ({"action": "set", "state": 3}, "state", "type"),
    ]:
        status, body = await api.kazoo("POST", device, body={"data": data})
        assert_kazoo_error(status, body, 400, "invalid data", field, rule, token=ADMIN_TOKEN)
    status, body = await api.kazoo("POST", device, body={"action": "reset"})
    assert_kazoo_error(status, body, 400, "invalid data", "data", "required", token=ADMIN_TOKEN)
    status, body = await api.kazoo("POST", device, data='{"data": {"action": "reset"}')
    assert_kazoo_error(status, body, 400, "invalid data", token=ADMIN_TOKEN)
    status, body = await api.kazoo("POST", tenant.path("/devices/not-an-id/presence"), body={"data": {"reset": True}})
    assert_kazoo_error(status, body, 400, "invalid data", "device_id", "pattern", token=ADMIN_TOKEN)
    status, body = await api.kazoo("POST", tenant.path("/presence/bad%20extension"), body={"data": {"reset": True}})
    assert_kazoo_error(status, body, 400, "invalid data", "extension", "pattern", token=ADMIN_TOKEN)
    status, body = await api.kazoo("GET", tenant.path("/presence"), params={"event": "no such!"})
    assert_kazoo_error(status, body, 400, "invalid data", "event", "pattern", token=ADMIN_TOKEN)

    # 401: no token, or one the service never issued
    status, body = await api.kazoo("GET", tenant.path("/presence"), token=None)
    assert_kazoo_error(status, body, 401, "invalid credentials")
    status, body = await api.kazoo("POST", device, token="not-a-token", body={"data": {"reset": True}})
    assert_kazoo_error(status, body, 401, "invalid credentials", token="not-a-token")

    # 403: a user's token (Rainbow login) reads its own account but writes nothing
    alice = await api.login("alice")
    assert alice.user_id == tenant.alice_id  # one user id across families
    status, body = await api.kazoo("GET", tenant.path("/presence"), token=alice.token)
    assert assert_kazoo_success(status, body, token=alice.token) == {"subscriptions": {}}
    for method, path, data in [
        ("POST", device, {"action": "set", "state": "confirmed"}),
        ("POST", tenant.path(f"/users/{tenant.alice_id}/presence"), {"reset": True}),
        ("POST", tenant.path("/presence/*3101"), {"reset": True}),
        ("PUT", tenant.path("/devices"), {"name": "Mine", "sip": {"username": "1003"}}),
        ("PUT", "/v2/accounts", {"name": "Other", "realm": DOMAIN}),
    ]:
        status, body = await api.kazoo(method, path, token=alice.token, body={"data": data})
        assert_kazoo_error(status, body, 403, "forbidden", token=alice.token)

    # 404: unknown device, user, account
    unknown_account = f"/v2/accounts/{secrets.token_hex(16)}"
    for method, path in [
        ("POST", tenant.path(f"/devices/{secrets.token_hex(16)}/presence")),
        ("POST", tenant.path(f"/users/{secrets.token_hex(12)}/presence")),
        ("POST", f"{unknown_account}/presence/*3101"),
        ("GET", f"{unknown_account}/presence"),
        ("GET", tenant.path(f"/devices/{secrets.token_hex(16)}")),
    ]:
        status, body = await api.kazoo(method, path, body={"data": {"reset": True}} if method == "POST" else None)
        assert_kazoo_error(status, body, 404, "bad identifier", token=ADMIN_TOKEN)

    # None of the refused writes left a state behind.
    async def extension_states(conn: Conn) -> int:
        async with conn.execute("SELECT count(*) FROM extension_states") as cur:
            return (await cur.fetchone())[0]

    assert await service.db.read(extension_states) == 0


# ---- a SIGKILLed service keeps subscriptions and state --------------------------------------


async def test_sigkill_restart_keeps_subscriptions_state_and_sequence(
    xmpp_users, service_processes: ServiceProcesses,
) -> None:
    api = service_processes.api
    db_path = service_processes.db_path
    first = await service_processes.start()
    tenant = await provision(api)
    # alice manages the desk phone (2001); *3101 is open to the realm.
    alice, carol = await xmpp_users("alice"), await xmpp_users("carol")
    await subscribe(alice, "*3101")
    await subscribe(alice, "2001")
    await subscribe(carol, "*3101")
    await post_state(api, tenant.path("/presence/*3101"), {"action": "set", "state": "confirmed"})
    await post_state(api, tenant.path(f"/devices/{tenant.desk_id}/presence"), {"action": "set", "state": "early"})
    assert await alice.next_extension_presence(2) == [shows("*3101", "confirmed", 2), shows("2001", "early", 2)]
    assert await carol.next_extension_presence() == [shows("*3101", "confirmed", 2)]
    before = await listing(api, tenant)

    # Nothing left to deliver, so the new process has nothing to resend.
    def outbox_rows() -> int:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM outbox").fetchone()[0]

    async def outbox_empty() -> bool:
        return await asyncio.to_thread(outbox_rows) == 0

    await wait_until(outbox_empty)
    assert await first.kill() == -signal.SIGKILL

    await service_processes.start()

    assert await listing(api, tenant) == before

    # alice logs in again: Prosody probes both extensions, the answers show the last states.
    await alice.reconnect()
    answers = await alice.next_extension_presence(2)
    assert sorted(answers, key=lambda p: p.sender) == sorted(
        [shows("*3101", "confirmed", None), shows("2001", "early", None)], key=lambda p: p.sender
    )

    # A new change continues each subscriber's sequence.
    await post_state(api, tenant.path("/presence/*3101"), {"action": "reset"})
    assert await alice.next_extension_presence() == [shows("*3101", "terminated", 3)]
    assert await carol.next_extension_presence() == [shows("*3101", "terminated", 3)]
    assert sequences(await listing(api, tenant)) == {
        ("*3101", alice.jid): (3, "terminated"),
        ("*3101", carol.jid): (3, "terminated"),
        ("2001", alice.jid): (2, "early"),
    }
