"""Consent rules on the wire: a user's availability (forwarded by the server with the
XEP-0356 presence permission) triggers the roster check; a managed device refuses an
uninvited subscription; an address only the server accepts gets one answer."""

from __future__ import annotations

import asyncio

import pytest

from component.actions import PresenceSharing
from component.commands import (
    CreateAccount,
    CreateDevice,
    CreatePresenceRequest,
    Principal,
    Transition,
    TransitionPresenceRequest,
)
from component.model import BareJid
from component.provisioning import Provisioning
from component.rosters import Rosters
from component.xmpp import PresenceComponent
from storage import Conn, Database, users
from storage import rosters as records
from storage.rosters import RosterRecord
from stanza_rig import COMPONENT, Wire
from test_stanza_subscriptions import assert_sent, deliver
from test_stanza_transport import start_session

ALICE, BOB = "alice@example.test", "bob@example.test"


@pytest.fixture
def rosters(comp: PresenceComponent, db: Database, clock) -> Rosters:
    comp.rosters = Rosters(db, clock, COMPONENT)
    return comp.rosters


async def accepted_and_applied(sharing: PresenceSharing, db: Database) -> str:
    alice = await db.write(lambda tx: users.get_or_create(tx, BareJid(ALICE), 0))
    bob = await db.write(lambda tx: users.get_or_create(tx, BareJid(BOB), 0))
    request = await sharing.create(CreatePresenceRequest(alice, to_jid=bob.jid))
    await sharing.transition(TransitionPresenceRequest(bob, request.id, Transition.ACCEPT))

    async def applied(tx: Conn) -> None:  # as the dispatcher leaves it
        await tx.execute("DELETE FROM outbox")
        await records.save(tx, RosterRecord(ALICE, BOB, True, "to"), 0)
        await records.save(tx, RosterRecord(BOB, ALICE, True, "from"), 0)

    await db.write(applied)
    return request.id


async def test_a_user_coming_online_gets_its_roster_checked(
    comp: PresenceComponent, wire: Wire, db: Database, sharing: PresenceSharing, rosters: Rosters
) -> None:
    await start_session(comp, wire)
    request_id = await accepted_and_applied(sharing, db)
    wire.sent.clear()

    # The server forwards bob's initial presence to the component (mod_privilege).
    wire.feed(f"<presence from='{BOB}/phone' to='{COMPONENT}'><show>away</show></presence>")
    get = await wire.nth(0)
    assert (get["type"], get["to"].bare) == ("get", BOB)
    assert get.xml.find("{jabber:iq:roster}query") is not None
    # bob removed alice in his client: his roster no longer holds her.
    wire.feed(
        f"<iq type='result' id='{get['id']}' from='{BOB}' to='{COMPONENT}'>"
        "<query xmlns='jabber:iq:roster'><item jid='carol@example.test' subscription='both'/></query></iq>"
    )

    async def ended() -> None:
        while True:
            async with db.reader.execute("SELECT count(*) FROM presence_requests") as cur:
                if (await cur.fetchone())[0] == 0:
                    return
            await asyncio.sleep(0.01)

    await asyncio.wait_for(ended(), 5)
    async with db.reader.execute("SELECT kind, recipient, payload FROM outbox ORDER BY id") as cur:
        rows = [tuple(r) for r in await cur.fetchall()]
    assert [(k, r) for k, r, _ in rows] == [
        ("message", ALICE), ("message", BOB), ("roster", ALICE), ("roster", BOB),
    ]
    assert f'"id":"{request_id}"' in rows[0][2] and '"status":"interrupted"' in rows[0][2]

    # Another resource, or a change of show, of a user already online: no new check.
    wire.sent.clear()
    wire.feed(f"<presence from='{BOB}/phone' to='{COMPONENT}'><show>dnd</show></presence>")
    await asyncio.sleep(0.05)
    assert wire.sent == []


async def test_a_user_holding_nothing_granted_costs_no_roster_read(
    comp: PresenceComponent, wire: Wire, rosters: Rosters
) -> None:
    await start_session(comp, wire)
    wire.sent.clear()
    wire.feed(f"<presence from='{ALICE}/laptop' to='{COMPONENT}'/>")
    wire.feed(f"<presence type='unavailable' from='{ALICE}/laptop' to='{COMPONENT}'/>")
    await asyncio.sleep(0.05)
    assert wire.sent == []


async def test_an_uninvited_subscription_to_a_managed_device_is_refused(
    comp: PresenceComponent, wire: Wire, db: Database, provisioning: Provisioning
) -> None:
    alice = await db.write(lambda tx: users.get_or_create(tx, BareJid(ALICE), 0))
    account = await provisioning.create_account(Principal(None), CreateAccount("Example", "example.test"))
    await provisioning.create_device(Principal(None), account.id, CreateDevice("Hall", "1001", owner_id=alice.id))
    await deliver(wire, f"<presence type='subscribe' from='{BOB}/r' to='1001@{COMPONENT}'/>")
    assert_sent(wire.sent, [f"<presence type='unsubscribed' from='1001@{COMPONENT}' to='{BOB}'/>"])
    async with db.reader.execute("SELECT count(*) FROM subscriptions") as cur:
        assert (await cur.fetchone())[0] == 0


@pytest.mark.parametrize("kind", ["subscribe", "probe"])
async def test_an_extension_only_the_server_accepts_gets_one_answer(
    comp: PresenceComponent, wire: Wire, kind: str
) -> None:
    """slixmpp's JID parser refuses `\U0001f4de@...`; the answer echoes the address as sent."""
    await deliver(wire, f"<presence type='{kind}' from='{BOB}/r' to='\U0001f4de@{COMPONENT}'/>")
    (answer,) = wire.sent
    assert answer.xml.get("type") == "unsubscribed"
    assert answer.xml.get("from") == f"\U0001f4de@{COMPONENT}"
    assert answer.xml.get("to") == BOB


@pytest.mark.parametrize(
    ("answer", "exists"),
    [
        ("<iq type='result' id='{id}' from='{to}' to='presence.example.test'/>", True),
        ("<iq type='error' id='{id}' from='{to}' to='presence.example.test'><error type='auth'>"
         "<forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>"
         "you are not allowed to send privileged &lt;IQ&gt; stanzas</text></error></iq>", True),
        ("<iq type='error' id='{id}' from='{to}' to='presence.example.test'><error type='auth'>"
         "<forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>"
         "wrapping &lt;IQ&gt; stanza recipient must be a bare JID of a local user</text></error></iq>", False),
        ("<iq type='error' id='{id}' from='{to}' to='presence.example.test'><error type='cancel'>"
         "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>", None),
    ],
    ids=["result", "no-iq-permission", "no-such-account", "cannot-tell"],
)
async def test_whether_an_account_exists_is_asked_with_a_privileged_iq(
    comp: PresenceComponent, wire: Wire, answer: str, exists: bool | None
) -> None:
    await start_session(comp, wire)
    wire.sent.clear()
    asking = asyncio.ensure_future(comp.account_exists(ALICE))
    sent = await wire.nth(0)
    assert sent["to"].bare == ALICE and sent["type"] == "get"
    inner = sent.xml.find("{urn:xmpp:privilege:2}privileged_iq/{jabber:client}iq")
    assert inner is not None and inner.get("to") == "example.test"
    assert inner.find("{urn:xmpp:ping}ping") is not None
    wire.feed(answer.format(id=sent["id"], to=ALICE))
    assert await asyncio.wait_for(asking, 5) is exists
