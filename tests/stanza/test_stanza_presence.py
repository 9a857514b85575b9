"""Family 1 over XMPP: `jabber:iq:configuration` IQs in, exact IQ results and errors out."""

from __future__ import annotations

import json
import logging

import pytest

from component.actions import Identity, PresenceSharing
from component.clock import FixedClock
from component.model import BareJid, User, new_object_id
from component.xmpp import PresenceComponent
from storage import Database
from stanza_rig import COMPONENT, Wire, error_xml, iq, same_xml

NS = "jabber:iq:configuration"
RSM = "http://jabber.org/protocol/rsm"
ALICE = "alice@example.test/phone"
BOB = "bob@example.test/laptop"
CAROL = "carol@example.test/tablet"
T0 = "2026-01-01T00:00:00.000Z"


def result_xml(stanza_id: str, to: str, attrs: dict[str, str]) -> str:
    text = " ".join(f"{k}='{v}'" for k, v in attrs.items())
    return f"<iq type='result' id='{stanza_id}' from='{COMPONENT}' to='{to}'><presencehandshake xmlns='{NS}' {text}/></iq>"


def handshake(attrs: str) -> str:
    return f"<presencehandshake xmlns='{NS}' {attrs}/>"


async def user(identity: Identity, full_jid: str) -> User:
    return await identity.user_for_jid(BareJid(full_jid.split("/")[0]))


async def create(wire: Wire, sender: str, to: str, stanza_id: str = "c1") -> str:
    reply = await wire.ask(iq("set", stanza_id, sender, handshake(f"action='create' to='{to}'")))
    assert reply["type"] == "result", reply
    return reply["presencehandshake"]["id"]


async def transition(wire: Wire, sender: str, action: str, request_id: str, stanza_id: str = "t1"):
    return await wire.ask(iq("set", stanza_id, sender, handshake(f"action='{action}' id='{request_id}'")))


async def requests_in_db(db: Database) -> list[tuple[str, str]]:
    async with db.reader.execute("SELECT id, status FROM presence_requests ORDER BY request_date, id") as cur:
        return [tuple(r) for r in await cur.fetchall()]  # type: ignore[misc]


# ---- create, get, transitions ------------------------------------------------------------


async def test_create_answers_the_request_as_attributes(wire: Wire, identity: Identity, db: Database) -> None:
    reply = await wire.ask(iq("set", "c1", ALICE, handshake("action='create' to='Bob@Example.Test'")))
    request_id = reply["presencehandshake"]["id"]
    alice, bob = await user(identity, ALICE), await user(identity, BOB)
    assert same_xml(
        reply,
        result_xml(
            "c1",
            ALICE,
            {
                "id": request_id,
                "status": "pending",
                "fromUserId": alice.id,
                "fromJid": "alice@example.test",
                "toUserId": bob.id,
                "toJid": "bob@example.test",
                "requestDate": T0,
                "action": "create",
            },
        ),
    ), str(reply)
    assert await requests_in_db(db) == [(request_id, "pending")]
    async with db.reader.execute("SELECT kind, recipient, payload FROM outbox ORDER BY id") as cur:
        rows = [(r[0], r[1], json.loads(r[2])) for r in await cur.fetchall()]
    assert rows == [
        ("message", "alice@example.test",
         {"handshake": {"id": request_id, "action": "create", "type": "sent", "status": "pending"},
          "peer": "bob@example.test"}),
        ("message", "bob@example.test",
         {"handshake": {"id": request_id, "action": "create", "type": "received", "status": "pending"},
          "peer": "alice@example.test"}),
    ]


async def test_get_is_answered_to_both_parties(wire: Wire, identity: Identity) -> None:
    request_id = await create(wire, ALICE, "bob@example.test")
    alice, bob = await user(identity, ALICE), await user(identity, BOB)
    reply = await wire.ask(iq("get", "g1", BOB, handshake(f"id='{request_id}'")))
    assert same_xml(
        reply,
        result_xml(
            "g1",
            BOB,
            {
                "id": request_id,
                "status": "pending",
                "fromUserId": alice.id,
                "fromJid": "alice@example.test",
                "toUserId": bob.id,
                "toJid": "bob@example.test",
                "requestDate": T0,
            },
        ),
    ), str(reply)
    assert (await wire.ask(iq("get", "g2", ALICE, handshake(f"id='{request_id}'"))))["type"] == "result"


async def test_accept_then_interrupt(wire: Wire, identity: Identity, clock: FixedClock, db: Database) -> None:
    request_id = await create(wire, ALICE, "bob@example.test")
    alice, bob = await user(identity, ALICE), await user(identity, BOB)
    clock.advance(2_500)
    base = {
        "id": request_id,
        "fromUserId": alice.id,
        "fromJid": "alice@example.test",
        "toUserId": bob.id,
        "toJid": "bob@example.test",
        "requestDate": T0,
    }
    reply = await transition(wire, BOB, "accept", request_id, "t1")
    assert same_xml(
        reply,
        result_xml(
            "t1", BOB,
            {**base, "status": "accepted", "acceptationDate": "2026-01-01T00:00:02.500Z", "action": "accept"},
        ),
    ), str(reply)
    assert await requests_in_db(db) == [(request_id, "accepted")]
    reply = await transition(wire, BOB, "interrupt", request_id, "t2")
    assert same_xml(
        reply,
        result_xml(
            "t2", BOB,
            {**base, "status": "interrupted", "acceptationDate": "2026-01-01T00:00:02.500Z", "action": "interrupt"},
        ),
    ), str(reply)
    assert await requests_in_db(db) == []


@pytest.mark.parametrize(
    ("action", "sender", "status", "date"),
    [("decline", BOB, "declined", "declinationDate"), ("cancel", ALICE, "canceled", "cancellationDate")],
)
async def test_decline_and_cancel_delete_the_request(
    wire: Wire, identity: Identity, clock: FixedClock, db: Database,
    action: str, sender: str, status: str, date: str,
) -> None:
    request_id = await create(wire, ALICE, "bob@example.test")
    alice, bob = await user(identity, ALICE), await user(identity, BOB)
    clock.advance(1)
    reply = await transition(wire, sender, action, request_id)
    assert same_xml(
        reply,
        result_xml(
            "t1", sender,
            {
                "id": request_id,
                "status": status,
                "fromUserId": alice.id,
                "fromJid": "alice@example.test",
                "toUserId": bob.id,
                "toJid": "bob@example.test",
                "requestDate": T0,
                date: "2026-01-01T00:00:00.001Z",
                "action": action,
            },
        ),
    ), str(reply)
    assert await requests_in_db(db) == []


# ---- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "payload", "text"),
    [
        ("set", handshake("action='frob' id='0123456789abcdef01234567'"),
         "action must be create, accept, decline, cancel or interrupt"),
        ("set", handshake("id='0123456789abcdef01234567'"),
         "action must be create, accept, decline, cancel or interrupt"),
        ("set", handshake("action='accept' id='nope'"), "id must be a 24-character lowercase hex id"),
        ("get", handshake("id='0123456789ABCDEF01234567'"), "id must be a 24-character lowercase hex id"),
        ("get", handshake("action='accept' id='0123456789abcdef01234567'"), "a get carries no action"),
        ("set", handshake("action='create'"), "create needs a 'to' attribute with the user's JID"),
        ("set", handshake("action='create' to='bob@example.test/desk'"),
         "to must be a bare JID such as user@example.org"),
        ("set", handshake("action='create' to='alice@example.test'"), "cannot ask yourself to share presence"),
        ("set", handshake("action='create' to='eve@evil.test'"),
         "toJid must be a user of a served domain, not eve@evil.test"),
        ("set", f"<presencehandshakes xmlns='{NS}' type='sent'/>", "presencehandshakes is read with a get"),
        ("get", f"<presencehandshakes xmlns='{NS}' type='inbox'/>", "type must be received or sent"),
        ("get", f"<presencehandshakes xmlns='{NS}' type='sent' status='declined'/>",
         "status must be pending and/or accepted (declined, canceled and interrupted requests are deleted)"),
        ("get", f"<presencehandshakes xmlns='{NS}' type='sent'><set xmlns='{RSM}'><before/></set></presencehandshakes>",
         "paging backwards (&lt;before/&gt;) is not supported; use &lt;after/&gt; or &lt;index/&gt;"),
        ("get", f"<presencehandshakes xmlns='{NS}' type='sent'><set xmlns='{RSM}'><max>51</max></set></presencehandshakes>",
         "max must be between 0 and 50"),
        ("get", f"<presencehandshakes xmlns='{NS}' type='sent'><set xmlns='{RSM}'><after>zzz</after></set></presencehandshakes>",
         "after must be a 24-character lowercase hex id"),
    ],
)
async def test_bad_requests(wire: Wire, db: Database, kind: str, payload: str, text: str) -> None:
    reply = await wire.ask(iq(kind, "e1", ALICE, payload))
    assert same_xml(reply, error_xml("e1", ALICE, "modify", "bad-request", text)), str(reply)
    assert await requests_in_db(db) == []


async def test_an_iq_id_cannot_forge_a_log_line(wire: Wire, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="component.xmpp"):
        reply = await wire.ask(iq("get", "e1&#10;forged&#13;line", ALICE, handshake("id='nope'")))
    assert reply["type"] == "error"
    [message] = [r.getMessage() for r in caplog.records if r.name.startswith("component.xmpp")]
    assert message.startswith("iq e1\\x0aforged\\x0dline from alice@example.test/phone refused: bad-request")


async def test_unknown_or_foreign_requests_are_item_not_found(wire: Wire) -> None:
    unknown = new_object_id()
    reply = await wire.ask(iq("get", "e1", ALICE, handshake(f"id='{unknown}'")))
    assert same_xml(
        reply, error_xml("e1", ALICE, "cancel", "item-not-found", f"presence request {unknown} not found")
    ), str(reply)
    request_id = await create(wire, ALICE, "bob@example.test")
    reply = await transition(wire, CAROL, "accept", request_id, "e2")
    assert same_xml(
        reply, error_xml("e2", CAROL, "cancel", "item-not-found", f"presence request {request_id} not found")
    ), str(reply)


async def test_a_duplicate_and_a_wrong_state_are_conflicts(wire: Wire) -> None:
    request_id = await create(wire, ALICE, "bob@example.test")
    reply = await wire.ask(iq("set", "e1", ALICE, handshake("action='create' to='bob@example.test'")))
    assert same_xml(
        reply,
        error_xml("e1", ALICE, "cancel", "conflict",
                  "a pending or accepted request to bob@example.test already exists"),
    ), str(reply)
    reply = await transition(wire, BOB, "interrupt", request_id, "e2")
    assert same_xml(
        reply,
        error_xml("e2", BOB, "cancel", "conflict",
                  f"request {request_id} is pending; interrupt needs it accepted"),
    ), str(reply)


async def test_the_wrong_party_is_forbidden(wire: Wire) -> None:
    request_id = await create(wire, ALICE, "bob@example.test")
    reply = await transition(wire, ALICE, "accept", request_id, "e1")
    assert same_xml(
        reply, error_xml("e1", ALICE, "auth", "forbidden", "only the request's receiver may accept it")
    ), str(reply)


@pytest.mark.parametrize(
    ("sender", "text"),
    [
        ("example.test", "only user accounts may use this service"),
        ("example.test/admin", "only user accounts may use this service"),
        ("mallory@evil.test/x", "users of evil.test are not served here"),
    ],
)
async def test_senders_that_are_not_served_users_are_forbidden(
    wire: Wire, db: Database, sender: str, text: str
) -> None:
    reply = await wire.ask(iq("set", "e1", sender, handshake("action='create' to='bob@example.test'")))
    assert same_xml(reply, error_xml("e1", sender, "auth", "forbidden", text)), str(reply)
    listing = await wire.ask(iq("get", "e2", sender, f"<presencehandshakes xmlns='{NS}' type='sent'/>"))
    assert same_xml(listing, error_xml("e2", sender, "auth", "forbidden", text)), str(listing)
    async with db.reader.execute("SELECT count(*) FROM users") as cur:
        assert (await cur.fetchone())[0] == 0


async def test_an_unexpected_failure_is_an_internal_error_with_fixed_text(
    wire: Wire, sharing: PresenceSharing, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("SELECT * FROM secrets")

    monkeypatch.setattr(sharing, "create", explode)
    reply = await wire.ask(iq("set", "e1", ALICE, handshake("action='create' to='bob@example.test'")))
    assert same_xml(
        reply, error_xml("e1", ALICE, "wait", "internal-server-error", "Internal error")
    ), str(reply)
    assert "secrets" not in str(reply)


@pytest.mark.parametrize("kind", ["result", "error"])
async def test_results_and_errors_addressed_to_the_component_are_not_answered(
    wire: Wire, kind: str
) -> None:
    wire.feed(iq(kind, "stray", ALICE, handshake("action='create' to='bob@example.test'")))
    wire.feed(iq(kind, "stray2", ALICE, f"<presencehandshakes xmlns='{NS}' type='sent'/>"))
    # A later request is answered; nothing was sent for the two before it.
    await wire.ask(iq("get", "after", ALICE, f"<presencehandshakes xmlns='{NS}' type='sent'/>"))
    assert [s["id"] for s in wire.sent] == ["after"]


# ---- list with RSM ---------------------------------------------------------------------------


@pytest.fixture
async def inbox(wire: Wire, comp: PresenceComponent, clock: FixedClock) -> list[str]:
    """Three requests to alice one second apart (from s0, s1, s2); s1's accepted."""
    made = []
    for i in range(3):
        made.append(await create(wire, f"s{i}@example.test/r", "alice@example.test", f"c{i}"))
        clock.advance(1000)
    reply = await transition(wire, ALICE, "accept", made[1], "acc")
    assert reply["type"] == "result"
    wire.sent.clear()
    return made


def listing(box: str, rsm: str = "", status: str = "") -> str:
    status_attr = f" status='{status}'" if status else ""
    inner = f"<set xmlns='{RSM}'>{rsm}</set>" if rsm else ""
    return f"<presencehandshakes xmlns='{NS}' type='{box}'{status_attr}>{inner}</presencehandshakes>"


async def test_list_first_page_next_page_and_index(
    wire: Wire, identity: Identity, inbox: list[str]
) -> None:
    alice = await user(identity, ALICE)
    senders = [await user(identity, f"s{i}@example.test") for i in range(3)]

    def item(i: int) -> str:
        accepted = " acceptationDate='2026-01-01T00:00:03.000Z'" if i == 1 else ""
        return (
            f"<presencehandshake id='{inbox[i]}' status='{'accepted' if i == 1 else 'pending'}'"
            f" fromUserId='{senders[i].id}' fromJid='s{i}@example.test'"
            f" toUserId='{alice.id}' toJid='alice@example.test'"
            f" requestDate='2026-01-01T00:00:0{i}.000Z'{accepted}/>"
        )

    first = await wire.ask(iq("get", "l1", ALICE, listing("received", "<max>2</max>")))
    assert same_xml(
        first,
        f"<iq type='result' id='l1' from='{COMPONENT}' to='{ALICE}'>"
        f"<presencehandshakes xmlns='{NS}' type='received' status='accepted,pending'>"
        f"{item(0)}{item(1)}"
        f"<set xmlns='{RSM}'><first index='0'>{inbox[0]}</first><last>{inbox[1]}</last>"
        f"<count>3</count></set></presencehandshakes></iq>",
    ), str(first)

    second = await wire.ask(iq("get", "l2", ALICE, listing("received", f"<max>2</max><after>{inbox[1]}</after>")))
    assert same_xml(
        second,
        f"<iq type='result' id='l2' from='{COMPONENT}' to='{ALICE}'>"
        f"<presencehandshakes xmlns='{NS}' type='received' status='accepted,pending'>"
        f"{item(2)}"
        f"<set xmlns='{RSM}'><first>{inbox[2]}</first><last>{inbox[2]}</last>"
        f"<count>3</count></set></presencehandshakes></iq>",
    ), str(second)

    by_index = await wire.ask(iq("get", "l3", ALICE, listing("received", "<max>5</max><index>1</index>")))
    assert same_xml(
        by_index,
        f"<iq type='result' id='l3' from='{COMPONENT}' to='{ALICE}'>"
        f"<presencehandshakes xmlns='{NS}' type='received' status='accepted,pending'>"
        f"{item(1)}{item(2)}"
        f"<set xmlns='{RSM}'><first index='1'>{inbox[1]}</first><last>{inbox[2]}</last>"
        f"<count>3</count></set></presencehandshakes></iq>",
    ), str(by_index)


async def test_list_count_only_and_empty_pages(wire: Wire, inbox: list[str]) -> None:
    count_only = await wire.ask(iq("get", "l1", ALICE, listing("received", "<max>0</max>")))
    assert same_xml(
        count_only,
        f"<iq type='result' id='l1' from='{COMPONENT}' to='{ALICE}'>"
        f"<presencehandshakes xmlns='{NS}' type='received' status='accepted,pending'>"
        f"<set xmlns='{RSM}'><count>3</count></set></presencehandshakes></iq>",
    ), str(count_only)
    sent = await wire.ask(iq("get", "l2", ALICE, listing("sent")))
    assert same_xml(
        sent,
        f"<iq type='result' id='l2' from='{COMPONENT}' to='{ALICE}'>"
        f"<presencehandshakes xmlns='{NS}' type='sent' status='accepted,pending'>"
        f"<set xmlns='{RSM}'><count>0</count></set></presencehandshakes></iq>",
    ), str(sent)


async def test_list_status_filter(wire: Wire, inbox: list[str]) -> None:
    reply = await wire.ask(iq("get", "l1", ALICE, listing("received", status="pending")))
    body = reply["presencehandshakes"]
    assert body["status"] == "pending"
    assert [item["id"] for item in body["presencehandshake_items"]] == [inbox[0], inbox[2]]
    assert body["rsm"]["count"] == "2"
    reply = await wire.ask(iq("get", "l2", ALICE, listing("received", status="accepted")))
    assert [item["id"] for item in reply["presencehandshakes"]["presencehandshake_items"]] == [inbox[1]]
    reply = await wire.ask(iq("get", "l3", "s1@example.test/r", listing("sent", status="pending,accepted")))
    assert [item["id"] for item in reply["presencehandshakes"]["presencehandshake_items"]] == [inbox[1]]
