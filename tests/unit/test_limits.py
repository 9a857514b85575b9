"""Bounded growth (issue #10): tokens, subscriptions and named users per user, and the
users only ever named as targets forgotten once nothing refers to them."""

from __future__ import annotations

from typing import Any

import pytest

from component.actions import Identity, PresenceSharing
from component.clock import FixedClock
from component.commands import CreatePresenceRequest, Transition, TransitionPresenceRequest
from component.errors import LimitReached, Unauthorized
from component.model import BareJid, User
from component.provisioning import Provisioning
from component.subscriptions import PresenceStates
from storage import Database
from unit_rig import SERVED, TOKEN_TTL_S, CommitCounter, FakeVerifier


async def rows(db: Database, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with db.reader.execute(sql, params) as cur:
        return [tuple(r) for r in await cur.fetchall()]


async def test_a_login_beyond_the_token_cap_revokes_the_oldest(
    db: Database, clock: FixedClock, verifier: FakeVerifier
) -> None:
    identity = Identity(db, clock, SERVED, verifier, TOKEN_TTL_S, max_tokens_per_user=3)
    issued = []
    for _ in range(5):
        token, _user = await identity.login("alice@example.test", "alice-pw")
        issued.append(token)
        clock.advance(1)
    assert await rows(db, "SELECT count(*) FROM tokens") == [(3,)]
    for old in issued[:2]:
        with pytest.raises(Unauthorized):
            await identity.authenticate(old)
    for live in issued[2:]:
        assert (await identity.authenticate(live)).jid == "alice@example.test"


async def test_subscriptions_per_user_are_capped(
    db: Database, clock: FixedClock, provisioning: Provisioning, commits: CommitCounter
) -> None:
    states = PresenceStates(db, clock, SERVED, provisioning, commits, max_subscriptions_per_user=2)
    carol = BareJid("carol@example.test")
    await states.subscribe(carol, "101")
    await states.subscribe(carol, "102")
    await states.subscribe(carol, "101")  # confirming one held is no new one
    with pytest.raises(LimitReached):
        await states.subscribe(carol, "103")
    assert await rows(db, "SELECT extension FROM subscriptions ORDER BY extension") == [("101",), ("102",)]
    await states.unsubscribe(carol, "101")
    await states.subscribe(carol, "103")


async def test_users_named_but_never_seen_are_capped_and_forgotten(
    db: Database, clock: FixedClock, identity: Identity, alice: User, bob: User
) -> None:
    sharing = PresenceSharing(db, clock, SERVED, max_unseen_targets=2)
    first = await sharing.create(CreatePresenceRequest(alice, to_jid=BareJid("new1@example.test")))
    await sharing.create(CreatePresenceRequest(alice, to_jid=BareJid("new2@example.test")))
    with pytest.raises(LimitReached):
        await sharing.create(CreatePresenceRequest(alice, to_jid=BareJid("new3@example.test")))
    # Users that logged in or sent a stanza are no "unseen" targets: no cap.
    await sharing.create(CreatePresenceRequest(alice, to_jid=bob.jid))
    assert await rows(db, "SELECT jid FROM users WHERE jid LIKE 'new%' ORDER BY jid") == [
        ("new1@example.test",), ("new2@example.test",),
    ]

    # Cancelled: nothing refers to new1 any more; the housekeeping forgets it.
    await sharing.transition(TransitionPresenceRequest(alice, first.id, Transition.CANCEL))
    assert await identity.housekeeping() == 1
    assert await rows(db, "SELECT jid FROM users WHERE jid LIKE 'new%'") == [("new2@example.test",)]
    await sharing.create(CreatePresenceRequest(alice, to_jid=BareJid("new3@example.test")))

    # new2 logs in: from then on it is an account of its own, never forgotten.
    await identity.user_for_jid(BareJid("new2@example.test"))
    await db.write(lambda tx: tx.execute("DELETE FROM presence_requests"))
    assert await identity.housekeeping() == 1  # new3 only
    assert {r[0] for r in await rows(db, "SELECT jid FROM users")} == {
        "alice@example.test", "bob@example.test", "new2@example.test",
    }
