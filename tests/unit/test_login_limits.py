"""The failed-login budgets (component/login_limits.py), on an injected clock."""

from __future__ import annotations

import asyncio
import logging

import pytest

from component.clock import FixedClock
from component.login_limits import LoginAttempt, LoginLimiter, LoginLimits, address_key

ALICE, BOB = "alice@example.test", "bob@example.test"
HOME, AWAY = "192.0.2.1", "198.51.100.7"
SECOND = 1000


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def limiter(clock: FixedClock) -> LoginLimiter:
    return LoginLimiter(clock, LoginLimits(per_jid=5, per_address=20, window_s=60))


def fail(limiter: LoginLimiter, jid: str, address: str) -> None:
    attempt = limiter.admit(jid, address)
    assert isinstance(attempt, LoginAttempt), f"{jid} from {address} refused ({attempt} s)"
    limiter.settle(attempt, False)


def test_a_sixth_failure_for_one_jid_from_one_address_is_refused(limiter: LoginLimiter) -> None:
    for _ in range(5):
        fail(limiter, ALICE, HOME)
    assert limiter.admit(ALICE, HOME) == 60
    # The same JID from elsewhere, and another JID from here, are not held back.
    assert isinstance(limiter.admit(ALICE, AWAY), LoginAttempt)
    assert isinstance(limiter.admit(BOB, HOME), LoginAttempt)


def test_the_window_slides_with_the_oldest_failure(limiter: LoginLimiter, clock: FixedClock) -> None:
    for _ in range(5):
        fail(limiter, ALICE, HOME)
        clock.advance(10 * SECOND)
    # Failures at 0, 10, 20, 30 and 40 s; now 50 s: the first expires at 60 s.
    assert limiter.admit(ALICE, HOME) == 10
    clock.advance(9 * SECOND + 1)
    assert limiter.admit(ALICE, HOME) == 1  # 999 ms left: rounded up
    clock.advance(999)
    fail(limiter, ALICE, HOME)  # one more fits, and fills the budget again
    assert limiter.admit(ALICE, HOME) == 10  # until the failure at 10 s expires


def test_refused_attempts_do_not_extend_the_wait(limiter: LoginLimiter, clock: FixedClock) -> None:
    for _ in range(5):
        fail(limiter, ALICE, HOME)
    for _ in range(30):
        assert isinstance(limiter.admit(ALICE, HOME), int)
        clock.advance(SECOND)
    assert limiter.admit(ALICE, HOME) == 30
    clock.advance(30 * SECOND)
    assert isinstance(limiter.admit(ALICE, HOME), LoginAttempt)


def test_one_address_trying_many_jids_is_refused(limiter: LoginLimiter) -> None:
    for n in range(20):
        fail(limiter, f"user{n}@example.test", HOME)
    assert limiter.admit("user20@example.test", HOME) == 60
    assert limiter.admit(ALICE, HOME) == 60
    assert isinstance(limiter.admit(ALICE, AWAY), LoginAttempt)


def test_checks_still_running_count_against_the_budget(limiter: LoginLimiter) -> None:
    """150 concurrent guesses must not all reach the server before the first verdict."""
    running = [limiter.admit(ALICE, HOME) for _ in range(5)]
    assert all(isinstance(a, LoginAttempt) for a in running)
    assert limiter.admit(ALICE, HOME) == 1
    limiter.settle(running[0], None)  # no verdict (server unreachable): counts as nothing
    again = limiter.admit(ALICE, HOME)
    assert isinstance(again, LoginAttempt)
    for attempt in [*running[1:], again]:
        limiter.settle(attempt, False)
    assert limiter.admit(ALICE, HOME) == 60


async def test_an_attempt_held_only_by_running_checks_waits_for_their_verdicts(limiter: LoginLimiter) -> None:
    """The morning rush: 30 people behind one office address log in at once. The 20
    running checks fill the address's budget; the other 10 wait and go in as the first
    verdicts (correct passwords) come, instead of a 429."""
    running = [await limiter.acquire(f"user{n}@example.test", HOME) for n in range(20)]
    assert all(isinstance(a, LoginAttempt) for a in running)
    waiting = [asyncio.create_task(limiter.acquire(f"late{n}@example.test", HOME)) for n in range(10)]
    await asyncio.sleep(0)
    assert not any(t.done() for t in waiting)
    for attempt in running[:10]:
        limiter.settle(attempt, True)
    admitted = await asyncio.gather(*waiting)
    assert all(isinstance(a, LoginAttempt) for a in admitted)


async def test_waiting_attempts_meet_the_budget_when_the_running_checks_fail(limiter: LoginLimiter) -> None:
    """A burst of guesses: those waiting get the 429 once the running ones fail."""
    running = [await limiter.acquire(ALICE, HOME) for _ in range(5)]
    waiting = [asyncio.create_task(limiter.acquire(ALICE, HOME)) for _ in range(3)]
    await asyncio.sleep(0)
    for attempt in running:
        limiter.settle(attempt, False)
    assert await asyncio.gather(*waiting) == [60, 60, 60]


async def test_at_most_per_address_attempts_wait_and_none_longer_than_in_flight_wait_s(clock: FixedClock) -> None:
    limiter = LoginLimiter(clock, LoginLimits(per_jid=5, per_address=2, window_s=60, in_flight_wait_s=0.05))
    running = [await limiter.acquire(f"user{n}@example.test", HOME) for n in range(2)]
    assert all(isinstance(a, LoginAttempt) for a in running)
    waiting = [asyncio.create_task(limiter.acquire(f"late{n}@example.test", HOME)) for n in range(2)]
    await asyncio.sleep(0)
    assert await limiter.acquire("third@example.test", HOME) == 1  # two already wait
    assert await asyncio.gather(*waiting) == [1, 1]  # no verdict within in_flight_wait_s
    limiter.settle(running[0], True)
    assert isinstance(await limiter.acquire("third@example.test", HOME), LoginAttempt)


async def test_a_cancelled_wait_leaves_no_waiter_behind(clock: FixedClock) -> None:
    limiter = LoginLimiter(clock, LoginLimits(per_jid=5, per_address=2, window_s=60))
    running = [await limiter.acquire(f"user{n}@example.test", HOME) for n in range(2)]
    gone = asyncio.create_task(limiter.acquire(ALICE, HOME))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    # Its place among the two that may wait is free again: two new attempts wait.
    waiting = [asyncio.create_task(limiter.acquire(f"late{n}@example.test", HOME)) for n in range(2)]
    await asyncio.sleep(0)
    assert not any(t.done() for t in waiting)
    for attempt in running:
        limiter.settle(attempt, True)
    assert all(isinstance(a, LoginAttempt) for a in await asyncio.gather(*waiting))


def test_a_correct_password_clears_that_jids_failures_not_the_addresss(limiter: LoginLimiter) -> None:
    for _ in range(4):
        fail(limiter, ALICE, HOME)
    for n in range(15):
        fail(limiter, f"user{n}@example.test", HOME)
    attempt = limiter.admit(ALICE, HOME)
    assert isinstance(attempt, LoginAttempt)
    limiter.settle(attempt, True)
    # ALICE's four failures are gone; the address still holds 19 of its 20.
    fail(limiter, ALICE, HOME)
    assert limiter.admit(BOB, HOME) == 60


def test_settling_twice_counts_once(limiter: LoginLimiter) -> None:
    attempt = limiter.admit(ALICE, HOME)
    assert isinstance(attempt, LoginAttempt)
    for _ in range(6):
        limiter.settle(attempt, False)
    for _ in range(4):
        fail(limiter, ALICE, HOME)
    assert limiter.admit(ALICE, HOME) == 60


def test_entries_are_forgotten_after_the_window(limiter: LoginLimiter, clock: FixedClock) -> None:
    for n in range(100):
        fail(limiter, ALICE, f"10.0.{n // 256}.{n % 256}")
    assert len(limiter) == 200  # (JID, address) and address entries
    clock.advance(60 * SECOND)
    assert isinstance(limiter.admit(BOB, HOME), LoginAttempt)
    assert len(limiter) == 2


def test_at_most_max_tracked_entries(clock: FixedClock, caplog: pytest.LogCaptureFixture) -> None:
    limiter = LoginLimiter(clock, LoginLimits(max_tracked=50))
    with caplog.at_level(logging.WARNING):
        for n in range(1000):
            fail(limiter, f"user{n}@example.test", f"10.1.{n // 256}.{n % 256}")
            assert len(limiter) <= 50
    assert [r.getMessage() for r in caplog.records].count(
        "login limits: more than 50 clients and (JID, client) pairs with recent failures;"
        " forgetting the least recent (login_limit_max_tracked)"
    ) == 1  # once per window, not once per entry
    # The most recent are kept: the last client still has its failure.
    for _ in range(4):
        fail(limiter, "user999@example.test", "10.1.3.231")
    assert limiter.admit("user999@example.test", "10.1.3.231") == 60


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        (None, "-"),
        ("unix-socket", "unix-socket"),
    ],
)
def test_client_keys(address: str | None, key: str) -> None:
    assert address_key(address) == key


def test_one_ipv6_host_is_its_slash_64(limiter: LoginLimiter) -> None:
    for n in range(5):
        fail(limiter, ALICE, f"2001:db8:1:2::{n + 1:x}")
    assert limiter.admit(ALICE, "2001:db8:1:2:dead:beef::1") == 60
    assert isinstance(limiter.admit(ALICE, "2001:db8:1:3::1"), LoginAttempt)


def test_limits_must_be_usable() -> None:
    with pytest.raises(ValueError):
        LoginLimits(per_jid=0)
