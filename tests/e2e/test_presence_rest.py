"""Family 1 (presence sharing) over the Rainbow REST paths, with real clients connected.

Each transition is checked where a user sees it: the HTTP answer, the management
messages the two XMPP clients receive, the roster pushes and a roster fetch.
"""

from __future__ import annotations

import asyncio
import base64

import pytest

from tests.e2e.conftest import (
    removal_pushes,
    both_servers,
    ISO_MS,
    RestApi,
    Session,
    XmppUser,
    assert_rainbow_error,
    jid,
    management,
)

pytestmark = pytest.mark.e2e

SMALL = {"id", "fromUserId", "toUserId", "status", "requestDate"}
MEDIUM = SMALL | {"acceptationDate"}
FULL = MEDIUM | {"declinationDate", "cancellationDate", "fromJid", "toJid"}


async def create(api: RestApi, sender: Session, receiver: Session) -> dict:
    status, body = await api.create(sender, toUserId=receiver.user_id)
    assert status == 200, body
    return body["data"]


async def expect_messages(
    sender: XmppUser, receiver: XmppUser, request_id: str, action: str, status: str
) -> None:
    """Each party gets exactly the seed's message: the sender type='sent', the receiver 'received'."""
    assert await sender.next_management() == [management(request_id, action, "sent", status)]
    assert await receiver.next_management() == [management(request_id, action, "received", status)]


# ---- the whole flow ---------------------------------------------------------------------


@both_servers
async def test_create_accept_reverse_and_interrupt_drive_messages_and_rosters(
    api: RestApi, alice: XmppUser, bob: XmppUser
) -> None:
    a, b = await api.login("alice"), await api.login("bob")

    # create: alice asks bob to share his presence
    status, body = await api.create(a, toJid=jid("bob"))
    assert status == 200, body
    forward = body["data"]
    assert forward["fromUserId"] == a.user_id and forward["toUserId"] == b.user_id
    assert forward["status"] == "pending"
    assert ISO_MS.fullmatch(forward["requestDate"])
    assert forward["acceptationDate"] is None
    assert (forward["fromJid"], forward["toJid"]) == (jid("alice"), jid("bob"))
    await expect_messages(alice, bob, forward["id"], "create", "pending")

    # both parties see it, with the same representation
    for who in (a, b):
        status, body = await api.get(who, forward["id"])
        assert (status, body["data"]) == (200, forward)

    # accept: alice now sees bob ('to'), bob is seen by alice ('from')
    status, body = await api.transition(b, forward["id"], "accept")
    assert status == 200, body
    assert body["data"]["status"] == "accepted"
    assert ISO_MS.fullmatch(body["data"]["acceptationDate"])
    await expect_messages(alice, bob, forward["id"], "update", "accepted")
    assert await alice.roster_push_for(jid("bob"), "to") == [(jid("bob"), "to")]
    assert await bob.roster_push_for(jid("alice"), "from") == [(jid("alice"), "from")]
    assert (await alice.roster())[jid("bob")] == "to"
    assert (await bob.roster())[jid("alice")] == "from"

    # the reverse direction, accepted too: both rosters say 'both'
    reverse = await create(api, b, a)
    await expect_messages(bob, alice, reverse["id"], "create", "pending")
    status, body = await api.transition(a, reverse["id"], "accept")
    assert (status, body["data"]["status"]) == (200, "accepted")
    await expect_messages(bob, alice, reverse["id"], "update", "accepted")
    assert await alice.roster_push_for(jid("bob"), "both") == [(jid("bob"), "both")]
    assert await bob.roster_push_for(jid("alice"), "both") == [(jid("alice"), "both")]
    assert (await alice.roster())[jid("bob")] == "both"
    assert (await bob.roster())[jid("alice")] == "both"

    # bob interrupts sharing his presence: exactly that direction is undone
    status, body = await api.transition(b, forward["id"], "interrupt")
    assert (status, body["data"]["status"]) == (200, "interrupted")
    await expect_messages(alice, bob, forward["id"], "delete", "interrupted")
    assert await alice.roster_push_for(jid("bob"), "from") == [(jid("bob"), "from")]
    assert await bob.roster_push_for(jid("alice"), "to") == [(jid("alice"), "to")]
    assert (await alice.roster())[jid("bob")] == "from"
    assert (await bob.roster())[jid("alice")] == "to"
    status, body = await api.get(a, forward["id"])
    assert_rainbow_error(status, body, 404, 404001)

    # interrupting the last direction removes both items
    status, body = await api.transition(a, reverse["id"], "interrupt")
    assert (status, body["data"]["status"]) == (200, "interrupted")
    await expect_messages(bob, alice, reverse["id"], "delete", "interrupted")
    assert await alice.roster_push_for(jid("bob"), "remove") == removal_pushes(alice.server, jid("bob"))
    assert await bob.roster_push_for(jid("alice"), "remove") == removal_pushes(bob.server, jid("alice"))
    assert jid("bob") not in await alice.roster()
    assert jid("alice") not in await bob.roster()


@pytest.mark.parametrize(
    ("actor", "action", "status", "date_field"),
    [("receiver", "decline", "declined", "declinationDate"), ("sender", "cancel", "canceled", "cancellationDate")],
)
async def test_decline_and_cancel_delete_the_request(
    api: RestApi, alice: XmppUser, bob: XmppUser, actor: str, action: str, status: str, date_field: str
) -> None:
    a, b = await api.login("alice"), await api.login("bob")
    request = await create(api, a, b)
    await expect_messages(alice, bob, request["id"], "create", "pending")

    code, body = await api.transition(b if actor == "receiver" else a, request["id"], action)
    assert code == 200, body
    assert body["data"]["id"] == request["id"]
    assert body["data"]["status"] == status
    assert ISO_MS.fullmatch(body["data"][date_field])
    await expect_messages(alice, bob, request["id"], "delete", status)

    for who in (a, b):
        code, body = await api.get(who, request["id"])
        assert_rainbow_error(code, body, 404, 404001)
    # deleted, so the pair may ask again
    again = await create(api, a, b)
    assert again["id"] != request["id"]


# ---- listing ------------------------------------------------------------------------------


async def test_list_received_and_sent_with_filters_formats_and_paging(api: RestApi) -> None:
    a, b, c, d = [await api.login(n) for n in ("alice", "bob", "carol", "dave")]
    sent = [await create(api, who, b) for who in (a, c, d)]  # bob receives three
    own = await create(api, b, a)  # and sends one
    status, body = await api.transition(b, sent[1]["id"], "accept")  # carol's is accepted
    assert status == 200, body

    status, page = await api.list(b, "received")
    assert status == 200, page
    assert (page["limit"], page["offset"], page["total"]) == (100, 0, 3)
    assert [r["id"] for r in page["data"]] == [r["id"] for r in sent]
    assert all(set(r) == SMALL for r in page["data"])  # default format: small

    status, page = await api.list(b, "received", {"status": "pending"})
    assert [r["id"] for r in page["data"]] == [sent[0]["id"], sent[2]["id"]]
    assert page["total"] == 2
    status, page = await api.list(b, "received", {"status": "accepted", "format": "medium"})
    assert [r["id"] for r in page["data"]] == [sent[1]["id"]]
    assert set(page["data"][0]) == MEDIUM
    assert ISO_MS.fullmatch(page["data"][0]["acceptationDate"])
    for both in ({"status": "pending,accepted"}, [("status", "pending"), ("status", "accepted")]):
        status, page = await api.list(b, "received", both)
        assert (status, page["total"]) == (200, 3)

    status, page = await api.list(b, "received", {"format": "full"})
    assert all(set(r) == FULL for r in page["data"])
    assert [r["fromJid"] for r in page["data"]] == [jid("alice"), jid("carol"), jid("dave")]
    assert {r["toJid"] for r in page["data"]} == {jid("bob")}

    status, page = await api.list(b, "received", {"limit": "1", "offset": "1"})
    assert (page["limit"], page["offset"], page["total"]) == (1, 1, 3)
    assert [r["id"] for r in page["data"]] == [sent[1]["id"]]
    status, page = await api.list(b, "received", {"sortOrder": "-1"})
    assert [r["id"] for r in page["data"]] == [r["id"] for r in reversed(sent)]

    status, page = await api.list(b, "sent")
    assert (status, [r["id"] for r in page["data"]], page["total"]) == (200, [own["id"]], 1)
    status, page = await api.list(a, "received")
    assert [r["id"] for r in page["data"]] == [own["id"]]
    status, page = await api.list(a, "sent", {"status": "accepted"})
    assert (page["data"], page["total"]) == ([], 0)

    for bad in ({"format": "huge"}, {"status": "declined"}, {"sortOrder": "2"}, {"limit": "-1"}):
        status, body = await api.list(b, "received", bad)
        assert_rainbow_error(status, body, 400, 400000)


# ---- errors through the real stack ---------------------------------------------------------


async def test_duplicate_and_wrong_state_are_409(api: RestApi) -> None:
    a, b = await api.login("alice"), await api.login("bob")
    request = await create(api, a, b)
    status, body = await api.create(a, toJid=jid("bob"))
    assert_rainbow_error(status, body, 409, 409661)

    assert (await api.transition(b, request["id"], "accept"))[0] == 200
    status, body = await api.create(a, toUserId=b.user_id)  # accepted links the pair too
    assert_rainbow_error(status, body, 409, 409661)
    for action in ("accept", "decline"):
        status, body = await api.transition(b, request["id"], action)
        assert_rainbow_error(status, body, 409, 409663)
    status, body = await api.transition(a, request["id"], "cancel")
    assert_rainbow_error(status, body, 409, 409663)


async def test_wrong_party_and_other_user_id_are_refused(api: RestApi) -> None:
    a, b, c = await api.login("alice"), await api.login("bob"), await api.login("carol")
    request = await create(api, a, b)

    # a path naming someone else's userId
    status, body = await api.call("GET", f"{b.presences}/received", a.token)
    assert_rainbow_error(status, body, 403, 403100)
    status, body = await api.call("POST", b.presences, a.token, body={"toUserId": c.user_id})
    assert_rainbow_error(status, body, 403, 403100)
    # only the receiver accepts, only the sender cancels
    status, body = await api.transition(a, request["id"], "accept")
    assert_rainbow_error(status, body, 403, 403100)
    status, body = await api.transition(b, request["id"], "cancel")
    assert_rainbow_error(status, body, 403, 403100)
    # a third party cannot even see it
    status, body = await api.get(c, request["id"])
    assert_rainbow_error(status, body, 404, 404001)
    status, body = await api.transition(c, request["id"], "accept")
    assert_rainbow_error(status, body, 404, 404001)
    # nothing changed
    status, body = await api.get(b, request["id"])
    assert (status, body["data"]["status"]) == (200, "pending")


async def test_missing_invalid_and_revoked_tokens_are_401(api: RestApi) -> None:
    a = await api.login("alice")
    path = f"{a.presences}/received"
    status, body = await api.call("GET", path)
    assert_rainbow_error(status, body, 401, 401000)
    status, body = await api.call("GET", path, "not-a-token")
    assert_rainbow_error(status, body, 401, 401000)

    for credentials in (jid("alice"), f"{jid('alice')}:wrong-password", f"{jid('nobody')}:pw"):
        basic = "Basic " + base64.b64encode(credentials.encode()).decode()
        status, body = await api.call("GET", api.LOGIN, headers={"Authorization": basic})
        assert_rainbow_error(status, body, 401, 401000)

    assert (await api.call("GET", path, a.token))[0] == 200
    status, body = await api.call("GET", api.LOGOUT, a.token)
    assert status == 200, body
    status, body = await api.call("GET", path, a.token)
    assert_rainbow_error(status, body, 401, 401000)
    # another session of the same user is unaffected
    again = await api.login("alice")
    assert again.user_id == a.user_id
    assert (await api.call("GET", path, again.token))[0] == 200


async def test_malformed_create_requests_are_400_or_404(api: RestApi) -> None:
    a = await api.login("alice")
    status, body = await api.call(
        "POST", a.presences, a.token, data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_rainbow_error(status, body, 400, 400000)
    for payload in ([], {}, {"toJid": jid("bob"), "toUserId": "0" * 24}, {"toUserId": "nothex"}, {"nick": "x"}):
        status, body = await api.call("POST", a.presences, a.token, body=payload)
        assert_rainbow_error(status, body, 400, 400000)

    status, body = await api.create(a, toJid=jid("alice"))  # to self
    assert_rainbow_error(status, body, 400, 400000)
    status, body = await api.create(a, toUserId=a.user_id)
    assert_rainbow_error(status, body, 400, 400000)
    status, body = await api.create(a, toJid="mallory@elsewhere.test")  # domain not served
    assert_rainbow_error(status, body, 400, 400000)
    status, body = await api.create(a, toUserId="0123456789abcdef01234567")  # nobody
    assert_rainbow_error(status, body, 404, 404001)
    status, body = await api.get(a, "not-an-id")
    assert_rainbow_error(status, body, 400, 400000)

    status, page = await api.list(a, "sent")
    assert (status, page["total"]) == (200, 0)


async def test_oversized_body_is_413(api: RestApi) -> None:
    a = await api.login("alice")
    huge = {"toJid": jid("bob"), "padding": "x" * (64 * 1024)}
    status, body = await api.call("POST", a.presences, a.token, body=huge)
    assert_rainbow_error(status, body, 413, 413000)
    status, page = await api.list(a, "sent")
    assert (status, page["total"]) == (200, 0)


# ---- races -----------------------------------------------------------------------------------


async def test_concurrent_accept_and_cancel_have_exactly_one_winner(
    api: RestApi, alice: XmppUser, bob: XmppUser
) -> None:
    a, b = await api.login("alice"), await api.login("bob")
    for _ in range(20):
        request = await create(api, a, b)
        await expect_messages(alice, bob, request["id"], "create", "pending")
        (accept_status, accept_body), (cancel_status, cancel_body) = await asyncio.gather(
            api.transition(b, request["id"], "accept"), api.transition(a, request["id"], "cancel")
        )
        # The loser of an accept is 409 (the request is accepted, no longer pending); the
        # loser of a cancel is 404 (a cancelled request is deleted: not found, as get says).
        assert (accept_status, cancel_status) in ((200, 409), (404, 200)), (accept_body, cancel_body)
        if accept_status == 200:
            assert_rainbow_error(cancel_status, cancel_body, 409, 409663)
            status, body = await api.get(a, request["id"])
            assert (status, body["data"]["status"]) == (200, "accepted")
            await expect_messages(alice, bob, request["id"], "update", "accepted")
            # clear the link for the next round
            assert (await api.transition(b, request["id"], "interrupt"))[0] == 200
            await expect_messages(alice, bob, request["id"], "delete", "interrupted")
        else:
            assert_rainbow_error(accept_status, accept_body, 404, 404001)
            status, body = await api.get(b, request["id"])
            assert_rainbow_error(status, body, 404, 404001)
            await expect_messages(alice, bob, request["id"], "delete", "canceled")
        for who in (a, b):
            assert (await api.list(who, "sent"))[1]["total"] == 0
