"""Family 3 over XMPP: the `deviceshare` commands and the `deviceshares` list
(urn:xmpp:presence-consent:share:0), their errors with Xlink's code as an
application-specific condition, and the `devicesharing` management message."""

from __future__ import annotations

from typing import Any

import pytest
from slixmpp.xmlstream import StanzaBase

from component.clock import FixedClock, iso_ms
from component.model import new_invite_code
from component.xmpp import PresenceComponent
from storage import Database, outbox
from storage.outbox import OutboxRow
from stanza_rig import COMPONENT, Home, NS_STANZAS, Wire, iq, same_xml, xml_text

NS = "urn:xmpp:presence-consent:share:0"
NS_CONF = "jabber:iq:configuration"
ALICE = "alice@example.test/phone"
BOB = "bob@example.test/desk"
CAROL = "carol@example.test/r"
START = FixedClock().now_ms()


def cmd(stanza_id: str, sender: str, attrs: str, kind: str = "set") -> str:
    return iq(kind, stanza_id, sender, f"<deviceshare xmlns='{NS}' {attrs}/>")


def result(stanza_id: str, to: str, payload: str = "") -> str:
    return f"<iq type='result' id='{stanza_id}' from='{COMPONENT}' to='{to}'>{payload}</iq>"


def xlink_error(stanza_id: str, to: str, kind: str, condition: str, text: str, code: int) -> str:
    return (
        f"<iq type='error' id='{stanza_id}' from='{COMPONENT}' to='{to}'>"
        f"<error type='{kind}'><{condition} xmlns='{NS_STANZAS}'/>"
        f"<text xmlns='{NS_STANZAS}'>{text}</text>"
        f"<xlink-error xmlns='{NS}' code='{code}'/></error></iq>"
    )


def check(actual: StanzaBase, expected: str) -> None:
    assert same_xml(actual, expected), f"{actual}\n!=\n{expected}"


async def rows(db: Database, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with db.reader.execute(sql, params) as cur:
        return [tuple(r) for r in await cur.fetchall()]


async def share(wire: Wire, home: Home, attrs: str = "mode='app' user='bob@example.test' expire='3600'") -> str:
    reply = await wire.ask(cmd("mk", ALICE, f"action='share' device_id='{home.hall.id}' {attrs}"))
    code = reply.xml.find(f"{{{NS}}}deviceshare").attrib["invite_code"]
    wire.sent.clear()
    return str(code)


# ---- commands ---------------------------------------------------------------------------------


async def test_share_answers_the_invite_code(wire: Wire, home: Home, db: Database) -> None:
    reply = await wire.ask(cmd(
        "s1", ALICE,
        f"action='share' device_id='{home.hall.id}' mode='app' user='bob@example.test' expire='7200' authority='R'",
    ))
    [(code, to_user, mode, authority, state, expire_date)] = await rows(
        db, "SELECT invite_code, to_user_id, mode, authority, state, expire_date FROM device_shares"
    )
    assert (to_user, mode, authority, state, expire_date) == (home.bob_id, "app", "R", "pending", START + 7_200_000)
    check(reply, result("s1", ALICE, f"<deviceshare xmlns='{NS}' invite_code='{code}'/>"))


async def test_a_qrcode_share_over_xmpp(wire: Wire, home: Home, db: Database) -> None:
    code = await share(wire, home, "mode='qrcode' expire='60'")
    assert await rows(db, "SELECT invite_code, to_user_id, mode FROM device_shares") == [(code, None, "qrcode")]


@pytest.mark.parametrize(("action", "state"), [("accept", "accept"), ("deny", "deny")])
async def test_accept_and_deny_answer_the_new_state(
    wire: Wire, home: Home, db: Database, action: str, state: str
) -> None:
    code = await share(wire, home)
    reply = await wire.ask(cmd("a1", BOB, f"action='{action}' invite_code='{code}' reason='ok'"))
    check(reply, result("a1", BOB, f"<deviceshare xmlns='{NS}' invite_code='{code}' state='{state}'/>"))
    assert await rows(db, "SELECT state, reason FROM device_shares") == [(state, "ok")]
    granted = await rows(db, "SELECT extension, subscriber FROM subscriptions")
    assert granted == ([("1001", "bob@example.test")] if action == "accept" else [])


async def test_cancel_revokes_an_accepted_share(wire: Wire, home: Home, db: Database) -> None:
    code = await share(wire, home)
    await wire.ask(cmd("a1", BOB, f"action='accept' invite_code='{code}'"))
    reply = await wire.ask(cmd("c1", ALICE, f"action='cancel' invite_code='{code}'"))
    check(reply, result("c1", ALICE, f"<deviceshare xmlns='{NS}' invite_code='{code}' state='cancel'/>"))
    assert await rows(db, "SELECT state FROM device_shares") == [("cancel",)]
    assert await rows(db, "SELECT * FROM subscriptions") == []


async def test_delete_hides_it_from_the_callers_list(wire: Wire, home: Home, db: Database) -> None:
    code = await share(wire, home)
    reply = await wire.ask(cmd("d1", BOB, f"action='delete' invite_code='{code}'"))
    check(reply, result("d1", BOB, f"<deviceshare xmlns='{NS}' invite_code='{code}'/>"))
    assert await rows(db, "SELECT hidden_by_sender, hidden_by_receiver FROM device_shares") == [(0, 1)]
    check(await wire.ask(iq("get", "l1", BOB, f"<deviceshares xmlns='{NS}'/>")),
          result("l1", BOB, f"<deviceshares xmlns='{NS}'/>"))


async def test_the_list_carries_each_share_as_attributes(
    wire: Wire, home: Home, clock: FixedClock
) -> None:
    sent = await share(wire, home, "mode='app' user='bob@example.test' expire='600'")
    clock.advance(2_000)
    qr = await share(wire, home, "mode='qrcode' expire='60' authority='W'")
    await wire.ask(cmd("n1", BOB, f"action='deny' invite_code='{sent}' reason='no'"))
    reply = await wire.ask(iq("get", "l1", ALICE, f"<deviceshares xmlns='{NS}'/>"))
    check(reply, result("l1", ALICE, (
        f"<deviceshares xmlns='{NS}'>"
        f"<deviceshare invite_code='{qr}' from_id='{home.alice_id}' from_user='alice@example.test'"
        f" device_id='{home.hall.id}' state='pending' create_date='2026-01-01T00:00:02.000Z'"
        f" expire_date='2026-01-01T00:01:02.000Z' mode='qrcode' authority='W'/>"
        f"<deviceshare invite_code='{sent}' from_id='{home.alice_id}' from_user='alice@example.test'"
        f" to_id='{home.bob_id}' to_user='bob@example.test' device_id='{home.hall.id}' state='deny'"
        f" create_date='{iso_ms(START)}' expire_date='2026-01-01T00:10:00.000Z' mode='app' authority='RW'"
        f" reason='no'/>"
        "</deviceshares>"
    )))
    # Expiry applies on read.
    clock.advance(60_000)
    reply = await wire.ask(iq("get", "l2", ALICE, f"<deviceshares xmlns='{NS}'/>"))
    states = [e.attrib["state"] for e in reply.xml.iter(f"{{{NS}}}deviceshare")]
    assert states == ["overtime", "deny"]


# ---- errors -----------------------------------------------------------------------------------


async def test_share_errors_carry_xlinks_code(wire: Wire, home: Home, db: Database) -> None:
    other = new_invite_code()
    hall = home.hall.id
    cases = [
        (BOB, f"action='share' device_id='{hall}' mode='qrcode' expire='60'",
         "cancel", "item-not-found", f"device {hall} not found among the devices you manage", 4041008),
        (ALICE, f"action='share' device_id='{hall}' expire='60'",
         "modify", "bad-request", "mode is required", 4001002),
        (ALICE, f"action='share' device_id='{hall}' mode='fax' expire='60'",
         "modify", "bad-request", "mode must be app, qrcode or email", 4001001),
        (ALICE, f"action='share' device_id='{hall}' mode='qrcode' expire='soon'",
         "modify", "bad-request", "expire must be a number of seconds from 1 to 2592000", 4001001),
        (ALICE, f"action='share' device_id='{hall}' mode='qrcode' expire='0'",
         "modify", "bad-request", "expire must be a number of seconds from 1 to 2592000", 4001001),
        (ALICE, f"action='share' device_id='{hall}' mode='app' user='nobody@mail.test' expire='60'",
         "cancel", "item-not-found", "user nobody@mail.test not found", 4041011),
        (ALICE, f"action='share' device_id='{hall}' mode='app' user='alice@example.test' expire='60'",
         "modify", "bad-request", "the manager cannot share a device with itself", 4001001),
        (ALICE, f"action='share' device_id='{hall}' mode='email' user='zoe@mail.test' expire='60'",
         "modify", "bad-request", "e-mail sharing is not configured on this server ([smtp] host)", 4001001),
        (ALICE, f"action='share' device_id='{hall}' mode='qrcode' expire='60' colour='red'",
         "modify", "bad-request", "unknown field(s): colour", 4001001),
        (ALICE, f"action='accept' invite_code='{other}'",
         "cancel", "item-not-found", "share not found", 4041018),
        (ALICE, "action='accept'", "modify", "bad-request", "invite_code is required", 4001002),
        (ALICE, "action='delete' invite_code='x'",
         "modify", "bad-request", "invite_code is not a valid invite code", 4001001),
        (ALICE, f"action='delete' invite_code='{other}'",
         "cancel", "item-not-found", "share not found", 4041018),
        (ALICE, "action='explode'",
         "modify", "bad-request", "action must be share, cancel, accept, deny or delete", 4001001),
    ]
    for n, (sender, attrs, kind, condition, text, code) in enumerate(cases):
        reply = await wire.ask(cmd(f"e{n}", sender, attrs))
        check(reply, xlink_error(f"e{n}", sender, kind, condition, text, code))
    assert await rows(db, "SELECT * FROM device_shares") == []


async def test_state_errors_carry_xlinks_code(wire: Wire, home: Home, clock: FixedClock) -> None:
    accepted = await share(wire, home)
    await wire.ask(cmd("a0", BOB, f"action='accept' invite_code='{accepted}'"))
    canceled = await share(wire, home)
    await wire.ask(cmd("c0", ALICE, f"action='cancel' invite_code='{canceled}'"))
    expired = await share(wire, home, "mode='app' user='bob@example.test' expire='1'")
    clock.advance(1_000)
    cases = [
        (BOB, f"action='accept' invite_code='{accepted}'", "the share is already accepted", 4031009),
        (BOB, f"action='deny' invite_code='{canceled}'", "the share was canceled", 4031008),
        (ALICE, f"action='cancel' invite_code='{canceled}'", "the share is already canceled", 4031008),
        (BOB, f"action='accept' invite_code='{expired}'", "the share has expired", 4031012),
        (BOB, f"action='accept' invite_code='{expired}'", "the share is overtime", 4031012),
    ]
    for n, (sender, attrs, text, code) in enumerate(cases):
        reply = await wire.ask(cmd(f"w{n}", sender, attrs))
        check(reply, xlink_error(f"w{n}", sender, "cancel", "conflict", text, code))
    reply = await wire.ask(cmd("nf", CAROL, f"action='cancel' invite_code='{accepted}'"))
    check(reply, xlink_error("nf", CAROL, "cancel", "item-not-found", "share not found", 4041018))


async def test_wrong_iq_types_are_bad_requests(wire: Wire, home: Home) -> None:
    reply = await wire.ask(cmd("g1", ALICE, "action='share'", kind="get"))
    check(reply, xlink_error("g1", ALICE, "modify", "bad-request", "deviceshare commands are sent with a set", 4001001))
    reply = await wire.ask(iq("set", "g2", ALICE, f"<deviceshares xmlns='{NS}'/>"))
    check(reply, xlink_error("g2", ALICE, "modify", "bad-request", "deviceshares is read with a get", 4001001))


async def test_users_of_other_domains_are_forbidden(wire: Wire, home: Home) -> None:
    sender = "mallory@elsewhere.test/x"
    reply = await wire.ask(iq("get", "f1", sender, f"<deviceshares xmlns='{NS}'/>"))
    assert reply["type"] == "error"
    assert reply["error"]["condition"] == "forbidden"
    assert reply.xml.find(f"{{jabber:component:accept}}error/{{{NS}}}xlink-error").attrib == {"code": "4031003"}


# ---- the management message -------------------------------------------------------------------


def test_send_management_builds_the_devicesharing_message(comp: PresenceComponent, wire: Wire) -> None:
    attrs = {
        "id": "Sw6H2doFYEyTcbgg6xLmWn-bNZFWOk3V", "action": "update", "status": "accept",
        "device_id": "0123456789abcdef0123456789abcdef", "mode": "qrcode", "type": "received",
    }
    payload = {"devicesharing": attrs, "peer": "alice@example.test", "device": "Door bell"}
    comp.send_management(OutboxRow(7, "message", "bob@example.test", payload))
    assert len(wire.sent) == 1
    check(wire.sent[0], (
        f"<message type='management' id='ph-7' from='{COMPONENT}' to='bob@example.test'>"
        f"<devicesharing xmlns='{NS_CONF}' id='Sw6H2doFYEyTcbgg6xLmWn-bNZFWOk3V' action='update'"
        " status='accept' device_id='0123456789abcdef0123456789abcdef' mode='qrcode' type='received'/>"
        "<body>You now see the presence of &quot;Door bell&quot;.</body>"
        "<store xmlns='urn:xmpp:hints'/></message>"
    ))


async def test_the_outbox_rows_of_a_share_become_those_messages(
    comp: PresenceComponent, wire: Wire, home: Home, db: Database
) -> None:
    code = await share(wire, home)
    batch = await outbox.next_batch(db.reader, 0, 100)
    for row in batch:
        comp.send_management(row)
    uri = f"xmpp:{COMPONENT}?command;node=urn:xmpp:presence-consent:cmd:shares:{code}"
    expected = [
        (batch[0].id, "alice@example.test", "sent",
         'You invited bob@example.test to see "Hall phone". To cancel, run the command'
         f' "Device shares" of {COMPONENT}.'),
        (batch[1].id, "bob@example.test", "received",
         'alice@example.test invites you to see the presence of "Hall phone". To accept or deny,'
         f' run the command "Device shares" of {COMPONENT}: {uri}'),
    ]
    assert len(wire.sent) == len(expected)
    for stanza, (row_id, to, side, body) in zip(wire.sent, expected, strict=True):
        check(stanza, (
            f"<message type='management' id='ph-{row_id}' from='{COMPONENT}' to='{to}'>"
            f"<devicesharing xmlns='{NS_CONF}' id='{code}' action='create' status='pending'"
            f" device_id='{home.hall.id}' mode='app' type='{side}'/>"
            f"<body>{xml_text(body)}</body><store xmlns='urn:xmpp:hints'/></message>"
        ))
