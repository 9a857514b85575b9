"""Failed-login budgets per (JID, client address) and per client address, in memory.

DESIGN "Operations": more than `per_jid` failed logins for one JID from one address
within `window_s` are refused (429) until the oldest of them is older than the
window; so are more than `per_address` failed logins from one address, whatever the
JIDs (one address spraying many accounts). A check that is still running counts
against the budget too, so a burst of concurrent guesses cannot overrun it before
the first verdict. An attempt held back only by checks still running waits for
their verdicts (`acquire`), beside at most `per_address` others from its address, and
is decided again: the morning rush from one office's address is served, a burst of
guesses still meets the budget. A correct password clears that JID's failures from
that address (not the address's own count). Refused attempts never reach the XMPP
server and are not counted.

Memory is bounded: an entry is forgotten once it holds nothing younger than the
window, and at most `max_tracked` entries (pairs and addresses together) are kept;
beyond that the least recently used are forgotten first.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import OrderedDict
from dataclasses import dataclass

from component.clock import Clock

log = logging.getLogger(__name__)

# When only checks still running hold the budget, the caller may try again soon.
IN_FLIGHT_RETRY_MS = 1000
_IN_FLIGHT_RETRY_S = max(1, -(-IN_FLIGHT_RETRY_MS // 1000))  # Retry-After, whole seconds


@dataclass(frozen=True)
class LoginLimits:
    per_jid: int = 5
    per_address: int = 20
    window_s: float = 60.0
    max_tracked: int = 10_000
    # How long an attempt held back only by checks still running waits for their verdicts.
    in_flight_wait_s: float = 20.0

    def __post_init__(self) -> None:
        if (self.per_jid < 1 or self.per_address < 1 or self.window_s <= 0 or self.max_tracked < 2
                or self.in_flight_wait_s < 0):
            raise ValueError(f"unusable login limits: {self}")


def address_key(address: str | None) -> str:
    """The client an address stands for: an IPv4 address, or an IPv6 /64 (one host
    usually holds a whole /64, RFC 4291 section 2.5.1). Anything else as given."""
    if not address:
        return "-"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class _Failures:
    """Recent failure times (ms, oldest first, at most the budget), running checks, and
    the attempts waiting for their verdicts (`settled` resolves at the next verdict)."""

    __slots__ = ("key", "times", "running", "touched_ms", "waiting", "settled")

    def __init__(self, key: tuple[str | None, str], now_ms: int) -> None:
        self.key = key
        self.times: list[int] = []
        self.running = 0
        self.touched_ms = now_ms
        self.waiting = 0
        self.settled: asyncio.Future[None] | None = None

    def wait_ms(self, now_ms: int, budget: int, window_ms: int) -> int:
        """0 if one more attempt fits in the budget, else how long until one does."""
        self.times = [t for t in self.times if t + window_ms > now_ms]
        if len(self.times) + self.running < budget:
            return 0
        if len(self.times) >= budget:
            return self.times[-budget] + window_ms - now_ms
        return IN_FLIGHT_RETRY_MS


@dataclass
class LoginAttempt:
    """An admitted attempt; `LoginLimiter.settle` it exactly once."""

    jid_entry: _Failures
    address_entry: _Failures
    settled: bool = False


class LoginLimiter:
    def __init__(self, clock: Clock, limits: LoginLimits) -> None:
        self.clock = clock
        self.limits = limits
        self._window_ms = int(limits.window_s * 1000)
        # Least recently touched first.
        self._entries: OrderedDict[tuple[str | None, str], _Failures] = OrderedDict()
        self._warned_full_ms: int | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def admit(self, jid: str, address: str | None) -> LoginAttempt | int:
        """An attempt that may go to the XMPP server, or the seconds (>= 1) to wait."""
        decided = self._decide(jid, address)
        return _IN_FLIGHT_RETRY_S if isinstance(decided, _Failures) else decided

    async def acquire(self, jid: str, address: str | None) -> LoginAttempt | int:
        """As `admit`, except that an attempt held back only by checks still running
        waits for their verdicts, up to `in_flight_wait_s` and beside at most
        `per_address` others from its address, then is decided again."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.in_flight_wait_s
        while True:
            decided = self._decide(jid, address)
            if not isinstance(decided, _Failures):
                return decided
            left = deadline - loop.time()
            if left <= 0 or decided.waiting >= self.limits.per_address:
                return _IN_FLIGHT_RETRY_S
            if decided.settled is None or decided.settled.done():
                decided.settled = loop.create_future()
            decided.waiting += 1
            try:
                async with asyncio.timeout(left):
                    await asyncio.shield(decided.settled)
            except TimeoutError:
                pass
            finally:
                decided.waiting -= 1

    def _decide(self, jid: str, address: str | None) -> LoginAttempt | int | _Failures:
        """An admitted attempt; the seconds (>= 1) until failures leave the budget; or,
        when only checks still running fill it, the address's entry (their verdicts
        resolve its `settled`)."""
        now = self.clock.now_ms()
        self._forget_expired(now)
        client = address_key(address)
        pair = self._entry((jid, client), now)
        alone = self._entry((None, client), now)
        wait = max(
            pair.wait_ms(now, self.limits.per_jid, self._window_ms),
            alone.wait_ms(now, self.limits.per_address, self._window_ms),
        )
        if wait > 0 and len(pair.times) < self.limits.per_jid and len(alone.times) < self.limits.per_address:
            return alone  # held by running checks only; each of their verdicts settles `alone`
        if wait > 0:
            return max(1, -(-wait // 1000))
        pair.running += 1
        alone.running += 1
        return LoginAttempt(pair, alone)

    def settle(self, attempt: LoginAttempt, succeeded: bool | None) -> None:
        """The verdict: True (right password), False (a failure), None (no verdict,
        e.g. the XMPP server was unreachable: counts as nothing)."""
        if attempt.settled:
            return
        attempt.settled = True
        now = self.clock.now_ms()
        for entry, budget in (
            (attempt.jid_entry, self.limits.per_jid),
            (attempt.address_entry, self.limits.per_address),
        ):
            entry.running = max(0, entry.running - 1)
            if succeeded is False:
                entry.times.append(now)
                del entry.times[:-budget]
            self._touch(entry, now)
        if succeeded:
            attempt.jid_entry.times.clear()
        settled = attempt.address_entry.settled
        if settled is not None and not settled.done():
            settled.set_result(None)  # the attempts waiting on this address decide again

    def _entry(self, key: tuple[str | None, str], now: int) -> _Failures:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Failures(key, now)
            self._forget_beyond_cap(now)
        else:
            self._touch(entry, now)
        return entry

    def _touch(self, entry: _Failures, now: int) -> None:
        entry.touched_ms = now
        if self._entries.get(entry.key) is entry:
            self._entries.move_to_end(entry.key)

    def _forget_expired(self, now: int) -> None:
        # Entries are in touch order and every failure time is <= its entry's last
        # touch, so the expired ones are at the front.
        while self._entries:
            entry = next(iter(self._entries.values()))
            if entry.running or entry.touched_ms + self._window_ms > now:
                return
            del self._entries[entry.key]

    def _forget_beyond_cap(self, now: int) -> None:
        while len(self._entries) > self.limits.max_tracked:
            self._entries.popitem(last=False)
            if self._warned_full_ms is None or self._warned_full_ms + self._window_ms <= now:
                self._warned_full_ms = now
                log.warning(
                    "login limits: more than %d clients and (JID, client) pairs with recent"
                    " failures; forgetting the least recent (login_limit_max_tracked)",
                    self.limits.max_tracked,
                )
