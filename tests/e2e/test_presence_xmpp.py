"""Family 1 (presence sharing) over IQs from real clients to the component, through Prosody."""

from __future__ import annotations

import pytest
from slixmpp.xmlstream import ET

from tests.e2e.conftest import (
    removal_pushes,
    both_servers,
    COMPONENT,
    ISO_MS,
    NS_CONF,
    NS_RSM,
    RestApi,
    XmppUser,
    error_condition,
    handshake_of,
    management,
)

pytestmark = pytest.mark.e2e


async def create(sender: XmppUser, receiver: XmppUser) -> dict[str, str]:
    request = handshake_of(await sender.handshake(action="create", to=receiver.jid))
    assert await sender.next_management() == [management(request["id"], "create", "sent", "pending")]
    assert await receiver.next_management() == [management(request["id"], "create", "received", "pending")]
    return request


def list_query(box: str, status: str | None = None, **rsm: str) -> ET.Element:
    attrs = {"type": box} | ({"status": status} if status else {})
    query = ET.Element(f"{{{NS_CONF}}}presencehandshakes", attrs)
    if rsm:
        rsm_set = ET.SubElement(query, f"{{{NS_RSM}}}set")
        for name, value in rsm.items():
            ET.SubElement(rsm_set, f"{{{NS_RSM}}}{name}").text = value
    return query


def listed(answer) -> tuple[list[dict[str, str]], dict[str, str]]:
    """The items of a presencehandshakes result and its RSM fields (first, last, count...)."""
    assert answer["type"] == "result", answer
    query = answer.xml.find(f"{{{NS_CONF}}}presencehandshakes")
    items = [dict(item.attrib) for item in query.findall(f"{{{NS_CONF}}}presencehandshake")]
    paging: dict[str, str] = {}
    rsm_set = query.find(f"{{{NS_RSM}}}set")
    if rsm_set is not None:
        for child in rsm_set:
            paging[child.tag.partition("}")[2]] = child.text or ""
            if child.get("index") is not None:
                paging["first_index"] = child.get("index")
    return items, paging


@both_servers
async def test_create_get_accept_interrupt(alice: XmppUser, bob: XmppUser, api: RestApi) -> None:
    answer = await alice.handshake(action="create", to=bob.jid)
    assert answer["from"].bare == COMPONENT
    request = handshake_of(answer)
    assert request["action"] == "create"
    assert request["status"] == "pending"
    assert (request["fromJid"], request["toJid"]) == (alice.jid, bob.jid)
    assert ISO_MS.fullmatch(request["requestDate"])
    assert "acceptationDate" not in request
    assert await alice.next_management() == [management(request["id"], "create", "sent", "pending")]
    assert await bob.next_management() == [management(request["id"], "create", "received", "pending")]

    # the same request and the same user ids as the REST side sees
    a = await api.login("alice")
    assert (request["fromUserId"], len(request["toUserId"])) == (a.user_id, 24)
    for who in (alice, bob):
        got = handshake_of(await who.handshake("get", id=request["id"]))
        assert got == {k: v for k, v in request.items() if k != "action"}

    accepted = handshake_of(await bob.handshake(action="accept", id=request["id"]))
    assert (accepted["action"], accepted["status"]) == ("accept", "accepted")
    assert ISO_MS.fullmatch(accepted["acceptationDate"])
    assert await alice.next_management() == [management(request["id"], "update", "sent", "accepted")]
    assert await bob.next_management() == [management(request["id"], "update", "received", "accepted")]
    assert await alice.roster_push_for(bob.jid, "to") == [(bob.jid, "to")]
    assert await bob.roster_push_for(alice.jid, "from") == [(alice.jid, "from")]
    assert (await alice.roster())[bob.jid] == "to"

    interrupted = handshake_of(await bob.handshake(action="interrupt", id=request["id"]))
    assert (interrupted["action"], interrupted["status"]) == ("interrupt", "interrupted")
    assert await alice.next_management() == [management(request["id"], "delete", "sent", "interrupted")]
    assert await bob.next_management() == [management(request["id"], "delete", "received", "interrupted")]
    assert await alice.roster_push_for(bob.jid, "remove") == removal_pushes(alice.server, bob.jid)
    assert await bob.roster_push_for(alice.jid, "remove") == removal_pushes(bob.server, alice.jid)
    assert bob.jid not in await alice.roster()
    assert error_condition(await alice.handshake("get", id=request["id"])) == "item-not-found"


@pytest.mark.parametrize(("side", "action", "status"), [("receiver", "decline", "declined"), ("sender", "cancel", "canceled")])
async def test_decline_and_cancel(alice: XmppUser, bob: XmppUser, side: str, action: str, status: str) -> None:
    request = await create(alice, bob)
    actor = bob if side == "receiver" else alice
    done = handshake_of(await actor.handshake(action=action, id=request["id"]))
    assert (done["id"], done["action"], done["status"]) == (request["id"], action, status)
    assert await alice.next_management() == [management(request["id"], "delete", "sent", status)]
    assert await bob.next_management() == [management(request["id"], "delete", "received", status)]
    for who in (alice, bob):
        assert error_condition(await who.handshake("get", id=request["id"])) == "item-not-found"


async def test_list_with_status_filter_and_rsm_paging(
    alice: XmppUser, bob: XmppUser, carol: XmppUser, dave: XmppUser
) -> None:
    sent = [await create(sender, bob) for sender in (alice, carol, dave)]
    handshake_of(await bob.handshake(action="accept", id=sent[1]["id"]))  # carol's

    items, paging = listed(await bob.iq("get", list_query("received", "pending")))
    assert [i["id"] for i in items] == [sent[0]["id"], sent[2]["id"]]
    assert {i["status"] for i in items} == {"pending"}
    assert paging["count"] == "2"

    items, paging = listed(await bob.iq("get", list_query("received")))
    assert [i["id"] for i in items] == [r["id"] for r in sent]
    assert paging["count"] == "3"

    # XEP-0059: pages of two, then everything after the last one
    items, paging = listed(await bob.iq("get", list_query("received", "pending,accepted", max="2")))
    assert [i["id"] for i in items] == [sent[0]["id"], sent[1]["id"]]
    assert (paging["first"], paging["last"], paging["count"]) == (sent[0]["id"], sent[1]["id"], "3")
    assert paging["first_index"] == "0"
    items, paging = listed(
        await bob.iq("get", list_query("received", "pending,accepted", max="2", after=paging["last"]))
    )
    assert [i["id"] for i in items] == [sent[2]["id"]]
    assert (paging["last"], paging["count"]) == (sent[2]["id"], "3")
    items, paging = listed(
        await bob.iq("get", list_query("received", "pending,accepted", max="2", after=sent[2]["id"]))
    )
    assert items == [] and paging["count"] == "3"

    items, _ = listed(await alice.iq("get", list_query("sent")))
    assert [(i["id"], i["fromJid"], i["toJid"]) for i in items] == [(sent[0]["id"], alice.jid, bob.jid)]
    items, paging = listed(await alice.iq("get", list_query("received")))
    assert items == [] and paging["count"] == "0"


async def test_errors_are_xmpp_conditions(alice: XmppUser, bob: XmppUser, carol: XmppUser) -> None:
    request = await create(alice, bob)

    assert error_condition(await alice.handshake(action="create", to=bob.jid)) == "conflict"
    assert error_condition(await alice.handshake(action="create", to=alice.jid)) == "bad-request"
    assert error_condition(await alice.handshake(action="create")) == "bad-request"
    assert error_condition(await alice.handshake(action="create", to="mallory@elsewhere.test")) == "bad-request"
    assert error_condition(await alice.handshake(action="explode", id=request["id"])) == "bad-request"
    assert error_condition(await bob.handshake(action="accept", id="not-an-id")) == "bad-request"
    assert error_condition(await bob.handshake("get", id="NOT24HEX")) == "bad-request"
    assert error_condition(await bob.handshake("get", action="accept", id=request["id"])) == "bad-request"
    assert error_condition(await bob.iq("get", list_query("pending"))) == "bad-request"
    assert error_condition(await bob.iq("get", list_query("received", "declined"))) == "bad-request"
    assert error_condition(await bob.iq("get", list_query("received", max="lots"))) == "bad-request"

    unknown = "0123456789abcdef01234567"
    assert error_condition(await bob.handshake(action="accept", id=unknown)) == "item-not-found"
    # a third party learns nothing about the request: not found, not forbidden
    assert error_condition(await carol.handshake("get", id=request["id"])) == "item-not-found"
    assert error_condition(await carol.handshake(action="accept", id=request["id"])) == "item-not-found"
    # the wrong party of the request is refused
    assert error_condition(await alice.handshake(action="accept", id=request["id"])) == "forbidden"
    assert error_condition(await bob.handshake(action="cancel", id=request["id"])) == "forbidden"

    handshake_of(await bob.handshake(action="accept", id=request["id"]))
    assert error_condition(await bob.handshake(action="accept", id=request["id"])) == "conflict"
    assert error_condition(await alice.handshake(action="cancel", id=request["id"])) == "conflict"

    # only the create and the accept were announced
    assert await alice.next_management() == [management(request["id"], "update", "sent", "accepted")]
    assert await bob.next_management() == [management(request["id"], "update", "received", "accepted")]


async def test_disco_info_describes_the_component(alice: XmppUser) -> None:
    # A stanza stamped from a non-served domain (forbidden) cannot be produced with
    # one VirtualHost; the component's public description is checked instead.
    info = await alice.client.plugin["xep_0030"].get_info(jid=COMPONENT, timeout=20)
    identities = {(category, itype) for category, itype, _lang, _name in info["disco_info"]["identities"]}
    assert ("component", "presence") in identities
    assert NS_CONF in info["disco_info"]["features"]
