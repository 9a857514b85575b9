"""Family 2 over XMPP: presence subscriptions to `{extension}@{component}`, probes, the
state presences the outbox turns into stanzas, and the admins' `presencestate` IQ."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from slixmpp.xmlstream import StanzaBase

from component.commands import CreateAccount, Principal
from component.delivery import OutboxDispatcher
from component.model import Account
from component.provisioning import Provisioning
from component.xmpp import PresenceComponent
from component.xmpp.session import SERVICE_STATUS
from storage import Database, outbox
from stanza_rig import COMPONENT, Wire, error_xml, iq, same_xml

NS = "urn:xmpp:presence-consent:0"
EXT = f"*3101@{COMPONENT}"
ALICE = "alice@example.test/r"
ADMIN = "admin@example.test/console"


@pytest.fixture
async def account(provisioning: Provisioning) -> Account:
    return await provisioning.create_account(Principal(None), CreateAccount("Example", "example.test"))


async def deliver(wire: Wire, xml: str) -> None:
    await wire.deliver(xml)


def presence(kind: str | None, sender: str = ALICE, to: str = EXT) -> str:
    type_attr = f" type='{kind}'" if kind else ""
    return f"<presence{type_attr} from='{sender}' to='{to}'/>"


async def flush_outbox(comp: PresenceComponent, db: Database) -> list[int]:
    """What the dispatcher does with presence rows: send each through the component."""
    rows = await outbox.next_batch(db.reader, 0, 100)
    assert {r.kind for r in rows} <= {"presence"}
    for row in rows:
        comp.send_presence(row)
    return [r.id for r in rows]


def state_xml(
    row_id: int | None, to: str, state: str, sequence: int | None, extension: str = "*3101"
) -> str:
    show, status = {"terminated": (None, "Idle"), "early": ("away", "Ringing"), "confirmed": ("dnd", "Busy")}[state]
    id_attr = f" id='ps-{row_id}'" if row_id is not None else ""
    seq_attr = f" sequence='{sequence}'" if sequence is not None else ""
    show_xml = f"<show>{show}</show>" if show else ""
    return (
        f"<presence{id_attr} from='{extension}@{COMPONENT}' to='{to}'>{show_xml}<status>{status}</status>"
        f"<dialog xmlns='{NS}' state='{state}'{seq_attr}/></presence>"
    )


def typed_xml(row_id: int | None, to: str, kind: str, extension: str = "*3101") -> str:
    id_attr = f" id='ps-{row_id}'" if row_id is not None else ""
    return f"<presence{id_attr} type='{kind}' from='{extension}@{COMPONENT}' to='{to}'/>"


def assert_sent(sent: list[StanzaBase], expected: list[str]) -> None:
    assert len(sent) == len(expected), [str(s) for s in sent]
    for actual, wanted in zip(sent, expected, strict=True):
        if " id=" not in wanted:
            # Sent at once rather than from the outbox: slixmpp gives it a fresh random id.
            assert actual["id"], str(actual)
            actual = copy.copy(actual)
            del actual["id"]
        assert same_xml(actual, wanted), f"{actual}\n!=\n{wanted}"


async def subscription_rows(db: Database) -> list[tuple[Any, ...]]:
    async with db.reader.execute(
        "SELECT realm, extension, event, subscriber, notify_sequence, notify_body FROM subscriptions"
        " ORDER BY extension, subscriber"
    ) as cur:
        return [tuple(r) for r in await cur.fetchall()]


def state_iq(stanza_id: str, sender: str, attrs: str) -> str:
    return iq("set", stanza_id, sender, f"<presencestate xmlns='{NS}' {attrs}/>")


# ---- subscribe ------------------------------------------------------------------------------


async def test_subscribe_records_it_then_answers_subscribed_and_the_state(
    comp: PresenceComponent, wire: Wire, db: Database
) -> None:
    await deliver(wire, presence("subscribe"))
    assert await subscription_rows(db) == [
        ("example.test", "*3101", "presence", "alice@example.test", 1, "terminated")
    ]
    assert wire.sent == []  # everything goes through the outbox
    first, second = await flush_outbox(comp, db)
    assert_sent(wire.sent, [
        typed_xml(first, "alice@example.test", "subscribed"),
        state_xml(second, "alice@example.test", "terminated", 1),
    ])


async def test_subscribing_again_counts_up_the_sequence(comp: PresenceComponent, wire: Wire, db: Database) -> None:
    await deliver(wire, presence("subscribe"))
    await deliver(wire, presence("subscribe", "alice@example.test/other"))
    assert await subscription_rows(db) == [
        ("example.test", "*3101", "presence", "alice@example.test", 2, "terminated")
    ]
    ids = await flush_outbox(comp, db)
    assert_sent(wire.sent, [
        typed_xml(ids[0], "alice@example.test", "subscribed"),
        state_xml(ids[1], "alice@example.test", "terminated", 1),
        typed_xml(ids[2], "alice@example.test", "subscribed"),
        state_xml(ids[3], "alice@example.test", "terminated", 2),
    ])


@pytest.mark.parametrize("state", ["confirmed", "early", "terminated"])
async def test_state_changes_reach_subscribers_as_show_and_status(
    comp: PresenceComponent, wire: Wire, db: Database, account: Account, state: str
) -> None:
    await deliver(wire, presence("subscribe"))
    await deliver(wire, presence("subscribe", "bob@example.test/laptop"))
    reply = await wire.ask(state_iq("s1", ADMIN, f"extension='*3101' action='set' state='{state}'"))
    assert reply["type"] == "result", str(reply)
    wire.sent.clear()
    ids = await flush_outbox(comp, db)
    assert_sent(wire.sent, [
        typed_xml(ids[0], "alice@example.test", "subscribed"),
        state_xml(ids[1], "alice@example.test", "terminated", 1),
        typed_xml(ids[2], "bob@example.test", "subscribed"),
        state_xml(ids[3], "bob@example.test", "terminated", 1),
        state_xml(ids[4], "alice@example.test", state, 2),
        state_xml(ids[5], "bob@example.test", state, 2),
    ])


async def test_subscribe_from_an_unserved_domain_is_answered_unsubscribed(
    wire: Wire, db: Database
) -> None:
    await deliver(wire, presence("subscribe", "mallory@elsewhere.test/x"))
    assert_sent(wire.sent, [typed_xml(None, "mallory@elsewhere.test", "unsubscribed")])
    assert await subscription_rows(db) == []
    assert await outbox.count(db.reader) == 0


async def test_subscribe_from_a_server_jid_is_answered_unsubscribed(wire: Wire, db: Database) -> None:
    await deliver(wire, presence("subscribe", "example.test"))
    assert_sent(wire.sent, [typed_xml(None, "example.test", "unsubscribed")])
    assert await subscription_rows(db) == []


@pytest.mark.parametrize("extension", ["x!y", "(101)", "e" * 65])
async def test_subscribe_to_a_malformed_extension_is_answered_unsubscribed(
    wire: Wire, db: Database, extension: str
) -> None:
    # Valid JID localparts the extension pattern refuses.
    await deliver(wire, presence("subscribe", to=f"{extension}@{COMPONENT}"))
    assert_sent(wire.sent, [typed_xml(None, "alice@example.test", "unsubscribed", extension=extension)])
    assert await subscription_rows(db) == []
    assert await outbox.count(db.reader) == 0


# ---- unsubscribe, probe, other presence -----------------------------------------------------


async def test_unsubscribe_removes_the_row_and_sends_unavailable(
    comp: PresenceComponent, wire: Wire, db: Database
) -> None:
    await deliver(wire, presence("subscribe"))
    await deliver(wire, presence("unsubscribe"))
    assert await subscription_rows(db) == []
    ids = await flush_outbox(comp, db)
    assert_sent(wire.sent[2:], [typed_xml(ids[2], "alice@example.test", "unavailable")])
    # Unsubscribing when not subscribed writes nothing and sends nothing.
    wire.sent.clear()
    await deliver(wire, presence("unsubscribe"))
    assert wire.sent == []
    assert len(await outbox.next_batch(db.reader, 0, 100)) == 3


async def test_a_probe_from_a_subscriber_gets_the_state(
    wire: Wire, db: Database, account: Account
) -> None:
    await deliver(wire, presence("subscribe"))
    await deliver(wire, presence("probe", "alice@example.test"))
    assert_sent(wire.sent, [state_xml(None, "alice@example.test", "terminated", None)])
    await wire.ask(state_iq("s1", ADMIN, "extension='*3101' action='set' state='early'"))
    wire.sent.clear()
    await deliver(wire, presence("probe", "alice@example.test"))
    assert_sent(wire.sent, [state_xml(None, "alice@example.test", "early", None)])
    # A probe is answered, not counted.
    assert await subscription_rows(db) == [
        ("example.test", "*3101", "presence", "alice@example.test", 2, "early")
    ]


async def test_a_probe_from_a_non_subscriber_gets_unsubscribed(wire: Wire, db: Database) -> None:
    await deliver(wire, presence("probe", "bob@example.test"))
    assert_sent(wire.sent, [typed_xml(None, "bob@example.test", "unsubscribed")])
    wire.sent.clear()
    await deliver(wire, presence("probe", "mallory@elsewhere.test"))
    assert_sent(wire.sent, [typed_xml(None, "mallory@elsewhere.test", "unsubscribed")])
    assert await subscription_rows(db) == []


@pytest.mark.parametrize(
    "xml",
    [
        presence(None),
        presence(None, to=COMPONENT),
        presence("unavailable"),
        presence("subscribed"),
        presence("unsubscribed"),
        f"<presence from='{ALICE}' to='{EXT}'><show>away</show></presence>",
    ],
)
async def test_other_presence_is_ignored(wire: Wire, db: Database, xml: str) -> None:
    await deliver(wire, xml)
    assert wire.sent == []
    assert await subscription_rows(db) == []
    assert await outbox.count(db.reader) == 0


async def test_slixmpp_s_roster_keeps_nothing_and_answers_nothing(
    comp: PresenceComponent, wire: Wire
) -> None:
    before = {node: list(comp.roster[node].keys()) for node in comp.roster.keys()}
    await deliver(wire, presence("subscribe"))
    await deliver(wire, presence("probe", "alice@example.test"))
    await deliver(wire, presence("probe", "bob@example.test", COMPONENT))
    await deliver(wire, presence(None, "carol@example.test/x", f"101@{COMPONENT}"))
    after = {node: list(comp.roster[node].keys()) for node in comp.roster.keys()}
    assert after == before
    assert EXT not in comp.roster.keys()
    # Only our own answers: the state to alice's probe, the service's availability to
    # bob's probe of the service's JID; nothing from slixmpp.
    assert_sent(wire.sent, [
        state_xml(None, "alice@example.test", "terminated", None),
        f"<presence from='{COMPONENT}' to='bob@example.test'><status>{SERVICE_STATUS}</status></presence>",
    ])


# ---- the admins' presencestate IQ -----------------------------------------------------------


async def test_an_admin_sets_and_resets_a_state(
    comp: PresenceComponent, wire: Wire, db: Database, account: Account
) -> None:
    await deliver(wire, presence("subscribe"))
    reply = await wire.ask(state_iq("s1", ADMIN, "extension='*3101' action='set' state='confirmed'"))
    assert same_xml(
        reply,
        f"<iq type='result' id='s1' from='{COMPONENT}' to='{ADMIN}'>"
        f"<presencestate xmlns='{NS}' extension='*3101' realm='example.test' state='confirmed'/></iq>",
    ), str(reply)
    async with db.reader.execute("SELECT realm, extension, state FROM extension_states") as cur:
        assert [tuple(r) for r in await cur.fetchall()] == [("example.test", "*3101", "confirmed")]

    reply = await wire.ask(
        state_iq("s2", ADMIN, "extension='*3101' action='reset' state='early' realm='Example.Test'")
    )
    assert same_xml(
        reply,
        f"<iq type='result' id='s2' from='{COMPONENT}' to='{ADMIN}'>"
        f"<presencestate xmlns='{NS}' extension='*3101' realm='example.test' state='terminated'/></iq>",
    ), str(reply)
    wire.sent.clear()
    ids = await flush_outbox(comp, db)
    assert_sent(wire.sent, [
        typed_xml(ids[0], "alice@example.test", "subscribed"),
        state_xml(ids[1], "alice@example.test", "terminated", 1),
        state_xml(ids[2], "alice@example.test", "confirmed", 2),
        state_xml(ids[3], "alice@example.test", "terminated", 3),
    ])


async def test_a_non_admin_is_forbidden(wire: Wire, db: Database, account: Account) -> None:
    reply = await wire.ask(state_iq("s1", ALICE, "extension='*3101' action='set' state='confirmed'"))
    assert same_xml(
        reply,
        error_xml("s1", ALICE, "auth", "forbidden", "only the service's XMPP admins may change presence states"),
    ), str(reply)
    async with db.reader.execute("SELECT count(*) FROM extension_states") as cur:
        assert (await cur.fetchone())[0] == 0


@pytest.mark.parametrize(
    ("attrs", "text"),
    [
        ("extension='*3101' action='toggle'", 'action must be "set" or "reset"'),
        ("extension='*3101'", 'action must be "set" or "reset"'),
        ("extension='*3101' action='set' state='busy'", "state must be one of confirmed, early, terminated"),
        ("extension='*3101' action='set'", "state is required with action set"),
        ("extension='a b' action='reset'",
         "extension must be 1-64 characters of letters, digits and * # + . _ ~ -"),
        ("action='reset'", "extension must be 1-64 characters of letters, digits and * # + . _ ~ -"),
        ("extension='*3101' action='reset' realm='elsewhere.test'",
         "realm must be a served domain, not elsewhere.test"),
    ],
)
async def test_bad_state_commands_are_bad_requests(
    wire: Wire, db: Database, account: Account, attrs: str, text: str
) -> None:
    reply = await wire.ask(state_iq("s1", ADMIN, attrs))
    assert same_xml(reply, error_xml("s1", ADMIN, "modify", "bad-request", text)), str(reply)
    async with db.reader.execute("SELECT count(*) FROM extension_states") as cur:
        assert (await cur.fetchone())[0] == 0


async def test_a_get_is_a_bad_request(wire: Wire, account: Account) -> None:
    reply = await wire.ask(iq("get", "g1", ADMIN, f"<presencestate xmlns='{NS}' extension='*3101'/>"))
    assert same_xml(
        reply, error_xml("g1", ADMIN, "modify", "bad-request", "presencestate is changed with a set")
    ), str(reply)


async def test_without_an_account_for_the_realm_the_extension_is_not_found(wire: Wire, db: Database) -> None:
    reply = await wire.ask(state_iq("s1", ADMIN, "extension='*3101' action='reset'"))
    assert same_xml(
        reply, error_xml("s1", ADMIN, "cancel", "item-not-found", "no account has realm example.test")
    ), str(reply)
    async with db.reader.execute("SELECT count(*) FROM extension_states") as cur:
        assert (await cur.fetchone())[0] == 0


# ---- delivery ----------------------------------------------------------------------------------


async def test_the_dispatcher_sends_presence_rows_and_deletes_them_after_the_barrier(
    comp: PresenceComponent, wire: Wire, db: Database
) -> None:
    await deliver(wire, presence("subscribe"))
    rows = await outbox.next_batch(db.reader, 0, 100)
    wire.feed(
        f"<message from='example.test' to='{COMPONENT}' id='adv1'><privilege xmlns='urn:xmpp:privilege:2'>"
        "<perm access='roster' type='both'/><perm access='message' type='outgoing'/></privilege></message>"
    )
    await comp.on_session_start(None)
    wire.sent.clear()
    draining = asyncio.ensure_future(OutboxDispatcher(db, comp).drain())
    assert_sent([await wire.nth(0), await wire.nth(1)], [
        typed_xml(rows[0].id, "alice@example.test", "subscribed"),
        state_xml(rows[1].id, "alice@example.test", "terminated", 1),
    ])
    ping = await wire.nth(2)
    assert ping.xml.find("{urn:xmpp:ping}ping") is not None
    assert await outbox.count(db.reader) == 2  # nothing is deleted before the server answers
    wire.feed(f"<iq type='result' id='{ping['id']}' from='example.test' to='{COMPONENT}'/>")
    await asyncio.wait_for(draining, 5)
    assert await outbox.count(db.reader) == 0
