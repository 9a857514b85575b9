"""Malformed and oversized stanzas (issue #10): each IQ gets exactly one answer, an error
with a sensible condition, and nothing is logged as an unexpected failure; each presence
gets at most one answer. The XML goes through slixmpp's own stanza classes, as from the
server, and through the component's handlers, as in production."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from component.xmpp import PresenceComponent
from stanza_rig import COMPONENT, Wire, iq
from test_stanza_transport import start_session

NS_CONF = "jabber:iq:configuration"
NS_STATE = "urn:xmpp:presence-consent:0"
NS_SHARE = "urn:xmpp:presence-consent:share:0"
RSM = "http://jabber.org/protocol/rsm"
ALICE = "alice@example.test/r"
ADMIN = "admin@example.test/console"
HUGE = "x" * 70_000
CONDITIONS = {
    "bad-request", "forbidden", "item-not-found", "conflict", "feature-not-implemented", "service-unavailable",
    "service-unavailable", "not-authorized", "resource-constraint", "policy-violation",
}

IQS: list[tuple[str, str, str]] = [
    # (type, sender, payload)
    ("set", ALICE, f"<presencehandshake xmlns='{NS_CONF}'/>"),
    ("set", ALICE, f"<presencehandshake xmlns='{NS_CONF}' action='create'/>"),
    ("set", ALICE, f"<presencehandshake xmlns='{NS_CONF}' action='create' to=''/>"),
    ("set", ALICE, f"<presencehandshake xmlns='{NS_CONF}' action='create' to='{HUGE}@example.test'/>"),
    ("set", ALICE, f"<presencehandshake xmlns='{NS_CONF}' action='create' to='\u202ebob@example.test'/>"),
    ("set", ALICE, f"<presencehandshake xmlns='{NS_CONF}' action='create' to='\U0001f4de@example.test'/>"),
    ("set", ALICE, f"<presencehandshake xmlns='{NS_CONF}' action='create' to='bob@example.test/res'/>"),
    ("set", ALICE, f"<presencehandshake xmlns='{NS_CONF}' action='create' to='alice@example.test'/>"),
    ("set", ALICE, f"<presencehandshake xmlns='{NS_CONF}' action='create' to='bob@elsewhere.test'/>"),
    ("set", ALICE, f"<presencehandshake xmlns='{NS_CONF}' action='{HUGE}' id='0123'/>"),
    ("set", ALICE, f"<presencehandshake xmlns='{NS_CONF}' action='accept'/>"),
    ("set", ALICE, f"<presencehandshake xmlns='{NS_CONF}' action='accept' id='{HUGE}'/>"),
    ("set", ALICE, f"<presencehandshake xmlns='{NS_CONF}' action='accept' id='0123456789abcdef01234567'/>"),
    ("get", ALICE, f"<presencehandshake xmlns='{NS_CONF}'/>"),
    ("get", ALICE, f"<presencehandshake xmlns='{NS_CONF}' id='zz'/>"),
    ("get", ALICE, f"<presencehandshake xmlns='{NS_CONF}' action='create' id='0123456789abcdef01234567'/>"),
    ("set", ALICE, f"<presencehandshakes xmlns='{NS_CONF}' type='received'/>"),
    ("get", ALICE, f"<presencehandshakes xmlns='{NS_CONF}'/>"),
    ("get", ALICE, f"<presencehandshakes xmlns='{NS_CONF}' type='received' status='{HUGE}'/>"),
    ("get", ALICE, f"<presencehandshakes xmlns='{NS_CONF}' type='sent' status='declined'/>"),
    ("get", ALICE, f"<presencehandshakes xmlns='{NS_CONF}' type='sent'><set xmlns='{RSM}'><max>-1</max></set></presencehandshakes>"),
    ("get", ALICE, f"<presencehandshakes xmlns='{NS_CONF}' type='sent'><set xmlns='{RSM}'><max>{'9' * 400}</max></set></presencehandshakes>"),
    ("get", ALICE, f"<presencehandshakes xmlns='{NS_CONF}' type='sent'><set xmlns='{RSM}'><max>ten</max></set></presencehandshakes>"),
    ("get", ALICE, f"<presencehandshakes xmlns='{NS_CONF}' type='sent'><set xmlns='{RSM}'><index>-5</index></set></presencehandshakes>"),
    ("get", ALICE, f"<presencehandshakes xmlns='{NS_CONF}' type='sent'><set xmlns='{RSM}'><after>{HUGE}</after></set></presencehandshakes>"),
    ("get", ALICE, f"<presencehandshakes xmlns='{NS_CONF}' type='sent'><set xmlns='{RSM}'><before/></set></presencehandshakes>"),
    ("set", ADMIN, f"<presencestate xmlns='{NS_STATE}'/>"),
    ("set", ADMIN, f"<presencestate xmlns='{NS_STATE}' extension='{HUGE}' action='reset'/>"),
    ("set", ADMIN, f"<presencestate xmlns='{NS_STATE}' extension='\U0001f4de' action='reset'/>"),
    ("set", ADMIN, f"<presencestate xmlns='{NS_STATE}' extension='101' action='set'/>"),
    ("set", ADMIN, f"<presencestate xmlns='{NS_STATE}' extension='101' action='set' state='{HUGE}'/>"),
    ("set", ADMIN, f"<presencestate xmlns='{NS_STATE}' extension='101' action='reset' realm='{HUGE}'/>"),
    ("get", ADMIN, f"<presencestate xmlns='{NS_STATE}' extension='101' action='reset'/>"),
    ("set", ALICE, f"<presencestate xmlns='{NS_STATE}' extension='101' action='reset'/>"),
    ("set", ALICE, f"<deviceshare xmlns='{NS_SHARE}'/>"),
    ("set", ALICE, f"<deviceshare xmlns='{NS_SHARE}' action='share'/>"),
    ("set", ALICE, f"<deviceshare xmlns='{NS_SHARE}' action='share' device_id='{HUGE}' mode='app' expire='60' user='bob@example.test'/>"),
    ("set", ALICE, f"<deviceshare xmlns='{NS_SHARE}' action='share' device_id='00112233445566778899aabbccddeeff' mode='app' expire='{'9' * 500}' user='b@example.test'/>"),
    ("set", ALICE, f"<deviceshare xmlns='{NS_SHARE}' action='share' device_id='00112233445566778899aabbccddeeff' mode='fax' expire='60'/>"),
    ("set", ALICE, f"<deviceshare xmlns='{NS_SHARE}' action='accept' invite_code='{HUGE}'/>"),
    ("set", ALICE, f"<deviceshare xmlns='{NS_SHARE}' action='deny' invite_code='abcdefghijklmnopqrstuvwxyz012345' reason='{HUGE}'/>"),
    ("set", ALICE, f"<deviceshare xmlns='{NS_SHARE}' action='cancel' invite_code='abcdefghijklmnopqrstuvwxyz012345' bogus='1'/>"),
    ("set", ALICE, f"<deviceshare xmlns='{NS_SHARE}' action='delete'/>"),
    ("set", ALICE, f"<deviceshare xmlns='{NS_SHARE}' action='{HUGE}'/>"),
    ("get", ALICE, f"<deviceshare xmlns='{NS_SHARE}' action='accept' invite_code='abcdefghijklmnopqrstuvwxyz012345'/>"),
    ("set", ALICE, f"<deviceshares xmlns='{NS_SHARE}'/>"),
    ("get", "example.test", f"<presencehandshakes xmlns='{NS_CONF}' type='sent'/>"),
    ("get", "mallory@evil.test/x", f"<presencehandshakes xmlns='{NS_CONF}' type='sent'/>"),
    ("get", ALICE, "<query xmlns='urn:example:unknown'/>"),
    ("set", ALICE, ""),
]


@pytest.fixture
async def session(comp: PresenceComponent, wire: Wire) -> Wire:
    await start_session(comp, wire)
    wire.sent.clear()
    return wire


async def replies_to(wire: Wire, stanza_id: str) -> list:
    await wire.wait_for(stanza_id)
    await asyncio.sleep(0.05)  # a second answer would come right after the first
    return [s for s in wire.sent if s["id"] == stanza_id]


@pytest.mark.parametrize(("kind", "sender", "payload"), IQS, ids=[f"iq{n}" for n in range(len(IQS))])
async def test_a_bad_iq_gets_exactly_one_error(
    session: Wire, caplog: pytest.LogCaptureFixture, kind: str, sender: str, payload: str
) -> None:
    caplog.set_level(logging.INFO)
    session.feed(iq(kind, "f1", sender, payload))
    answers = await replies_to(session, "f1")
    assert len(answers) == 1, [str(a) for a in answers]
    (answer,) = answers
    assert answer["type"] == "error", str(answer)
    assert answer["error"]["condition"] in CONDITIONS, str(answer)
    assert len(str(answer)) < 4_000  # the answer does not echo a huge input back
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


PRESENCES = [
    f"<presence type='subscribe' from='{ALICE}' to='{HUGE}@{COMPONENT}'/>",
    f"<presence type='probe' from='{ALICE}' to='a b@{COMPONENT}'/>",
    f"<presence type='subscribe' from='{ALICE}' to='\U0001f4de@{COMPONENT}'/>",
    f"<presence type='unsubscribe' from='{ALICE}' to='\U0001f4de@{COMPONENT}'/>",
    f"<presence type='subscribe' from='example.test' to='101@{COMPONENT}'/>",
    f"<presence type='subscribe' from='mallory@evil.test/x' to='101@{COMPONENT}'/>",
    f"<presence type='bogus' from='{ALICE}' to='101@{COMPONENT}'/>",
    f"<presence from='{ALICE}' to='101@{COMPONENT}'><status>{HUGE}</status></presence>",
    f"<presence type='unavailable' from='{ALICE}' to='{COMPONENT}'/>",
    f"<presence from='example.test' to='{COMPONENT}'/>",
]


@pytest.mark.parametrize("xml", PRESENCES, ids=[f"presence{n}" for n in range(len(PRESENCES))])
async def test_a_bad_presence_gets_at_most_one_answer(
    session: Wire, caplog: pytest.LogCaptureFixture, xml: str
) -> None:
    caplog.set_level(logging.INFO)
    session.feed(xml)
    await asyncio.sleep(0.05)
    assert len(session.sent) <= 1, [str(s) for s in session.sent]
    for answer in session.sent:
        assert answer.xml.get("type") == "unsubscribed", str(answer)
        assert len(str(answer)) < 4_000
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


async def test_random_attribute_soup_never_fails_unexpectedly(
    session: Wire, caplog: pytest.LogCaptureFixture
) -> None:
    """A few hundred IQs with random attributes and values drawn from hostile pieces:
    each answered once, none logged as an unexpected failure (seeded: repeatable)."""
    rng = random.Random(1009)
    pieces = ["", "a", "0123456789abcdef01234567", "bob@example.test", "\u202e", "\U0001f4de", "-1",
              "999999999999999999999", "create", "accept", "share", "app", "qrcode", "x" * 3000, "<", "&amp;"]
    elements = [(NS_CONF, "presencehandshake"), (NS_CONF, "presencehandshakes"), (NS_STATE, "presencestate"),
                (NS_SHARE, "deviceshare"), (NS_SHARE, "deviceshares")]
    attrs = ["action", "id", "to", "type", "status", "extension", "state", "realm", "device_id", "mode",
             "expire", "user", "authority", "invite_code", "reason"]
    caplog.set_level(logging.INFO)
    for n in range(300):
        ns, name = rng.choice(elements)
        chosen = {a: rng.choice(pieces).replace("<", "&lt;") for a in rng.sample(attrs, rng.randint(0, 5))}
        text = " ".join(f"{k}='{v}'" for k, v in chosen.items())
        sender = rng.choice([ALICE, ADMIN])
        session.feed(iq(rng.choice(["get", "set"]), f"r{n}", sender, f"<{name} xmlns='{ns}' {text}/>"))
    for n in range(300):
        await session.wait_for(f"r{n}")
    await asyncio.sleep(0.05)
    by_id: dict[str, int] = {}
    for stanza in session.sent:
        if stanza.xml.tag.endswith("iq"):
            by_id[stanza["id"]] = by_id.get(stanza["id"], 0) + 1
    assert sorted(by_id) == sorted(f"r{n}" for n in range(300)) and set(by_id.values()) == {1}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records][:5]
