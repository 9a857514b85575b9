"""The component's own traffic: disco, privileges, status, and the outbox Transport
(management messages, XEP-0356 roster sets, the delivery barrier)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest
from slixmpp.xmlstream import ET

from component.actions import Identity, PresenceSharing
from component.config import ComponentConfig
from component.delivery import OutboxDispatcher, RosterFailed, RosterRefused, TransportGone
from component.device_sharing import DeviceSharing
from component.rosters import RosterItem
from component.subscriptions import PresenceStates
from component.xmpp import PresenceComponent
from storage import Database, outbox
from storage.outbox import OutboxRow
from stanza_rig import COMPONENT, Wire, iq, same_xml, xml_text

NS = "jabber:iq:configuration"


def privileges(domain: str, roster: str | None, ns: str = "urn:xmpp:privilege:2", presence: str | None = None) -> str:
    perms = "<perm access='message' type='outgoing'/>"
    if roster is not None:
        perms = f"<perm access='roster' type='{roster}'/>" + perms
    if presence is not None:
        perms += f"<perm access='presence' type='{presence}'/>"
    return (
        f"<message from='{domain}' to='{COMPONENT}' id='adv1'>"
        f"<privilege xmlns='{ns}'>{perms}</privilege></message>"
    )


async def start_session(comp: PresenceComponent, wire: Wire, roster: str | None = "both") -> None:
    wire.feed(privileges("example.test", roster))
    await comp.on_session_start(None)


async def test_disco_info_names_the_service(wire: Wire) -> None:
    reply = await wire.ask(
        iq("get", "d1", "alice@example.test/r", "<query xmlns='http://jabber.org/protocol/disco#info'/>")
    )
    assert same_xml(
        reply,
        f"<iq type='result' id='d1' from='{COMPONENT}' to='alice@example.test/r'>"
        "<query xmlns='http://jabber.org/protocol/disco#info'>"
        "<identity category='component' type='presence' name='Presence consent'/>"
        f"<feature var='{NS}'/>"
        "<feature var='http://jabber.org/protocol/rsm'/>"
        "<feature var='urn:xmpp:presence-consent:0'/>"
        "<feature var='urn:xmpp:presence-consent:share:0'/>"
        "<feature var='http://jabber.org/protocol/commands'/></query></iq>",
    ), str(reply)


HANDSHAKE_ROW = OutboxRow(
    42, "message", "bob@example.test",
    {"handshake": {"id": "0123456789abcdef01234567", "action": "update", "type": "received", "status": "accepted"},
     "peer": "alice@example.test"},
)


def test_send_management_builds_the_seed_message_with_a_readable_body(comp: PresenceComponent, wire: Wire) -> None:
    comp.send_management(HANDSHAKE_ROW)
    assert len(wire.sent) == 1
    assert same_xml(
        wire.sent[0],
        f"<message type='management' id='ph-42' from='{COMPONENT}' to='bob@example.test'>"
        f"<presencehandshake xmlns='{NS}' id='0123456789abcdef01234567' action='update'"
        " type='received' status='accepted'/>"
        "<body>You now share your presence with alice@example.test. To stop, run the command"
        f" &quot;Presence requests&quot; of {COMPONENT}.</body><store xmlns='urn:xmpp:hints'/></message>",
    ), str(wire.sent[0])


@pytest.fixture
def configured(
    config: ComponentConfig, identity: Identity, sharing: PresenceSharing, states: PresenceStates,
    device_sharing: DeviceSharing,
):  # noqa: ANN201 - a factory
    """A component (on its own wire) whose [component] config differs from `config`."""

    def make(**changes: object) -> tuple[PresenceComponent, Wire]:
        comp = PresenceComponent(replace(config, **changes), identity, sharing, states, device_sharing)
        return comp, Wire(comp)

    return make


async def test_without_readable_notifications_the_message_is_the_seeds_alone(configured) -> None:  # noqa: ANN001
    quiet, wire = configured(readable_notifications=False)
    quiet.send_management(HANDSHAKE_ROW)
    assert same_xml(
        wire.sent[0],
        f"<message type='management' id='ph-42' from='{COMPONENT}' to='bob@example.test'>"
        f"<presencehandshake xmlns='{NS}' id='0123456789abcdef01234567' action='update'"
        " type='received' status='accepted'/></message>",
    ), str(wire.sent[0])


async def test_management_messages_may_be_sent_as_normal_ones(configured) -> None:  # noqa: ANN001
    normal, wire = configured(management_type="normal")
    normal.send_management(HANDSHAKE_ROW)
    assert wire.sent[0].xml.get("type") == "normal"
    assert wire.sent[0].xml.find(f"{{{NS}}}presencehandshake").attrib == HANDSHAKE_ROW.payload["handshake"]


def test_a_row_queued_before_peer_names_existed_still_reads(comp: PresenceComponent, wire: Wire) -> None:
    payload = {k: v for k, v in HANDSHAKE_ROW.payload.items() if k != "peer"}
    comp.send_management(OutboxRow(43, "message", "bob@example.test", payload))
    assert wire.sent[0]["body"] == (
        f'You now share your presence with a contact. To stop, run the command "Presence requests" of {COMPONENT}.'
    )


@pytest.mark.parametrize(
    # Changing one direction of an item needs reading it first: only "both" will do.
    ("granted", "allowed"), [("both", True), ("set", False), ("get", False), ("none", False), (None, False)]
)
def test_a_privilege_advertisement_sets_roster_allowed_for_its_domain(
    comp: PresenceComponent, wire: Wire, granted: str | None, allowed: bool
) -> None:
    assert comp.roster_allowed("alice@example.test") is False
    wire.feed(privileges("example.test", granted))
    assert comp.roster_allowed("alice@example.test") is allowed
    assert comp.roster_allowed("mallory@evil.test") is False
    assert wire.sent == []


async def test_status_follows_the_session_and_the_roster_grant(comp: PresenceComponent, wire: Wire) -> None:
    assert comp.status() == {"xmpp": "disconnected", "roster": "unavailable"}
    assert comp.ready is False
    await start_session(comp, wire, "both")
    assert comp.status() == {"xmpp": "connected", "roster": "granted"}
    assert comp.ready is True
    comp.on_disconnected("test")
    assert comp.status() == {"xmpp": "disconnected", "roster": "unavailable"}
    assert comp.ready is False
    assert comp.roster_allowed("alice@example.test") is False  # grants are re-advertised per session


async def test_status_without_a_roster_grant(comp: PresenceComponent, wire: Wire) -> None:
    await start_session(comp, wire, roster=None)
    assert comp.status() == {"xmpp": "connected", "roster": "unavailable"}
    assert comp.ready is True


async def test_a_roster_item_is_read_with_a_privileged_get(comp: PresenceComponent, wire: Wire) -> None:
    await start_session(comp, wire)
    reading = asyncio.ensure_future(comp.roster_item("alice@example.test", "bob@example.test"))
    sent = await wire.nth(0)
    assert same_xml(
        sent,
        f"<iq type='get' id='{sent['id']}' from='{COMPONENT}' to='alice@example.test'>"
        "<query xmlns='jabber:iq:roster'/></iq>",
    ), str(sent)
    wire.feed(
        f"<iq type='result' id='{sent['id']}' from='alice@example.test' to='{COMPONENT}'>"
        "<query xmlns='jabber:iq:roster'>"
        "<item jid='carol@example.test' subscription='both'/>"
        "<item jid='bob@example.test' subscription='from' name='Bobby' ask='subscribe'>"
        "<group>Friends</group><group>Work</group></item></query></iq>"
    )
    assert await asyncio.wait_for(reading, 5) == RosterItem(
        "bob@example.test", "from", "Bobby", ("Friends", "Work"), "subscribe"
    )


def roster_result(stanza_id: str, owner: str, items: str) -> str:
    return (
        f"<iq type='result' id='{stanza_id}' from='{owner}' to='{COMPONENT}'>"
        f"<query xmlns='jabber:iq:roster'>{items}</query></iq>"
    )


async def test_reads_of_one_roster_asked_while_one_is_in_flight_share_the_next(
    comp: PresenceComponent, wire: Wire
) -> None:
    """Each change reads the roster after it was asked for; those asked for while a
    read is in flight share one read, sent once that one is answered."""
    await start_session(comp, wire)
    first = asyncio.ensure_future(comp.roster_item("alice@example.test", "bob@example.test"))
    get1 = await wire.nth(0)
    second = asyncio.ensure_future(comp.roster_item("alice@example.test", "carol@example.test"))
    third = asyncio.ensure_future(comp.roster_item("alice@example.test", "bob@example.test"))
    other = asyncio.ensure_future(comp.roster_item("dave@example.test", "bob@example.test"))
    get_dave = await wire.nth(1)  # another roster: not held back
    assert get_dave["to"] == "dave@example.test"
    await asyncio.sleep(0.05)
    assert len(wire.sent) == 2  # alice's next read waits for the one in flight
    wire.feed(roster_result(get1["id"], "alice@example.test", "<item jid='bob@example.test' subscription='none'/>"))
    assert await asyncio.wait_for(first, 5) == RosterItem("bob@example.test", "none")
    get2 = await wire.nth(2)
    assert get2["to"] == "alice@example.test" and get2["id"] != get1["id"]
    wire.feed(roster_result(
        get2["id"], "alice@example.test",
        "<item jid='bob@example.test' subscription='to'/><item jid='carol@example.test' subscription='from'/>",
    ))
    assert await asyncio.wait_for(second, 5) == RosterItem("carol@example.test", "from")
    assert await asyncio.wait_for(third, 5) == RosterItem("bob@example.test", "to")
    wire.feed(roster_result(get_dave["id"], "dave@example.test", ""))
    assert await asyncio.wait_for(other, 5) is None
    await asyncio.sleep(0.05)
    assert len(wire.sent) == 3  # three gets in all
    # Nothing is left queued: the next read is a new one, sent at once.
    fourth = asyncio.ensure_future(comp.roster_item("alice@example.test", "bob@example.test"))
    get3 = await wire.nth(3)
    wire.feed(roster_result(get3["id"], "alice@example.test", ""))
    assert await asyncio.wait_for(fourth, 5) is None


async def test_a_shared_read_that_fails_fails_every_change_sharing_it(comp: PresenceComponent, wire: Wire) -> None:
    await start_session(comp, wire)
    first = asyncio.ensure_future(comp.roster_item("ghost@example.test", "bob@example.test"))
    get1 = await wire.nth(0)
    later = [asyncio.ensure_future(comp.roster_item("ghost@example.test", c)) for c in ("a@example.test", "b@example.test")]
    wire.feed(roster_result(get1["id"], "ghost@example.test", ""))
    assert await asyncio.wait_for(first, 5) is None
    get2 = await wire.nth(1)
    wire.feed(
        f"<iq type='error' id='{get2['id']}' from='ghost@example.test' to='{COMPONENT}'>"
        "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    )
    for reading in later:
        with pytest.raises(RosterFailed):
            await asyncio.wait_for(reading, 5)


def test_roster_results_stay_xml(comp: PresenceComponent) -> None:
    """slixmpp would build a stanza object per roster item and group (milliseconds for a
    large roster, on every read); the component reads the XML itself."""
    element = ET.fromstring(roster_result(
        "r1", "alice@example.test", "<item jid='bob@example.test' subscription='to'><group>G</group></item>"
    ))
    for node in element.iter():
        if "}" not in node.tag:
            node.tag = f"{{jabber:component:accept}}{node.tag}"
    stanza = comp._build_stanza(element)
    assert not stanza.plugins  # no slixmpp Roster / RosterItem objects
    assert stanza.xml.find("{jabber:iq:roster}query/{jabber:iq:roster}item").get("jid") == "bob@example.test"
    assert stanza["type"] == "result" and stanza["id"] == "r1"


async def test_set_roster_item_keeps_the_name_and_groups(comp: PresenceComponent, wire: Wire) -> None:
    await start_session(comp, wire)
    item = RosterItem("bob@example.test", "both", "Bobby", ("Friends",))
    pushing = asyncio.ensure_future(comp.set_roster_item("alice@example.test", item))
    sent = await wire.nth(0)
    assert same_xml(
        sent,
        f"<iq type='set' id='{sent['id']}' from='{COMPONENT}' to='alice@example.test'>"
        "<query xmlns='jabber:iq:roster'><item jid='bob@example.test' subscription='both' name='Bobby'>"
        "<group>Friends</group></item></query></iq>",
    ), str(sent)
    wire.feed(f"<iq type='result' id='{sent['id']}' from='alice@example.test' to='{COMPONENT}'/>")
    await asyncio.wait_for(pushing, 5)


async def test_removing_an_absent_roster_item_counts_as_done(comp: PresenceComponent, wire: Wire) -> None:
    await start_session(comp, wire)
    pushing = asyncio.ensure_future(comp.remove_roster_item("alice@example.test", "bob@example.test"))
    sent = await wire.nth(0)
    assert same_xml(
        sent,
        f"<iq type='set' id='{sent['id']}' from='{COMPONENT}' to='alice@example.test'>"
        "<query xmlns='jabber:iq:roster'><item jid='bob@example.test' subscription='remove'/></query></iq>",
    ), str(sent)
    wire.feed(
        f"<iq type='error' id='{sent['id']}' from='alice@example.test' to='{COMPONENT}'>"
        "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    )
    await asyncio.wait_for(pushing, 5)


async def test_a_forbidden_roster_answer_withdraws_the_grant(comp: PresenceComponent, wire: Wire) -> None:
    """The server advertised the privilege but refuses it: rows wait, /healthz says so."""
    await start_session(comp, wire)
    reading = asyncio.ensure_future(comp.roster_item("alice@example.test", "bob@example.test"))
    sent = await wire.nth(0)
    wire.feed(
        f"<iq type='error' id='{sent['id']}' from='alice@example.test' to='{COMPONENT}'>"
        "<error type='auth'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    )
    with pytest.raises(RosterRefused):
        await asyncio.wait_for(reading, 5)
    assert comp.roster_allowed("alice@example.test") is False
    assert comp.status() == {"xmpp": "connected", "roster": "unavailable"}


async def test_another_roster_error_fails_that_change_only(comp: PresenceComponent, wire: Wire) -> None:
    await start_session(comp, wire)
    pushing = asyncio.ensure_future(
        comp.set_roster_item("ghost@example.test", RosterItem("bob@example.test", "to"))
    )
    sent = await wire.nth(0)
    wire.feed(
        f"<iq type='error' id='{sent['id']}' from='ghost@example.test' to='{COMPONENT}'>"
        "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    )
    with pytest.raises(RosterFailed):
        await asyncio.wait_for(pushing, 5)
    assert comp.roster_allowed("alice@example.test") is True


async def test_a_late_advertisement_grants_rosters_and_wakes_the_dispatcher(
    comp: PresenceComponent, wire: Wire, db: Database
) -> None:
    """Issue #9: the advertisement came after the wait; rows that waited go now."""
    comp.config = replace(comp.config, privilege_wait_s=0.01)
    dispatcher = OutboxDispatcher(db, comp)
    comp.dispatcher = dispatcher
    await comp.on_session_start(None)
    assert comp.status() == {"xmpp": "connected", "roster": "unavailable"}
    assert comp.roster_ready is False
    dispatcher._wake.clear()
    wire.feed(privileges("example.test", "both"))
    assert comp.status() == {"xmpp": "connected", "roster": "granted"}
    assert comp.roster_ready is True
    assert dispatcher._wake.is_set()


async def test_the_barrier_is_a_ping_to_the_server(comp: PresenceComponent, wire: Wire) -> None:
    await start_session(comp, wire)
    waiting = asyncio.ensure_future(comp.barrier(comp.generation))
    sent = await wire.nth(0)
    assert same_xml(
        sent,
        f"<iq type='get' id='{sent['id']}' from='{COMPONENT}' to='example.test'><ping xmlns='urn:xmpp:ping'/></iq>",
    ), str(sent)
    # Any answer, even an error, proves the server processed what was sent before.
    wire.feed(
        f"<iq type='error' id='{sent['id']}' from='example.test' to='{COMPONENT}'>"
        "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    )
    await asyncio.wait_for(waiting, 5)


async def test_without_a_session_the_transport_is_gone(comp: PresenceComponent, wire: Wire) -> None:
    with pytest.raises(TransportGone):
        await comp.roster_item("alice@example.test", "bob@example.test")
    with pytest.raises(TransportGone):
        await comp.set_roster_item("alice@example.test", RosterItem("bob@example.test", "to"))
    with pytest.raises(TransportGone):
        await comp.barrier(comp.generation)
    assert wire.sent == []


async def test_the_dispatcher_delivers_an_accept_through_the_component(
    comp: PresenceComponent, wire: Wire, db: Database
) -> None:
    created = await wire.ask(iq("set", "c1", "alice@example.test/r",
                                f"<presencehandshake xmlns='{NS}' action='create' to='bob@example.test'/>"))
    request_id = created["presencehandshake"]["id"]
    await wire.ask(iq("set", "a1", "bob@example.test/r",
                      f"<presencehandshake xmlns='{NS}' action='accept' id='{request_id}'/>"))
    await start_session(comp, wire)
    rows = await outbox.next_batch(db.reader, 0, 100)
    assert [(r.kind, r.recipient) for r in rows] == [
        ("message", "alice@example.test"), ("message", "bob@example.test"),
        ("message", "alice@example.test"), ("message", "bob@example.test"),
        ("roster", "alice@example.test"), ("roster", "bob@example.test"),
    ]
    wire.sent.clear()
    draining = asyncio.ensure_future(OutboxDispatcher(db, comp).drain())
    requests = f"xmpp:{COMPONENT}?command;node=urn:xmpp:presence-consent:cmd:requests"
    expected_messages = [
        (rows[0].id, "alice@example.test", "create", "sent", "pending",
         "You asked bob@example.test to share their presence with you; you will be told when they answer."),
        (rows[1].id, "bob@example.test", "create", "received", "pending",
         "alice@example.test asks to see your presence. To accept or decline, run the command"
         f' "Presence requests" of {COMPONENT}: {requests}'),
        (rows[2].id, "alice@example.test", "update", "sent", "accepted",
         "bob@example.test accepted: you now see their presence."),
        (rows[3].id, "bob@example.test", "update", "received", "accepted",
         "You now share your presence with alice@example.test. To stop, run the command"
         f' "Presence requests" of {COMPONENT}.'),
    ]
    for index, (row_id, to, action, side, status, body) in enumerate(expected_messages):
        sent = await wire.nth(index)
        assert same_xml(
            sent,
            f"<message type='management' id='ph-{row_id}' from='{COMPONENT}' to='{to}'>"
            f"<presencehandshake xmlns='{NS}' id='{request_id}' action='{action}' type='{side}'"
            f" status='{status}'/><body>{xml_text(body)}</body><store xmlns='urn:xmpp:hints'/></message>",
        ), str(sent)
    # Each roster change reads the owner's roster first (the item is the user's).
    gets = [await wire.nth(4), await wire.nth(5)]
    assert sorted((g["type"], g["to"].bare) for g in gets) == [
        ("get", "alice@example.test"), ("get", "bob@example.test"),
    ]
    for g in gets:
        wire.feed(
            f"<iq type='result' id='{g['id']}' from='{g['to']}' to='{COMPONENT}'>"
            "<query xmlns='jabber:iq:roster'/></iq>"
        )
    roster_sets = [await wire.nth(6), await wire.nth(7)]
    assert sorted((s["to"].bare, s.xml[0][0].attrib["jid"], s.xml[0][0].attrib["subscription"]) for s in roster_sets) == [
        ("alice@example.test", "bob@example.test", "to"),
        ("bob@example.test", "alice@example.test", "from"),
    ]
    assert await outbox.count(db.reader) == 6  # nothing is deleted before the server answers
    for s in roster_sets:
        wire.feed(f"<iq type='result' id='{s['id']}' from='{s['to']}' to='{COMPONENT}'/>")
    ping = await wire.nth(8)
    assert ping.xml.find("{urn:xmpp:ping}ping") is not None
    wire.feed(f"<iq type='result' id='{ping['id']}' from='example.test' to='{COMPONENT}'/>")
    await asyncio.wait_for(draining, 5)
    assert await outbox.count(db.reader) == 0


@pytest.mark.parametrize("sender", ["alice@example.test", "example.test/res", "evil.test"])
async def test_privilege_advertisements_are_only_taken_from_the_server(
    comp: PresenceComponent, wire: Wire, sender: str
) -> None:
    """XEP-0356 section 4.2: a user (or another domain) cannot grant or revoke privileges."""
    forged = comp.make_message(mto=COMPONENT, mfrom=sender)
    forged.xml.append(
        ET.fromstring(
            "<privilege xmlns='urn:xmpp:privilege:2'><perm access='roster' type='both'/></privilege>"
        )
    )
    comp.on_privileges(forged)
    assert not comp.roster_allowed("bob@example.test")
    assert comp.grants.roster == {}


def test_an_unreachable_server_is_logged_at_each_attempt(
    comp: PresenceComponent, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="component.xmpp"):
        comp.event("connection_failed", ConnectionRefusedError(111, "Connect call failed"))
        comp.event("connection_failed", ConnectionRefusedError(111, "Connect call failed"))
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("component.xmpp")]
    assert lines == [
        f"xmpp: cannot reach the server at 127.0.0.1:5347 ([Errno 111] Connect call failed); attempt {n},"
        " retrying within 3600 s"
        for n in (1, 2)
    ]


# ---- servers and rosters: both XEP-0356 namespaces, the backends, the warnings ------------

LEGACY = "urn:xmpp:privilege:1"  # what ejabberd 23.01 advertises


async def test_an_advertisement_in_privilege_1_is_read_too(comp: PresenceComponent, wire: Wire) -> None:
    """ejabberd before 23.10 advertises XEP-0356 in urn:xmpp:privilege:1."""
    wire.feed(privileges("example.test", "both", ns=LEGACY, presence="managed_entity"))
    assert comp.roster_allowed("alice@example.test") is True
    assert comp.grants.sees_presence("example.test")
    await comp.on_session_start(None)
    assert comp.status() == {"xmpp": "connected", "roster": "granted"}


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize(
    ("ns", "names", "not_named"),
    [
        ("urn:xmpp:privilege:2", "privileged_entities", "ejabberd"),
        (LEGACY, 'backend = "ejabberd_api"', "privileged_entities"),
    ],
)
async def test_the_missing_privilege_warning_names_the_fix_for_the_server_in_use(
    comp: PresenceComponent, wire: Wire, caplog: pytest.LogCaptureFixture, ns: str, names: str, not_named: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="component.xmpp"):
        wire.feed(privileges("example.test", None, ns=ns))
        await comp.on_session_start(None)
    [line] = [w for w in warnings_of(caplog) if "grants no XEP-0356 roster privilege" in w]
    assert names in line and not_named not in line, line


async def test_without_any_advertisement_the_warning_names_both_servers_fixes(
    configured, caplog: pytest.LogCaptureFixture  # noqa: ANN001
) -> None:
    comp, _wire = configured(privilege_wait_s=0.01)
    with caplog.at_level(logging.WARNING, logger="component.xmpp"):
        await comp.on_session_start(None)
    [line] = [w for w in warnings_of(caplog) if "grants no XEP-0356 roster privilege" in w]
    assert "privileged_entities" in line and 'backend = "ejabberd_api"' in line, line
    await comp.close()


async def test_privilege_1_roster_grant_warns_that_its_roster_sets_fail(
    comp: PresenceComponent, wire: Wire, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="component.xmpp"):
        wire.feed(privileges("example.test", "both", ns=LEGACY, presence="managed_entity"))
        await comp.on_session_start(None)
    assert any("urn:xmpp:privilege:1" in w and 'backend = "ejabberd_api"' in w for w in warnings_of(caplog))


async def test_backend_none_is_off_and_its_roster_rows_are_dropped(
    config: ComponentConfig, identity: Identity, sharing: PresenceSharing, states: PresenceStates,
    device_sharing: DeviceSharing, db: Database,
) -> None:
    from component.config import RosterConfig

    comp = PresenceComponent(
        config, identity, sharing, states, device_sharing, roster_config=RosterConfig(backend="none")
    )
    wire = Wire(comp)
    assert comp.status() == {"xmpp": "disconnected", "roster": "off"}
    await start_session(comp, wire, "both")  # whatever the server grants
    assert comp.status() == {"xmpp": "connected", "roster": "off"}
    assert comp.roster_allowed("alice@example.test") is False
    assert comp.rosters_off and not comp.roster_ready

    async def rows(tx) -> None:  # noqa: ANN001
        await outbox.add(tx, "roster", "alice@example.test", {"jid": "bob@example.test", "direction": "to", "op": "add"}, 1)
        await outbox.add(tx, "message", "alice@example.test", HANDSHAKE_ROW.payload, 1)

    await db.write(rows)
    dispatcher = OutboxDispatcher(db, comp)
    draining = asyncio.ensure_future(dispatcher.drain())
    sent = await wire.nth(0)
    assert sent.xml.find(f"{{{NS}}}presencehandshake") is not None  # the message; no roster IQ
    ping = await wire.nth(1)
    assert ping.xml.find("{urn:xmpp:ping}ping") is not None
    wire.feed(f"<iq type='result' id='{ping['id']}' from='example.test' to='{COMPONENT}'/>")
    await asyncio.wait_for(draining, 5)
    assert await outbox.count(db.reader) == 0
    await comp.close()


@pytest.mark.parametrize(("ns", "checks"), [("urn:xmpp:privilege:2", 1), (LEGACY, 2)])
async def test_where_no_unavailable_presence_is_forwarded_every_available_one_checks_the_roster(
    comp: PresenceComponent, wire: Wire, ns: str, checks: int
) -> None:
    """ejabberd 23.01 forwards a user's available presence, not the unavailable one of a
    disconnect: the same resource coming back is a new session there."""
    checked: list[str] = []
    comp.check_roster = checked.append  # type: ignore[method-assign]
    wire.feed(privileges("example.test", "both", ns=ns, presence="managed_entity"))
    for _ in range(2):
        wire.feed(f"<presence from='alice@example.test/phone' to='{COMPONENT}'/>")
    wire.feed(f"<presence from='carol@example.test/desk' to='{COMPONENT}'/>")  # handled after alice's
    async with asyncio.timeout(5):
        while "carol@example.test" not in checked:
            await asyncio.sleep(0.01)
    assert checked == ["alice@example.test"] * checks + ["carol@example.test"]
