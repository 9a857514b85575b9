"""Family 3 (device sharing, Xlink paths) end to end.

Real Prosody, real clients, a real SMTP server (aiosmtpd on loopback), real HTTP.
alice manages the desk phone (provisioned over Kazoo with the admin token:
presence_id 2001, owner_id alice) and shares it three ways: by app to a named
user, by e-mail, and by QR code. Each change is checked where it is seen: the
`<devicesharing/>` management messages both parties receive, the invitee's roster
and the device's presence, family 2's subscription listing, each party's
`GET /v2/share/device/list`, the mail on the SMTP server.

Who may answer a share: an `app` share, and an `email` share to an address a
provisioned user has, are bound to that user (anyone else gets 4041018, no
oracle); a `qrcode` share, and an `email` share to an unknown address, go to the
first holder of the code who answers. A later holder of a QR code is told why it
no longer works (4031009 once accepted); an e-mailed code then belongs to its
answerer like an `app` share (4041018 for anyone else).

Expiry runs on an injected clock (STYLE: time is injected): the test moves the
service's clock past `expire_date` and the sweeper (every 0.2 s here) persists
`overtime` and tells both parties; nothing sleeps for the expiry itself.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from slixmpp.xmlstream import ET

from local_prosody import LocalProsody
from tests.e2e.conftest import (
    both_servers,
    COMPONENT,
    ISO_MS,
    NS_SHARE,
    AdjustableClock,
    ExtensionPresence,
    RestApi,
    RunningService,
    ServiceFactory,
    Session,
    SharingMessage,
    SmtpSink,
    XmppUser,
    error_condition,
    jid,
)
from tests.e2e.test_subscriptions import (
    Tenant,
    assert_kazoo_success,
    ext_jid,
    extension_roster,
    listing,
    post_state,
    provision,
    sequences,
    shows,
    subscribe,
)

pytestmark = pytest.mark.e2e

SHARE = "/v2/share/device"
DESK = "2001"  # the desk phone's presence_id: its extension, `2001@presence.example.test`
CAROL_EMAIL = "carol@mail.example"
SENDER = "presence@example.test"
PUBLIC_URL = "https://presence.example.test:8443"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHARE_FIELDS = {
    "invite_code", "from_id", "from_user", "to_id", "to_user", "device_id", "state",
    "create_date", "expire_date", "mode", "authority", "reason",
}


# ---- fixtures ------------------------------------------------------------------------


@pytest.fixture
def clock() -> AdjustableClock:
    return AdjustableClock()


@pytest.fixture
async def service(
    make_service: ServiceFactory, ensure_prosody_up: LocalProsody, smtp_server: SmtpSink, clock: AdjustableClock
) -> RunningService:
    """The service with e-mail sharing through the test's SMTP server and a fast sweeper."""
    return await make_service(
        ensure_prosody_up,
        clock=clock,
        sections={
            "smtp": {"host": "127.0.0.1", "port": smtp_server.port, "sender": SENDER, "timeout_s": 5.0},
            "sharing": {"sweep_interval_s": 0.2, "public_url": PUBLIC_URL},
        },
    )


@dataclass(frozen=True)
class World:
    """The provisioned tenant (alice manages the desk phone; carol has an e-mail
    address) and a REST session (token for Access-Token) for each user."""

    tenant: Tenant
    carol_id: str
    alice: Session
    bob: Session
    carol: Session
    dave: Session

    @property
    def device(self) -> str:
        return self.tenant.desk_id


@pytest.fixture
async def world(api: RestApi) -> World:
    tenant = await provision(api)
    status, body = await api.kazoo(
        "PUT", tenant.path("/users"), body={"data": {"username": "carol", "email": CAROL_EMAIL}}
    )
    carol = assert_kazoo_success(status, body, 201)
    assert carol == {"id": carol["id"], "username": "carol", "jid": jid("carol"), "email": CAROL_EMAIL}
    sessions = {name: await api.login(name) for name in ("alice", "bob", "carol", "dave")}
    # One user id across families: the provisioned ids are the logged-in ones.
    assert sessions["alice"].user_id == tenant.alice_id
    assert sessions["carol"].user_id == carol["id"]
    return World(tenant, carol["id"], **sessions)


# ---- helpers -------------------------------------------------------------------------


def sharing(code: str, action: str, side: str, status: str, device: str, mode: str) -> SharingMessage:
    """The management message a party on `side` ('sent' = manager, 'received' = invitee) must get."""
    return SharingMessage(
        COMPONENT,
        "management",
        {"id": code, "action": action, "status": status, "device_id": device, "mode": mode, "type": side},
    )


def assert_xlink_error(status: int, body: Any, code: int) -> None:
    """Xlink's envelope, exactly: {"error": {"code", "msg"}}, HTTP status = code // 10000."""
    assert status == code // 10000, (status, body)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "msg"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["msg"], str) and body["error"]["msg"]


async def share(api: RestApi, who: Session, **fields: Any) -> str:
    status, body = await api.xlink("POST", SHARE, who.token, body=fields)
    assert status == 200, body
    assert set(body) == {"invite_code"}, body
    code = body["invite_code"]
    assert isinstance(code, str) and len(code) >= 22  # >= 128 bits, URL-safe
    return code


async def command(api: RestApi, who: Session, action: str, code: str, **extra: Any) -> None:
    """cancel / accept / deny that must succeed: 200 with an empty body."""
    status, body = await api.xlink("POST", f"{SHARE}/{action}", who.token, body={"invite_code": code, **extra})
    assert (status, body) == (200, None)


async def refused(api: RestApi, who: Session, action: str, code: str, expected: int, **extra: Any) -> None:
    status, body = await api.xlink("POST", f"{SHARE}/{action}", who.token, body={"invite_code": code, **extra})
    assert_xlink_error(status, body, expected)


async def shares_of(api: RestApi, who: Session) -> list[dict[str, Any]]:
    status, body = await api.xlink("GET", f"{SHARE}/list", who.token)
    assert status == 200, body
    assert isinstance(body, list)
    for entry in body:
        assert set(entry) == SHARE_FIELDS, entry
        assert ISO_MS.fullmatch(entry["create_date"]) and ISO_MS.fullmatch(entry["expire_date"])
    return body


def entry(
    code: str,
    world: World,
    to: Session | None,
    state: str,
    mode: str,
    to_user: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """A list entry without its dates (checked separately)."""
    return {
        "invite_code": code,
        "from_id": world.alice.user_id,
        "from_user": world.alice.jid,
        "to_id": to.user_id if to else None,
        "to_user": to.jid if to else to_user,
        "device_id": world.device,
        "state": state,
        "mode": mode,
        "authority": "RW",
        "reason": reason,
    }


def lifetime_s(listed: dict[str, Any]) -> float:
    """expire_date - create_date of a list entry, in seconds."""
    parse = lambda iso: datetime.fromisoformat(iso.replace("Z", "+00:00"))  # noqa: E731
    return (parse(listed["expire_date"]) - parse(listed["create_date"])).total_seconds()


def undated(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k not in ("create_date", "expire_date")} for e in entries]


def xlink_code(answer: Any) -> int:
    """The application-specific condition an XMPP error carries (RFC 6120 8.3.4)."""
    child = answer.xml.find(f"{{jabber:client}}error/{{{NS_SHARE}}}xlink-error")
    assert child is not None, answer
    return int(child.get("code"))


def deviceshare_of(answer: Any) -> dict[str, str]:
    assert answer["type"] == "result", answer
    child = answer.xml.find(f"{{{NS_SHARE}}}deviceshare")
    assert child is not None, answer
    return dict(child.attrib)


# ---- (1) app: accept gives the device's presence, cancel revokes it ------------------------------


@both_servers
async def test_app_share_accepted_gives_presence_and_cancel_revokes_it(
    api: RestApi, world: World, alice: XmppUser, bob: XmppUser, carol: XmppUser
) -> None:
    # alice, the desk phone's manager, subscribes the family 2 way: she witnesses every change.
    await subscribe(alice, DESK)
    code = await share(api, world.alice, device_id=world.device, user=bob.jid, expire=3600, mode="app")
    assert await alice.next_sharing() == [sharing(code, "create", "sent", "pending", world.device, "app")]
    assert await bob.next_sharing() == [sharing(code, "create", "received", "pending", world.device, "app")]

    pending = entry(code, world, world.bob, "pending", "app")
    assert undated(await shares_of(api, world.alice)) == [pending]
    (listed,) = await shares_of(api, world.bob)
    assert undated([listed]) == [pending]
    assert lifetime_s(listed) == 3600

    await command(api, world.bob, "accept", code)
    assert await alice.next_sharing() == [sharing(code, "update", "sent", "accept", world.device, "app")]
    assert await bob.next_sharing() == [sharing(code, "update", "received", "accept", world.device, "app")]
    # XEP-0356 roster push of the device's extension, then the device's current state.
    await bob.roster_push_for(ext_jid(DESK), "to")
    assert await extension_roster(bob) == {ext_jid(DESK): "to"}
    assert await bob.next_extension_presence() == [shows(DESK, "terminated", 1)]

    # The subscription shows in family 2's listing, held by bob.
    data = await listing(api, world.tenant)
    assert set(data["subscriptions"]) == {DESK}
    (bobs,) = [s for s in data["subscriptions"][DESK]["presence"].values() if s["from"] == bob.jid]
    assert bobs == {
        "expires": 0,
        "from": bob.jid,
        "notify": {"body": "terminated", "reply": 0, "sequence": 1},
        "stalker": COMPONENT,
        "timestamp": bobs["timestamp"],
        "version": 1,
    }
    assert sequences(data) == {(DESK, bob.jid): (1, "terminated"), (DESK, alice.jid): (1, "terminated")}

    # Later state changes of the device reach bob.
    await post_state(api, world.tenant.path(f"/devices/{world.device}/presence"), {"action": "set", "state": "confirmed"})
    assert await bob.next_extension_presence() == [shows(DESK, "confirmed", 2)]
    assert await alice.next_extension_presence() == [shows(DESK, "confirmed", 2)]

    accepted = entry(code, world, world.bob, "accept", "app")
    assert undated(await shares_of(api, world.alice)) == [accepted]
    assert undated(await shares_of(api, world.bob)) == [accepted]
    await refused(api, world.bob, "accept", code, 4031009)  # replay
    await refused(api, world.bob, "deny", code, 4031009)
    await refused(api, world.carol, "accept", code, 4041018)  # not hers: no oracle

    # Revocation: the manager cancels the accepted share.
    await command(api, world.alice, "cancel", code, reason="desk reassigned")
    assert await alice.next_sharing() == [sharing(code, "update", "sent", "cancel", world.device, "app")]
    assert await bob.next_sharing() == [sharing(code, "update", "received", "cancel", world.device, "app")]
    assert await bob.next_extension_presence() == [ExtensionPresence(ext_jid(DESK), "unavailable")]
    await bob.roster_push_for(ext_jid(DESK), "remove")
    assert await extension_roster(bob) == {}
    await refused(api, world.alice, "cancel", code, 4031008)  # replay
    await refused(api, world.bob, "accept", code, 4031008)

    # The next change reaches alice and no longer bob; the listing no longer shows him.
    await post_state(api, world.tenant.path(f"/devices/{world.device}/presence"), {"action": "set", "state": "early"})
    assert await alice.next_extension_presence() == [shows(DESK, "early", 3)]
    await bob.roster()  # a round trip through Prosody after alice's delivery
    assert bob.extension_presence.empty()
    assert sequences(await listing(api, world.tenant)) == {(DESK, alice.jid): (3, "early")}

    canceled = entry(code, world, world.bob, "cancel", "app", reason="desk reassigned")
    assert undated(await shares_of(api, world.alice)) == [canceled]
    assert undated(await shares_of(api, world.bob)) == [canceled]

    # delete hides the share from the caller's own history only.
    status, body = await api.xlink("DELETE", f"{SHARE}/delete/{code}", world.bob.token)
    assert (status, body) == (200, None)
    assert await shares_of(api, world.bob) == []
    assert undated(await shares_of(api, world.alice)) == [canceled]
    status, body = await api.xlink("DELETE", f"{SHARE}/delete/{code}", world.carol.token)
    assert_xlink_error(status, body, 4041018)  # not her share
    status, body = await api.xlink("DELETE", f"{SHARE}/delete/{code}", world.alice.token)
    assert (status, body) == (200, None)
    assert await shares_of(api, world.alice) == []
    # Deleting sends nobody anything.
    assert alice.sharing.empty() and bob.sharing.empty()


# ---- (2) e-mail ----------------------------------------------------------------------------


async def test_email_share_mails_the_code_and_the_provisioned_invitee_denies(
    api: RestApi, world: World, smtp_server: SmtpSink, alice: XmppUser, carol: XmppUser, dave: XmppUser
) -> None:
    code = await share(api, world.alice, device_id=world.device, user=CAROL_EMAIL, expire=7200, mode="email")
    # The address is carol's (provisioned): the share is bound to her and she hears of it.
    assert await alice.next_sharing() == [sharing(code, "create", "sent", "pending", world.device, "email")]
    assert await carol.next_sharing() == [sharing(code, "create", "received", "pending", world.device, "email")]

    mail = await smtp_server.next_mail()
    assert (mail.mail_from, mail.rcpt_tos) == (SENDER, [CAROL_EMAIL])
    message = mail.message
    assert (message["From"], message["To"]) == (SENDER, CAROL_EMAIL)
    assert message["Subject"] == f'{alice.jid} shares "Desk phone" with you'
    assert message.get_content_type() == "text/plain"
    body = message.get_content()  # decoded from its transfer encoding
    assert f"Invite code: {code}" in body
    assert f"POST {PUBLIC_URL}/v2/share/device/accept" in body
    assert f'{{"invite_code": "{code}"}}' in body
    assert f"{PUBLIC_URL}/v2/share/device/deny" in body
    assert f"xmpp:{COMPONENT}?command;node=urn:xmpp:presence-consent:cmd:shares:{code}" in body
    assert smtp_server.received.empty()

    pending = entry(code, world, world.carol, "pending", "email")
    assert undated(await shares_of(api, world.alice)) == [pending]
    assert undated(await shares_of(api, world.carol)) == [pending]

    # Bound to carol: dave holding the code is told nothing.
    await refused(api, world.dave, "accept", code, 4041018)
    answer = await dave.deviceshare(action="deny", invite_code=code)
    assert error_condition(answer) == "item-not-found" and xlink_code(answer) == 4041018

    await command(api, world.carol, "deny", code, reason="not my desk")
    assert await alice.next_sharing() == [sharing(code, "update", "sent", "deny", world.device, "email")]
    assert await carol.next_sharing() == [sharing(code, "update", "received", "deny", world.device, "email")]
    denied = entry(code, world, world.carol, "deny", "email", reason="not my desk")
    assert undated(await shares_of(api, world.alice)) == [denied]
    assert undated(await shares_of(api, world.carol)) == [denied]
    await refused(api, world.carol, "accept", code, 4031012)
    # No access was granted: nothing in carol's roster, nothing in family 2's listing.
    assert await extension_roster(carol) == {}
    assert (await listing(api, world.tenant)) == {"subscriptions": {}}
    assert dave.sharing.empty()


async def test_email_share_to_an_unknown_address_is_for_the_code_holder(
    api: RestApi, world: World, smtp_server: SmtpSink, alice: XmppUser, dave: XmppUser
) -> None:
    guest = "guest@elsewhere.example"
    code = await share(api, world.alice, device_id=world.device, user=guest, expire=7200, mode="email")
    assert await alice.next_sharing() == [sharing(code, "create", "sent", "pending", world.device, "email")]
    mail = await smtp_server.next_mail()
    assert mail.rcpt_tos == [guest]
    assert f"Invite code: {code}" in mail.message.get_content()
    assert undated(await shares_of(api, world.alice)) == [entry(code, world, None, "pending", "email", to_user=guest)]
    assert await shares_of(api, world.dave) == []

    # dave got the code (from the guest mailbox) and accepts it over XMPP.
    assert deviceshare_of(await dave.deviceshare(action="accept", invite_code=code)) == {
        "invite_code": code, "state": "accept",
    }
    assert await alice.next_sharing() == [sharing(code, "update", "sent", "accept", world.device, "email")]
    assert await dave.next_sharing() == [sharing(code, "update", "received", "accept", world.device, "email")]
    await dave.roster_push_for(ext_jid(DESK), "to")
    assert await dave.next_extension_presence() == [shows(DESK, "terminated", 1)]
    accepted = entry(code, world, world.dave, "accept", "email")
    assert undated(await shares_of(api, world.alice)) == [accepted]
    assert undated(await shares_of(api, world.dave)) == [accepted]
    # The code is dave's now: another holder is a stranger to it.
    await refused(api, world.bob, "accept", code, 4041018)


# ---- (3) QR code ---------------------------------------------------------------------------


async def test_qrcode_share_image_for_the_manager_and_first_holder_wins(
    api: RestApi, http: aiohttp.ClientSession, world: World,
    alice: XmppUser, bob: XmppUser, carol: XmppUser, dave: XmppUser,
) -> None:
    code = await share(api, world.alice, device_id=world.device, expire=600, mode="qrcode")
    assert await alice.next_sharing() == [sharing(code, "create", "sent", "pending", world.device, "qrcode")]
    assert undated(await shares_of(api, world.alice)) == [entry(code, world, None, "pending", "qrcode")]

    # The image: for the manager only.
    url = f"{api.base_url}{SHARE}/qrcode/{code}"
    async with http.get(f"{url}.png", headers={"Access-Token": world.alice.token}) as resp:
        assert resp.status == 200
        assert resp.content_type == "image/png"
        assert resp.headers["Cache-Control"] == "no-store"
        png = await resp.read()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 100
    async with http.get(f"{url}.svg", headers={"Access-Token": world.alice.token}) as resp:
        assert (resp.status, resp.content_type) == (200, "image/svg+xml")
        assert b"<svg" in await resp.read()
    status, body = await api.xlink("GET", f"{SHARE}/qrcode/{code}.png", world.bob.token)
    assert_xlink_error(status, body, 4041018)
    status, body = await api.xlink("GET", f"{SHARE}/qrcode/{code}.png", None)
    assert_xlink_error(status, body, 4031003)

    # The manager cannot answer its own code.
    await refused(api, world.alice, "accept", code, 4001001)

    # dave scanned it: he accepts over XMPP.
    assert deviceshare_of(await dave.deviceshare(action="accept", invite_code=code)) == {
        "invite_code": code, "state": "accept",
    }
    assert await alice.next_sharing() == [sharing(code, "update", "sent", "accept", world.device, "qrcode")]
    assert await dave.next_sharing() == [sharing(code, "update", "received", "accept", world.device, "qrcode")]
    await dave.roster_push_for(ext_jid(DESK), "to")
    assert await dave.next_extension_presence() == [shows(DESK, "terminated", 1)]

    # A second holder: already accepted, over REST and over XMPP alike.
    await refused(api, world.carol, "accept", code, 4031009)
    answer = await carol.deviceshare(action="accept", invite_code=code)
    assert error_condition(answer) == "conflict" and xlink_code(answer) == 4031009
    await refused(api, world.bob, "deny", code, 4031009)

    # dave's list over XMPP (<deviceshares/>), alice's over REST.
    answer = await dave.iq("get", ET.Element(f"{{{NS_SHARE}}}deviceshares"))
    assert answer["type"] == "result", answer
    items = [dict(i.attrib) for i in answer.xml.iter(f"{{{NS_SHARE}}}deviceshare")]
    accepted = entry(code, world, world.dave, "accept", "qrcode")
    assert undated(items) == [{k: v for k, v in accepted.items() if v is not None}]
    assert undated(await shares_of(api, world.alice)) == [accepted]
    assert await shares_of(api, world.carol) == []
    assert await shares_of(api, world.bob) == []
    assert sequences(await listing(api, world.tenant)) == {(DESK, dave.jid): (1, "terminated")}
    assert bob.sharing.empty() and carol.sharing.empty()


# ---- expiry ----------------------------------------------------------------------------------


async def test_unanswered_share_turns_overtime(
    api: RestApi, world: World, clock: AdjustableClock, alice: XmppUser, carol: XmppUser
) -> None:
    # By user id this time.
    code = await share(api, world.alice, device_id=world.device, user=world.carol_id, expire=60, mode="app")
    assert await alice.next_sharing() == [sharing(code, "create", "sent", "pending", world.device, "app")]
    assert await carol.next_sharing() == [sharing(code, "create", "received", "pending", world.device, "app")]
    (listed,) = await shares_of(api, world.carol)
    assert listed["state"] == "pending"

    clock.advance(61_000)  # past expire_date; the sweeper (every 0.2 s) persists overtime
    assert await alice.next_sharing() == [sharing(code, "update", "sent", "overtime", world.device, "app")]
    assert await carol.next_sharing() == [sharing(code, "update", "received", "overtime", world.device, "app")]

    overtime = entry(code, world, world.carol, "overtime", "app")
    assert undated(await shares_of(api, world.alice)) == [overtime]
    assert undated(await shares_of(api, world.carol)) == [overtime]
    assert (await shares_of(api, world.carol))[0]["expire_date"] == listed["expire_date"]
    await refused(api, world.carol, "accept", code, 4031012)
    await refused(api, world.carol, "deny", code, 4031012)
    await refused(api, world.alice, "cancel", code, 4031012)
    assert await extension_roster(carol) == {}
    # The refusals changed nothing and told nobody anything.
    assert alice.sharing.empty() and carol.sharing.empty()


# ---- errors through the real stack ------------------------------------------------------------


async def test_errors_use_xlink_codes_and_never_500(
    api: RestApi, world: World, alice: XmppUser, bob: XmppUser
) -> None:
    device = world.device
    valid = {"device_id": device, "user": bob.jid, "expire": 3600, "mode": "app"}

    async def share_refused(who: Session, expected: int, **fields: Any) -> None:
        status, body = await api.xlink("POST", SHARE, who.token, body=fields)
        assert_xlink_error(status, body, expected)

    # 4041008: unknown device, or one the caller does not manage
    await share_refused(world.alice, 4041008, **(valid | {"device_id": secrets.token_hex(16)}))
    await share_refused(world.alice, 4041008, **(valid | {"device_id": "not-a-device"}))
    await share_refused(world.bob, 4041008, **(valid | {"user": world.alice.jid}))
    # 4041011: nobody by that id, e-mail or name
    await share_refused(world.alice, 4041011, **(valid | {"user": secrets.token_hex(12)}))
    await share_refused(world.alice, 4041011, **(valid | {"user": "nobody@elsewhere.example"}))
    await share_refused(world.alice, 4041011, **(valid | {"user": "nobody"}))
    # 4001002: missing fields
    for name in ("device_id", "expire", "mode", "user"):
        await share_refused(world.alice, 4001002, **{k: v for k, v in valid.items() if k != name})
    await share_refused(world.alice, 4001002, **(valid | {"mode": "email", "user": ""}))
    for action in ("accept", "deny", "cancel"):
        status, body = await api.xlink("POST", f"{SHARE}/{action}", world.bob.token, body={"reason": "x"})
        assert_xlink_error(status, body, 4001002)
    # 4001001: invalid fields
    for bad in (
        {"mode": "bluetooth"},
        {"expire": -5},
        {"expire": 0},
        {"expire": "soon"},
        {"expire": 31 * 86400},  # beyond [sharing] max_expire_s
        {"authority": "X"},
        {"user": jid("x") * 30},  # over-long
        {"mode": "email", "user": "not an address"},
        {"mode": "qrcode"},  # a qrcode share names nobody
        {"user": world.alice.jid},  # to oneself
        {"colour": "blue"},
    ):
        await share_refused(world.alice, 4001001, **(valid | bad))
    status, body = await api.xlink("POST", SHARE, world.alice.token, data='{"device_id": ')
    assert_xlink_error(status, body, 4001001)
    # 4031003: wrong or missing token (HTTP 403)
    for token in ("not-a-token", None):
        status, body = await api.xlink("POST", SHARE, token, body=valid)
        assert_xlink_error(status, body, 4031003)
        status, body = await api.xlink("GET", f"{SHARE}/list", token)
        assert_xlink_error(status, body, 4031003)
    # Nothing above created a share or told anyone anything.
    assert await shares_of(api, world.alice) == []
    assert alice.sharing.empty() and bob.sharing.empty()

    code = await share(api, world.alice, **valid)
    assert await bob.next_sharing() == [sharing(code, "create", "received", "pending", device, "app")]
    await refused(api, world.bob, "deny", code, 4001001, reason="r" * 257)  # over-long reason
    await refused(api, world.alice, "cancel", code, 4001001, reason="r" * 257)
    await refused(api, world.bob, "accept", code, 4001001, extra="x")
    await refused(api, world.bob, "accept", "bad code!", 4001001)
    await refused(api, world.bob, "cancel", code, 4041018)  # only the manager cancels
    await refused(api, world.alice, "accept", code, 4041018)  # bound to bob
    unknown = secrets.token_urlsafe(24)
    for action in ("accept", "deny", "cancel"):
        await refused(api, world.bob, action, unknown, 4041018)
    status, body = await api.xlink("DELETE", f"{SHARE}/delete/{unknown}", world.bob.token)
    assert_xlink_error(status, body, 4041018)
    status, body = await api.xlink("GET", f"{SHARE}/qrcode/{unknown}.png", world.alice.token)
    assert_xlink_error(status, body, 4041018)

    # Replays: canceled twice, then answered after the cancel.
    await command(api, world.alice, "cancel", code)
    await refused(api, world.alice, "cancel", code, 4031008)
    await refused(api, world.bob, "accept", code, 4031008)
    # Accepted twice.
    second = await share(api, world.alice, **valid)
    await command(api, world.bob, "accept", second)
    await refused(api, world.bob, "accept", second, 4031009)
    await refused(api, world.bob, "deny", second, 4031009)

    # The same rules over XMPP: the condition plus Xlink's code.
    answer = await bob.deviceshare(action="accept", invite_code=second)
    assert error_condition(answer) == "conflict" and xlink_code(answer) == 4031009
    answer = await alice.deviceshare(action="share", device_id=secrets.token_hex(16), user=bob.jid, expire="60", mode="app")
    assert error_condition(answer) == "item-not-found" and xlink_code(answer) == 4041008
    answer = await alice.deviceshare(action="share", device_id=device, expire="60", mode="app")
    assert error_condition(answer) == "bad-request" and xlink_code(answer) == 4001002
    answer = await bob.deviceshare(action="accept", invite_code=unknown)
    assert error_condition(answer) == "item-not-found" and xlink_code(answer) == 4041018

    states = {e["invite_code"]: e["state"] for e in await shares_of(api, world.alice)}
    assert states == {code: "cancel", second: "accept"}
    assert states == {e["invite_code"]: e["state"] for e in await shares_of(api, world.bob)}
