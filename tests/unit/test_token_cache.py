"""Tokens trusted from memory (component/token_cache.py): expiry and revocations through
the service take effect at once; what the service cannot see, within `token_cache_s`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from component.actions import Identity
from component.clock import FixedClock
from component.errors import Unauthorized
from component.model import BareJid, User, UserId
from component.token_cache import TokenCache
from storage import Conn, Database
from unit_rig import SERVED, TOKEN_TTL_S, FakeVerifier

ALICE = User(UserId("a" * 24), BareJid("alice@example.test"))
BOB = User(UserId("b" * 24), BareJid("bob@example.test"))


# ---- the cache itself ------------------------------------------------------------------


def test_an_entry_lasts_until_its_token_expires_or_it_is_stale() -> None:
    cache = TokenCache(fresh_ms=5000)
    cache.put(b"t", ALICE, expires_at=1000 + 3000, now_ms=1000, generation=cache.generation)
    assert cache.get(b"t", 1000) == ALICE
    assert cache.get(b"t", 3999) == ALICE
    assert cache.get(b"t", 4000) is None  # the token's own expiry
    assert len(cache) == 0
    cache.put(b"t", ALICE, expires_at=10**12, now_ms=1000, generation=cache.generation)
    assert cache.get(b"t", 5999) == ALICE
    assert cache.get(b"t", 6000) is None  # read 5 s ago: ask storage again
    assert cache.get(b"other", 1000) is None


def test_forgetting_drops_entries_and_refuses_reads_that_began_before() -> None:
    cache = TokenCache(fresh_ms=5000)
    before = cache.generation
    for token, user in ((b"a1", ALICE), (b"a2", ALICE), (b"b1", BOB)):
        cache.put(token, user, 10**12, 0, before)
    cache.forget(b"a1")
    assert cache.get(b"a1", 1) is None and cache.get(b"a2", 1) == ALICE
    cache.put(b"a1", ALICE, 10**12, 1, before)  # read before the revocation: not kept
    assert cache.get(b"a1", 1) is None
    cache.forget_user(ALICE.id)
    assert cache.get(b"a2", 1) is None and cache.get(b"b1", 1) == BOB
    cache.put(b"a2", ALICE, 10**12, 1, cache.generation)  # read after it: kept
    assert cache.get(b"a2", 1) == ALICE


def test_at_most_max_entries_the_least_recently_read_go_first() -> None:
    cache = TokenCache(fresh_ms=5000, max_entries=3)
    for k in range(3):
        cache.put(bytes([k]), ALICE, 10**12, k, cache.generation)
    cache.put(bytes([0]), ALICE, 10**12, 3, cache.generation)  # read again: newest
    cache.put(bytes([9]), BOB, 10**12, 4, cache.generation)
    assert len(cache) == 3
    assert cache.get(bytes([1]), 5) is None
    assert [cache.get(bytes([k]), 5) for k in (2, 0, 9)] == [ALICE, ALICE, BOB]


def test_zero_seconds_keeps_nothing() -> None:
    cache = TokenCache(fresh_ms=0)
    cache.put(b"t", ALICE, 10**12, 0, cache.generation)
    assert len(cache) == 0 and cache.get(b"t", 0) is None


# ---- through Identity, on both engines ---------------------------------------------------


class CountingReads:
    """The database, counting read transactions (a token check that needs storage is one)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.reads = 0
        self.gate: asyncio.Event | None = None  # when set: a read returns only once it is set
        self.read_done = asyncio.Event()

    async def read(self, body: Any) -> Any:
        self.reads += 1
        result = await self.db.read(body)
        self.read_done.set()
        if self.gate is not None:
            await self.gate.wait()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


@pytest.fixture
def reads(db: Database) -> CountingReads:
    return CountingReads(db)


@pytest.fixture
def cached(reads: CountingReads, clock: FixedClock) -> Identity:
    return Identity(reads, clock, SERVED, FakeVerifier(), TOKEN_TTL_S, max_tokens_per_user=2,
                    token_cache_s=5)  # type: ignore[arg-type]


async def test_a_token_found_valid_is_not_read_again_for_token_cache_s(
    cached: Identity, reads: CountingReads, clock: FixedClock
) -> None:
    token, user = await cached.login("alice@example.test", "alice-pw")
    before = reads.reads
    for _ in range(3):
        assert await cached.authenticate(token) == user
    assert reads.reads == before + 1
    clock.advance(5000)
    assert await cached.authenticate(token) == user
    assert reads.reads == before + 2


async def test_logout_refuses_a_cached_token_at_once(cached: Identity) -> None:
    token, _ = await cached.login("alice@example.test", "alice-pw")
    other, _ = await cached.login("alice@example.test", "alice-pw")
    await cached.authenticate(token)
    await cached.authenticate(other)
    await cached.logout(token)
    with pytest.raises(Unauthorized):
        await cached.authenticate(token)
    assert (await cached.authenticate(other)).jid == "alice@example.test"


async def test_a_login_beyond_max_tokens_per_user_refuses_the_oldest_cached_token_at_once(
    cached: Identity, clock: FixedClock
) -> None:
    first, _ = await cached.login("alice@example.test", "alice-pw")
    clock.advance(1)
    second, _ = await cached.login("alice@example.test", "alice-pw")
    await cached.authenticate(first)
    await cached.authenticate(second)
    clock.advance(1)
    third, _ = await cached.login("alice@example.test", "alice-pw")  # max 2: the first goes
    with pytest.raises(Unauthorized):
        await cached.authenticate(first)
    assert (await cached.authenticate(second)).jid == "alice@example.test"
    assert (await cached.authenticate(third)).jid == "alice@example.test"


async def test_an_account_found_gone_refuses_its_cached_tokens_at_once(cached: Identity) -> None:
    token, user = await cached.login("alice@example.test", "alice-pw")
    bobs, _ = await cached.login("bob@example.test", "bob-pw")
    await cached.authenticate(token)
    await cached.authenticate(bobs)
    assert await cached.account_checked(user, None) == 0  # the server could not tell
    assert await cached.authenticate(token) == user
    assert await cached.account_checked(user, False) == 1
    with pytest.raises(Unauthorized):
        await cached.authenticate(token)
    assert (await cached.authenticate(bobs)).jid == "bob@example.test"


async def test_a_cached_token_expires_on_time(cached: Identity, clock: FixedClock) -> None:
    token, user = await cached.login("alice@example.test", "alice-pw")
    clock.advance(TOKEN_TTL_S * 1000 - 2000)
    assert await cached.authenticate(token) == user  # cached for 5 s, the token lives 2 s more
    clock.advance(1999)
    assert await cached.authenticate(token) == user
    clock.advance(1)
    with pytest.raises(Unauthorized):
        await cached.authenticate(token)


async def test_a_token_deleted_behind_the_services_back_works_at_most_token_cache_s(
    cached: Identity, db: Database, clock: FixedClock
) -> None:
    """What another instance, or an operator's SQL, revokes: the documented bound."""
    token, user = await cached.login("alice@example.test", "alice-pw")
    assert await cached.authenticate(token) == user

    async def delete_all(tx: Conn) -> None:
        await tx.execute("DELETE FROM tokens")

    await db.write(delete_all)
    clock.advance(4999)
    assert await cached.authenticate(token) == user
    clock.advance(1)
    with pytest.raises(Unauthorized):
        await cached.authenticate(token)


async def test_a_check_that_read_the_token_before_its_logout_does_not_keep_it(
    cached: Identity, reads: CountingReads
) -> None:
    token, user = await cached.login("alice@example.test", "alice-pw")
    gate = asyncio.Event()
    reads.gate, reads.read_done = gate, asyncio.Event()
    check = asyncio.ensure_future(cached.authenticate(token))
    await reads.read_done.wait()  # storage said "valid"; the check has not stored it yet
    reads.gate = None
    await cached.logout(token)
    gate.set()
    assert await check == user  # it read before the logout committed, as without a cache
    with pytest.raises(Unauthorized):  # but it did not keep the revoked token
        await cached.authenticate(token)
