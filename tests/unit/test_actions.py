"""Family 1 rules (DESIGN.md, "presence sharing") run by the actions over a real database."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from component.actions import Identity, PresenceSharing
from component.clock import FixedClock
from component.commands import (
    CreatePresenceRequest,
    ListPresenceRequests,
    Transition,
    TransitionPresenceRequest,
)
from component.errors import (
    BadRequest,
    Duplicate,
    Forbidden,
    LimitReached,
    NotFound,
    ServiceUnavailable,
    TooManyLogins,
    Unauthorized,
    WrongState,
)
from component.model import (
    BareJid,
    PresenceRequest,
    RequestId,
    RequestStatus,
    User,
    UserId,
    new_object_id,
)
from storage import Database
from unit_rig import SERVED, TOKEN_TTL_S, CommitCounter, FakeVerifier, clear_outbox, outbox_rows, request_rows

START = FixedClock().now_ms()


def message(
    recipient: str, request_id: str, action: str, side: str, status: str, peer: str
) -> tuple[str, str, dict[str, Any]]:
    """A management message's row: the Rainbow child's attributes, and the other party."""
    return (
        "message",
        recipient,
        {"handshake": {"id": request_id, "action": action, "type": side, "status": status}, "peer": peer},
    )


def roster(owner: str, contact: str, direction: str, op: str = "add") -> tuple[str, str, dict[str, Any]]:
    """One direction of one roster item, added (named after the contact) or removed."""
    payload: dict[str, Any] = {"jid": contact, "direction": direction, "op": op}
    if op == "add":
        payload["name"] = contact.split("@")[0]
    return ("roster", owner, payload)


async def ask(sharing: PresenceSharing, sender: User, receiver: User) -> PresenceRequest:
    return await sharing.create(CreatePresenceRequest(sender, to_jid=receiver.jid))


async def move(
    sharing: PresenceSharing, caller: User, request: PresenceRequest, transition: Transition
) -> PresenceRequest:
    return await sharing.transition(TransitionPresenceRequest(caller, request.id, transition))


# ---- create ------------------------------------------------------------------------------


async def test_create_by_jid_stores_a_pending_request_and_tells_both_parties(
    sharing: PresenceSharing, db: Database, alice: User, commits: CommitCounter
) -> None:
    request = await sharing.create(
        CreatePresenceRequest(alice, to_jid=BareJid("bob@example.test"))
    )
    bob_id = request.to_user.id
    assert request == PresenceRequest(
        id=request.id,
        from_user=alice,
        to_user=User(bob_id, BareJid("bob@example.test")),
        status=RequestStatus.PENDING,
        request_date=START,
    )
    assert await request_rows(db) == [(request.id, alice.id, bob_id, "pending", START, None)]
    assert await outbox_rows(db) == [
        message("alice@example.test", request.id, "create", "sent", "pending", "bob@example.test"),
        message("bob@example.test", request.id, "create", "received", "pending", "alice@example.test"),
    ]
    assert commits.count == 1


async def test_create_by_jid_creates_the_unknown_target_user(
    sharing: PresenceSharing, db: Database, alice: User
) -> None:
    request = await sharing.create(CreatePresenceRequest(alice, to_jid=BareJid("zoe@example.test")))
    async with db.reader.execute("SELECT id, created_at FROM users WHERE jid = 'zoe@example.test'") as cur:
        assert tuple(await cur.fetchone()) == (request.to_user.id, START)


async def test_create_by_user_id(sharing: PresenceSharing, db: Database, alice: User, bob: User) -> None:
    request = await sharing.create(CreatePresenceRequest(alice, to_user_id=bob.id))
    assert (request.from_user, request.to_user, request.status) == (alice, bob, RequestStatus.PENDING)
    assert await request_rows(db) == [(request.id, alice.id, bob.id, "pending", START, None)]


@pytest.mark.parametrize("both", [True, False])
def test_create_needs_exactly_one_of_to_user_id_and_to_jid(alice: User, bob: User, both: bool) -> None:
    targets = {"to_user_id": bob.id, "to_jid": bob.jid} if both else {}
    with pytest.raises(BadRequest, match="exactly one of toUserId and toJid"):
        CreatePresenceRequest(alice, **targets)


@pytest.mark.parametrize("by", ["jid", "id"])
async def test_create_to_self_is_a_bad_request(
    sharing: PresenceSharing, db: Database, alice: User, by: str
) -> None:
    cmd = (
        CreatePresenceRequest(alice, to_jid=alice.jid)
        if by == "jid"
        else CreatePresenceRequest(alice, to_user_id=alice.id)
    )
    with pytest.raises(BadRequest):
        await sharing.create(cmd)
    assert await request_rows(db) == []
    assert await outbox_rows(db) == []


async def test_create_to_a_jid_outside_the_served_domains_is_a_bad_request(
    sharing: PresenceSharing, db: Database, alice: User
) -> None:
    with pytest.raises(BadRequest, match="served domain"):
        await sharing.create(CreatePresenceRequest(alice, to_jid=BareJid("mallory@evil.test")))
    async with db.reader.execute("SELECT count(*) FROM users WHERE jid = 'mallory@evil.test'") as cur:
        assert (await cur.fetchone())[0] == 0


async def test_create_to_an_unknown_user_id_is_not_found(
    sharing: PresenceSharing, db: Database, alice: User
) -> None:
    with pytest.raises(NotFound):
        await sharing.create(CreatePresenceRequest(alice, to_user_id=UserId(new_object_id())))
    assert await request_rows(db) == []


@pytest.mark.parametrize("accepted", [False, True])
async def test_a_second_request_in_the_same_direction_is_a_duplicate(
    sharing: PresenceSharing, db: Database, alice: User, bob: User, accepted: bool
) -> None:
    first = await ask(sharing, alice, bob)
    if accepted:
        await move(sharing, bob, first, Transition.ACCEPT)
    await clear_outbox(db)
    with pytest.raises(Duplicate):
        await sharing.create(CreatePresenceRequest(alice, to_user_id=bob.id))
    assert [row[0] for row in await request_rows(db)] == [first.id]
    assert await outbox_rows(db) == []
    # The reverse direction is another request.
    reverse = await ask(sharing, bob, alice)
    assert (reverse.from_user, reverse.to_user) == (bob, alice)


async def test_a_request_can_be_made_again_once_the_previous_one_is_gone(
    sharing: PresenceSharing, alice: User, bob: User
) -> None:
    first = await ask(sharing, alice, bob)
    await move(sharing, bob, first, Transition.DECLINE)
    again = await ask(sharing, alice, bob)
    assert again.id != first.id


async def test_pending_sent_requests_are_limited(
    sharing: PresenceSharing, identity: Identity, db: Database, alice: User
) -> None:
    targets = [await identity.user_for_jid(BareJid(f"u{i}@example.test")) for i in range(6)]
    for target in targets[:5]:  # sharing fixture: max_pending_sent=5
        await ask(sharing, alice, target)
    with pytest.raises(LimitReached):
        await ask(sharing, alice, targets[5])
    assert len(await request_rows(db)) == 5
    # An accepted request no longer counts as pending.
    first = (await sharing.list(ListPresenceRequests(alice, "sent"))).items[0]
    await move(sharing, first.to_user, first, Transition.ACCEPT)
    await ask(sharing, alice, targets[5])


# ---- transitions: who and from which state ------------------------------------------------

_RECEIVER_ONLY = [Transition.ACCEPT, Transition.DECLINE, Transition.INTERRUPT]


@pytest.mark.parametrize("transition", _RECEIVER_ONLY)
async def test_receiver_only_transitions_are_forbidden_to_the_sender(
    sharing: PresenceSharing, db: Database, alice: User, bob: User, transition: Transition
) -> None:
    request = await ask(sharing, alice, bob)
    if transition is Transition.INTERRUPT:
        await move(sharing, bob, request, Transition.ACCEPT)
    before, outbox_before = await request_rows(db), await outbox_rows(db)
    with pytest.raises(Forbidden):
        await move(sharing, alice, request, transition)
    assert (await request_rows(db), await outbox_rows(db)) == (before, outbox_before)


async def test_cancel_is_forbidden_to_the_receiver(
    sharing: PresenceSharing, db: Database, alice: User, bob: User
) -> None:
    request = await ask(sharing, alice, bob)
    with pytest.raises(Forbidden):
        await move(sharing, bob, request, Transition.CANCEL)
    assert [row[3] for row in await request_rows(db)] == ["pending"]


@pytest.mark.parametrize("transition", list(Transition))
async def test_a_third_user_does_not_see_the_request(
    sharing: PresenceSharing, db: Database, alice: User, bob: User, carol: User, transition: Transition
) -> None:
    request = await ask(sharing, alice, bob)
    with pytest.raises(NotFound):
        await move(sharing, carol, request, transition)
    with pytest.raises(NotFound):
        await sharing.get(carol, request.id)
    assert [row[3] for row in await request_rows(db)] == ["pending"]


@pytest.mark.parametrize("transition", list(Transition))
async def test_an_unknown_request_is_not_found(
    sharing: PresenceSharing, alice: User, transition: Transition
) -> None:
    with pytest.raises(NotFound):
        await sharing.transition(
            TransitionPresenceRequest(alice, RequestId(new_object_id()), transition)
        )


@pytest.mark.parametrize(
    ("transition", "actor"),
    [
        (Transition.ACCEPT, "receiver"),
        (Transition.DECLINE, "receiver"),
        (Transition.CANCEL, "sender"),
    ],
)
async def test_pending_only_transitions_refuse_an_accepted_request(
    sharing: PresenceSharing, db: Database, alice: User, bob: User, transition: Transition, actor: str
) -> None:
    request = await ask(sharing, alice, bob)
    await move(sharing, bob, request, Transition.ACCEPT)
    await clear_outbox(db)
    with pytest.raises(WrongState):
        await move(sharing, bob if actor == "receiver" else alice, request, transition)
    assert [row[3] for row in await request_rows(db)] == ["accepted"]
    assert await outbox_rows(db) == []


async def test_interrupt_refuses_a_pending_request(
    sharing: PresenceSharing, db: Database, alice: User, bob: User
) -> None:
    request = await ask(sharing, alice, bob)
    with pytest.raises(WrongState):
        await move(sharing, bob, request, Transition.INTERRUPT)
    assert [row[3] for row in await request_rows(db)] == ["pending"]


# ---- transitions: results, rows and outbox -----------------------------------------------


async def test_accept_marks_the_request_and_grants_roster_subscriptions(
    sharing: PresenceSharing, db: Database, clock: FixedClock, alice: User, bob: User, commits: CommitCounter
) -> None:
    request = await ask(sharing, alice, bob)
    await clear_outbox(db)
    clock.advance(5_000)
    done = await move(sharing, bob, request, Transition.ACCEPT)
    assert (done.status, done.acceptation_date, done.request_date) == (
        RequestStatus.ACCEPTED, START + 5_000, START,
    )
    assert await request_rows(db) == [(request.id, alice.id, bob.id, "accepted", START, START + 5_000)]
    assert await outbox_rows(db) == [
        message("alice@example.test", request.id, "update", "sent", "accepted", "bob@example.test"),
        message("bob@example.test", request.id, "update", "received", "accepted", "alice@example.test"),
        roster("alice@example.test", "bob@example.test", "to"),
        roster("bob@example.test", "alice@example.test", "from"),
    ]
    assert commits.count == 2


async def test_accept_adds_only_its_direction_when_the_reverse_is_accepted(
    sharing: PresenceSharing, db: Database, alice: User, bob: User
) -> None:
    """The reverse direction is already in both items; this accept adds its own (the
    dispatcher merges it into what the item holds: `both`)."""
    reverse = await ask(sharing, bob, alice)
    await move(sharing, alice, reverse, Transition.ACCEPT)
    request = await ask(sharing, alice, bob)
    await clear_outbox(db)
    await move(sharing, bob, request, Transition.ACCEPT)
    assert await outbox_rows(db) == [
        message("alice@example.test", request.id, "update", "sent", "accepted", "bob@example.test"),
        message("bob@example.test", request.id, "update", "received", "accepted", "alice@example.test"),
        roster("alice@example.test", "bob@example.test", "to"),
        roster("bob@example.test", "alice@example.test", "from"),
    ]


async def test_decline_deletes_the_request_and_tells_both_parties(
    sharing: PresenceSharing, db: Database, clock: FixedClock, alice: User, bob: User
) -> None:
    request = await ask(sharing, alice, bob)
    await clear_outbox(db)
    clock.advance(7)
    done = await move(sharing, bob, request, Transition.DECLINE)
    assert (done.status, done.declination_date) == (RequestStatus.DECLINED, START + 7)
    assert await request_rows(db) == []
    assert await outbox_rows(db) == [
        message("alice@example.test", request.id, "delete", "sent", "declined", "bob@example.test"),
        message("bob@example.test", request.id, "delete", "received", "declined", "alice@example.test"),
    ]


async def test_cancel_deletes_the_request_and_tells_both_parties(
    sharing: PresenceSharing, db: Database, clock: FixedClock, alice: User, bob: User
) -> None:
    request = await ask(sharing, alice, bob)
    await clear_outbox(db)
    clock.advance(9)
    done = await move(sharing, alice, request, Transition.CANCEL)
    assert (done.status, done.cancellation_date) == (RequestStatus.CANCELED, START + 9)
    assert await request_rows(db) == []
    assert await outbox_rows(db) == [
        message("alice@example.test", request.id, "delete", "sent", "canceled", "bob@example.test"),
        message("bob@example.test", request.id, "delete", "received", "canceled", "alice@example.test"),
    ]


async def test_interrupt_deletes_the_request_and_removes_its_direction(
    sharing: PresenceSharing, db: Database, alice: User, bob: User
) -> None:
    request = await ask(sharing, alice, bob)
    await move(sharing, bob, request, Transition.ACCEPT)
    await clear_outbox(db)
    done = await move(sharing, bob, request, Transition.INTERRUPT)
    assert (done.status, done.acceptation_date) == (RequestStatus.INTERRUPTED, START)
    assert await request_rows(db) == []
    assert await outbox_rows(db) == [
        message("alice@example.test", request.id, "delete", "sent", "interrupted", "bob@example.test"),
        message("bob@example.test", request.id, "delete", "received", "interrupted", "alice@example.test"),
        roster("alice@example.test", "bob@example.test", "to", "remove"),
        roster("bob@example.test", "alice@example.test", "from", "remove"),
    ]


async def test_interrupt_keeps_the_reverse_direction(
    sharing: PresenceSharing, db: Database, alice: User, bob: User
) -> None:
    reverse = await ask(sharing, bob, alice)
    await move(sharing, alice, reverse, Transition.ACCEPT)
    request = await ask(sharing, alice, bob)
    await move(sharing, bob, request, Transition.ACCEPT)
    await clear_outbox(db)
    await move(sharing, bob, request, Transition.INTERRUPT)
    assert await outbox_rows(db) == [
        message("alice@example.test", request.id, "delete", "sent", "interrupted", "bob@example.test"),
        message("bob@example.test", request.id, "delete", "received", "interrupted", "alice@example.test"),
        # alice no longer sees bob; only that direction goes, bob still sees alice.
        roster("alice@example.test", "bob@example.test", "to", "remove"),
        roster("bob@example.test", "alice@example.test", "from", "remove"),
    ]
    assert [(row[0], row[3]) for row in await request_rows(db)] == [(reverse.id, "accepted")]


# ---- get and list --------------------------------------------------------------------------


async def test_get_is_visible_to_both_parties(
    sharing: PresenceSharing, alice: User, bob: User, carol: User
) -> None:
    request = await ask(sharing, alice, bob)
    assert await sharing.get(alice, request.id) == request
    assert await sharing.get(bob, request.id) == request
    with pytest.raises(NotFound):
        await sharing.get(carol, request.id)


@pytest.fixture
async def inbox(
    sharing: PresenceSharing, identity: Identity, clock: FixedClock, alice: User
) -> list[PresenceRequest]:
    """Four requests to alice, one second apart; the 2nd and 4th accepted."""
    made = []
    for i in range(4):
        sender = await identity.user_for_jid(BareJid(f"s{i}@example.test"))
        made.append(await ask(sharing, sender, alice))
        clock.advance(1000)
    for i in (1, 3):
        made[i] = await move(sharing, alice, made[i], Transition.ACCEPT)
    return made


def ids(items: list[PresenceRequest]) -> list[str]:
    return [r.id for r in items]


async def test_list_received_filters_by_status(
    sharing: PresenceSharing, alice: User, inbox: list[PresenceRequest]
) -> None:
    pending = await sharing.list(
        ListPresenceRequests(alice, "received", frozenset({RequestStatus.PENDING}))
    )
    accepted = await sharing.list(
        ListPresenceRequests(alice, "received", frozenset({RequestStatus.ACCEPTED}))
    )
    everything = await sharing.list(ListPresenceRequests(alice, "received"))
    assert (ids(pending.items), pending.total) == ([inbox[0].id, inbox[2].id], 2)
    assert (ids(accepted.items), accepted.total) == ([inbox[1].id, inbox[3].id], 2)
    assert (ids(everything.items), everything.total) == (ids(inbox), 4)
    assert everything.items == inbox


async def test_list_sent_is_the_other_box(
    sharing: PresenceSharing, alice: User, inbox: list[PresenceRequest]
) -> None:
    assert (await sharing.list(ListPresenceRequests(alice, "sent"))).total == 0
    sender = inbox[2].from_user
    page = await sharing.list(ListPresenceRequests(sender, "sent"))
    assert (page.items, page.total) == ([inbox[2]], 1)
    assert (await sharing.list(ListPresenceRequests(sender, "received"))).total == 0


async def test_list_pages_with_limit_offset_and_total(
    sharing: PresenceSharing, alice: User, inbox: list[PresenceRequest]
) -> None:
    page = await sharing.list(ListPresenceRequests(alice, "received", limit=2, offset=1))
    assert (ids(page.items), page.total, page.limit, page.offset) == (ids(inbox[1:3]), 4, 2, 1)
    beyond = await sharing.list(ListPresenceRequests(alice, "received", limit=2, offset=9))
    assert (beyond.items, beyond.total) == ([], 4)
    empty = await sharing.list(ListPresenceRequests(alice, "received", limit=0))
    assert (empty.items, empty.total) == ([], 4)


async def test_list_in_descending_order(
    sharing: PresenceSharing, alice: User, inbox: list[PresenceRequest]
) -> None:
    page = await sharing.list(ListPresenceRequests(alice, "received", descending=True, limit=3))
    assert ids(page.items) == [inbox[3].id, inbox[2].id, inbox[1].id]


async def test_list_after_a_keyset_cursor(
    sharing: PresenceSharing, alice: User, inbox: list[PresenceRequest]
) -> None:
    page = await sharing.list(ListPresenceRequests(alice, "received", limit=2, after=inbox[1].id))
    assert (ids(page.items), page.total) == ([inbox[2].id, inbox[3].id], 4)
    back = await sharing.list(
        ListPresenceRequests(alice, "received", limit=2, descending=True, after=inbox[2].id)
    )
    assert ids(back.items) == [inbox[1].id, inbox[0].id]
    pending_after = await sharing.list(
        ListPresenceRequests(alice, "received", frozenset({RequestStatus.PENDING}), after=inbox[0].id)
    )
    assert (ids(pending_after.items), pending_after.total) == ([inbox[2].id], 2)


async def test_list_after_a_request_the_caller_cannot_see_is_not_found(
    sharing: PresenceSharing, alice: User, bob: User, carol: User
) -> None:
    foreign = await ask(sharing, bob, carol)
    with pytest.raises(NotFound):
        await sharing.list(ListPresenceRequests(alice, "received", after=foreign.id))


@pytest.mark.parametrize(
    "changes",
    [
        {"box": "inbox"},
        {"statuses": frozenset()},
        {"statuses": frozenset({RequestStatus.DECLINED})},
        {"limit": -1},
        {"offset": -1},
    ],
)
def test_list_commands_check_their_arguments(alice: User, changes: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        ListPresenceRequests(**{"caller": alice, "box": "received", **changes})


# ---- identity ------------------------------------------------------------------------------


async def test_login_issues_a_token_until_its_ttl_passes(
    identity: Identity, clock: FixedClock, verifier: Any
) -> None:
    token, user = await identity.login("Alice@Example.Test", "alice-pw")
    assert user.jid == "alice@example.test"
    assert verifier.calls == [("alice@example.test", "alice-pw")]
    assert await identity.authenticate(token) == user
    clock.advance(TOKEN_TTL_S * 1000 - 1)
    assert await identity.authenticate(token) == user
    clock.advance(1)
    with pytest.raises(Unauthorized):
        await identity.authenticate(token)


async def test_login_keeps_the_user_id_stable(identity: Identity, alice: User) -> None:
    _, user = await identity.login("alice@example.test", "alice-pw")
    assert user == alice


async def test_logout_revokes_the_token(identity: Identity) -> None:
    token, _ = await identity.login("alice@example.test", "alice-pw")
    other, _ = await identity.login("alice@example.test", "alice-pw")
    await identity.logout(token)
    with pytest.raises(Unauthorized):
        await identity.authenticate(token)
    assert (await identity.authenticate(other)).jid == "alice@example.test"


@pytest.mark.parametrize(
    ("login", "password"),
    [
        ("alice@example.test", "wrong"),
        ("alice@example.test", ""),
        ("not a jid", "alice-pw"),
        ("alice@example.test/phone", "alice-pw"),
    ],
)
async def test_bad_logins_are_unauthorized_and_issue_nothing(
    identity: Identity, db: Database, login: str, password: str
) -> None:
    with pytest.raises(Unauthorized):
        await identity.login(login, password)
    async with db.reader.execute("SELECT count(*) FROM tokens") as cur:
        assert (await cur.fetchone())[0] == 0


async def test_users_of_other_domains_cannot_log_in(identity: Identity, verifier: Any) -> None:
    with pytest.raises(Forbidden):
        await identity.login("mallory@evil.test", "anything")
    assert verifier.calls == []  # refused before asking the server


HOME, AWAY = "192.0.2.1", "198.51.100.7"


async def test_failed_logins_are_limited_before_the_server_is_asked(
    identity: Identity, verifier: Any, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(5):
        with pytest.raises(Unauthorized):
            await identity.login("alice@example.test", f"guess-{n}", HOME)
    asked = len(verifier.calls)
    for password in ("guess-5", "alice-pw"):  # from here, even the right one waits
        with pytest.raises(TooManyLogins) as refused:
            await identity.login("alice@example.test", password, HOME)
        assert refused.value.retry_after_s == 60
    assert len(verifier.calls) == asked == 5
    refusals = [r.getMessage() for r in caplog.records if "too many failed logins" in r.getMessage()]
    assert refusals == ["login refused for alice@example.test from 192.0.2.1: too many failed logins, retry in 60 s"] * 2
    assert "guess-5" not in caplog.text and "alice-pw" not in caplog.text
    # Another user from the same address, and the same user from elsewhere, log in.
    assert (await identity.login("bob@example.test", "bob-pw", HOME))[1].jid == "bob@example.test"
    assert (await identity.login("alice@example.test", "alice-pw", AWAY))[1].jid == "alice@example.test"


class GatedVerifier:
    """Answers only once `open` is set, like a busy XMPP server; counts the checks."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.asked: list[str] = []

    async def verify(self, jid: BareJid, password: str) -> bool:
        self.asked.append(jid)
        await self.open.wait()
        return password == f"{jid.partition('@')[0]}-pw"


async def test_a_burst_of_guesses_from_one_address_mostly_never_reaches_the_server(
    db: Database, clock: FixedClock
) -> None:
    verifier = GatedVerifier()
    identity = Identity(db, clock, SERVED, verifier, TOKEN_TTL_S)
    guesses = [
        asyncio.create_task(identity.login(f"user{n % 30}@example.test", "guess", HOME)) for n in range(150)
    ]
    real = asyncio.create_task(identity.login("carol@example.test", "carol-pw", AWAY))
    await asyncio.sleep(0)
    # Refused at once, while every admitted check still waits for the server: the
    # refused ones hold no check slot. 20 more wait for the running checks' verdicts.
    refused = [t for t in guesses if t.done()]
    assert len(refused) == 110 and all(isinstance(t.exception(), TooManyLogins) for t in refused)
    assert len(verifier.asked) == 21  # the address's budget of 20, and carol
    verifier.open.set()
    _, carol = await real
    assert carol.jid == "carol@example.test"
    results = await asyncio.gather(*guesses, return_exceptions=True)
    # The 20 checks failed: the 20 waiting met a spent budget, without asking the server.
    assert sum(isinstance(r, Unauthorized) for r in results) == 20
    assert sum(isinstance(r, TooManyLogins) for r in results) == 130
    assert len(verifier.asked) == 21


async def test_a_morning_rush_from_one_address_logs_everyone_in(db: Database, clock: FixedClock) -> None:
    """30 people behind one office address log in at once with the default limits: the
    checks beyond the address's budget wait for the first verdicts instead of a 429."""
    verifier = GatedVerifier()
    identity = Identity(db, clock, SERVED, verifier, TOKEN_TTL_S)
    rush = [asyncio.create_task(identity.login(f"user{n}@example.test", f"user{n}-pw", HOME)) for n in range(30)]
    await asyncio.sleep(0)
    assert len(verifier.asked) == 20 and not any(t.done() for t in rush)
    verifier.open.set()
    users = [user for _, user in await asyncio.gather(*rush)]
    assert sorted(u.jid for u in users) == sorted(f"user{n}@example.test" for n in range(30))
    assert len(verifier.asked) == 30


async def test_an_unreachable_server_counts_no_failure(db: Database, clock: FixedClock) -> None:
    class Down:
        def __init__(self) -> None:
            self.up = False

        async def verify(self, jid: BareJid, password: str) -> bool:
            if not self.up:
                raise ServiceUnavailable("the XMPP server cannot verify logins right now")
            return password == "alice-pw"

    server = Down()
    identity = Identity(db, clock, SERVED, server, TOKEN_TTL_S)
    for _ in range(10):
        with pytest.raises(ServiceUnavailable):
            await identity.login("alice@example.test", "alice-pw", HOME)
    server.up = True
    assert (await identity.login("alice@example.test", "alice-pw", HOME))[1].jid == "alice@example.test"


async def test_user_for_jid_refuses_other_domains(identity: Identity) -> None:
    with pytest.raises(Forbidden):
        await identity.user_for_jid(BareJid("mallory@evil.test"))


@pytest.mark.parametrize("token", [None, "", "never-issued"])
async def test_authenticate_refuses_missing_and_unknown_tokens(identity: Identity, token: str | None) -> None:
    with pytest.raises(Unauthorized):
        await identity.authenticate(token)


@pytest.mark.parametrize("token", ["\udcc3(", "\ud800", "caf\u00e9", "\x00"])
async def test_any_str_is_an_unknown_token_not_an_error(db: Database, clock: FixedClock, token: str) -> None:
    # Lone surrogates are what aiohttp makes of header bytes that are not UTF-8.
    identity = Identity(db, clock, SERVED, FakeVerifier(), TOKEN_TTL_S, admin_token="adm")
    with pytest.raises(Unauthorized):
        await identity.authenticate(token)
    with pytest.raises(Unauthorized):
        await identity.principal(token)
    await identity.logout(token)  # nothing to revoke, and no error


# ---- concurrency ------------------------------------------------------------------------


async def test_concurrent_accept_and_cancel_let_exactly_one_win(
    db: Database, clock: FixedClock, identity: Identity, alice: User
) -> None:
    sharing = PresenceSharing(db, clock, SERVED, max_pending_sent=100)
    outcomes: set[str] = set()
    for i in range(50):
        receiver = await identity.user_for_jid(BareJid(f"r{i}@example.test"))
        request = await ask(sharing, alice, receiver)
        accept = move(sharing, receiver, request, Transition.ACCEPT)
        cancel = move(sharing, alice, request, Transition.CANCEL)
        first, second = (accept, cancel) if i % 2 == 0 else (cancel, accept)
        results = await asyncio.gather(first, second, return_exceptions=True)
        won = [r for r in results if isinstance(r, PresenceRequest)]
        lost = [r for r in results if not isinstance(r, PresenceRequest)]
        assert len(won) == 1 and len(lost) == 1, results
        assert isinstance(lost[0], (WrongState, NotFound)), lost
        async with db.reader.execute(
            "SELECT status FROM presence_requests WHERE id = ?", (request.id,)
        ) as cur:
            stored = [r[0] for r in await cur.fetchall()]
        if won[0].status is RequestStatus.ACCEPTED:
            assert stored == ["accepted"]
            assert isinstance(lost[0], WrongState)
        else:
            assert won[0].status is RequestStatus.CANCELED
            assert stored == []
            assert isinstance(lost[0], NotFound)
        outcomes.add(won[0].status.value)
        # Exactly one transition's messages were written.
        rows = await outbox_rows(db)
        assert [r[2]["handshake"]["action"] for r in rows if r[0] == "message"] == [
            "create", "create", "update" if stored else "delete", "update" if stored else "delete",
        ]
        await clear_outbox(db)
    assert outcomes == {"accepted", "canceled"}
