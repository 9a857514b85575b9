"""The outbox dispatcher: turns committed outbox rows into XMPP traffic.

Delivery is at-least-once. Rows are deleted only after the server has taken
them: roster changes when their IQ result (or a final error) comes back, messages
and presences once a ping sent after them is answered (the stream is ordered, so the server
has processed every message before the ping). A stream that drops mid-batch
leaves the rows in place; they are sent again after the next reconnect, with
the same stanza id (`ph-{row id}`) so clients can drop duplicates.

A roster row changes one direction of one item (component.rosters): the item is
read first and only that direction changes, so delivering a row twice changes
nothing the second time. Roster rows wait in the outbox, never dropped, while the
server grants no roster access (no advertisement yet, or a `forbidden` answer);
messages and presences behind them go on meanwhile. With `[roster] backend = "none"`
roster rows are deleted unapplied (and nothing is recorded as granted).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Protocol

from component.clock import Clock
from component.notifications import MESSAGE, PRESENCE, ROSTER
from component.rosters import RosterChange, RosterItem, plan
from component.worker import Backoff, Worker
from storage import Conn, Database, outbox
from storage import rosters as records
from storage.outbox import OutboxRow
from storage.rosters import RosterRecord

log = logging.getLogger(__name__)


class TransportGone(Exception):
    """The XMPP stream went away; undelivered rows stay in the outbox."""


class RosterRefused(Exception):
    """The server refuses roster access for this user's domain now (XEP-0356 privilege
    missing or withdrawn): the row waits in the outbox."""


class RosterFailed(Exception):
    """The server refused this one change (say, the account does not exist): an attempt
    of the row is spent; it is retried with backoff, then moved aside."""


class Transport(Protocol):
    """What the dispatcher needs from the XMPP side (implemented by PresenceComponent)."""

    @property
    def ready(self) -> bool:
        """Session up and privileges known."""

    @property
    def generation(self) -> int:
        """Which stream this is: moves with every session (a barrier answered on a new
        stream proves nothing about what was sent on the old one)."""

    @property
    def roster_ready(self) -> bool:
        """Roster access (read and write) granted for every served domain, by whichever
        roster backend is configured (component.rosters.RosterBackend)."""

    @property
    def rosters_off(self) -> bool:
        """No roster backend (`[roster] backend = "none"`): roster rows are dropped."""

    def roster_allowed(self, owner: str) -> bool: ...

    def send_management(self, row: OutboxRow) -> None: ...

    def send_presence(self, row: OutboxRow) -> None: ...

    async def roster_item(self, owner: str, contact: str) -> RosterItem | None:
        """The item as the server holds it now (None: not in the roster).
        Raises TransportGone, RosterRefused or RosterFailed."""

    async def set_roster_item(self, owner: str, item: RosterItem) -> None:
        """Raises TransportGone, RosterRefused or RosterFailed."""

    async def remove_roster_item(self, owner: str, contact: str) -> None:
        """Raises TransportGone, RosterRefused or RosterFailed (an absent item is done)."""

    async def barrier(self, generation: int) -> None:
        """Returns once the server has processed everything sent before on stream
        `generation`; TransportGone otherwise (that stream is gone)."""


@dataclass(frozen=True)
class _Applied:
    """The fate of one roster row: `done` (delete it), waiting (kept, in order), or
    `failed` (an attempt spent: retried later, or moved aside); and the item's record
    after it, to store with the deletion."""

    row: OutboxRow
    done: bool
    record: RosterRecord | None = None
    failed: str | None = None
    final: bool = False  # no retry can help: moved aside at once


@dataclass
class _Window:
    """Rows sent and not yet confirmed, as one confirmation will settle them."""

    ids: list[int] = field(default_factory=list)  # messages and presences sent
    roster: list[asyncio.Task[_Applied]] = field(default_factory=list)
    # Rows whose attempt failed: (row, why, final: no retry can help).
    failed: list[tuple[OutboxRow, str, bool]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids) + len(self.roster) + len(self.failed)


class OutboxDispatcher(Worker):
    """Woken after every commit that wrote outbox rows, after every (re)connect, and
    every `poll_s` seconds (rows committed by another process, such as `resync`, and
    rows whose retry is due)."""

    task_name = "outbox-dispatcher"

    def __init__(
        self,
        db: Database,
        transport: Transport,
        batch_size: int = 500,
        confirm_window: int = 2000,
        clock: Clock | None = None,
        poll_s: float = 5.0,
        max_attempts: int = 8,
        retry: Backoff = Backoff(2_000, 300_000),
    ) -> None:
        super().__init__()
        self.db = db
        self.transport = transport
        self.batch_size = batch_size
        self.confirm_window = confirm_window
        self.clock = clock or Clock()
        self.poll_s = poll_s
        self.max_attempts = max_attempts
        self.retry = retry
        self.delivered = 0
        self.dead = 0
        self.roster_errors = 0  # roster IQs the server refused (waiting) or failed
        self._waiting: set[tuple[str, str]] = set()  # roster items whose rows wait (this drain)
        self._in_flight: set[int] = set()  # sent on the current stream, not yet confirmed
        # A commit woke a drain past rows already read: drain again from the start once
        # this one is done. With several instances (PostgreSQL) ids are taken before
        # commit, so a row may commit below the drain's cursor after it passed.
        self._rescan = False

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if not self.transport.ready:
                continue
            try:
                await self.drain()
                if self._rescan:
                    self._wake.set()
            except TransportGone:
                log.info("outbox: stream lost while delivering; will resume after reconnect")
            except Exception:
                log.exception("outbox: delivery failed; retrying in 1 s")
                await asyncio.sleep(1)
                self._wake.set()

    async def drain(self) -> None:
        """Deliver every due row in the outbox, oldest first, until none is left.

        Rows are sent as they are read, batch after batch, without waiting for the
        previous batch's roster IQs: those run as one ordered chain per roster item
        (owner and contact: each change reads the item its predecessor left), up to
        the transport's IQ bound, across batch boundaries. Rows are confirmed (every
        roster answer in, then the barrier, on the stream they were sent on) and
        deleted in windows of up to `confirm_window` rows, and whenever the outbox runs
        dry. A confirmation runs in the background, one at a time: rows committed
        meanwhile are sent at once, so the server's pipeline does not drain while we
        wait for the last answers of a window.

        A row whose delivery fails (the server refuses it, it cannot be built) is
        retried with backoff and after `max_attempts` moved to `dead_letters`; it never
        holds up other rows, except later changes of the same roster item, which keep
        their order. When the stream is lost, the rows in flight are marked suspect and
        the next drain sends each alone first: a row that breaks the stream is then
        found (and counted) without blaming the rows sent with it.
        """
        if not self.transport.ready:
            return
        generation = self.transport.generation
        self._waiting = set()
        self._rescan = False
        try:
            await self._deliver_suspects(generation)
            await self._deliver_all(generation)
        except TransportGone:
            await self._lost()
            raise

    async def _deliver_all(self, generation: int) -> None:
        cursor = 0
        window = _Window()
        chains: dict[tuple[str, str], asyncio.Task[_Applied]] = {}
        confirming: asyncio.Task[None] | None = None
        try:
            while self._current(generation):
                if confirming is not None and confirming.done():
                    confirming.result()  # its failure (TransportGone) ends this drain
                    confirming = None
                roster = self.transport.roster_ready or self.transport.rosters_off
                rows = await self.db.read(
                    lambda conn, after=cursor: outbox.next_batch(conn, after, self.batch_size, roster)
                )
                if rows:
                    self._send(rows, chains, window, self.clock.now_ms())
                    cursor = rows[-1].id
                if len(window) and (len(window) >= self.confirm_window or (not rows and confirming is None)):
                    if confirming is not None:  # one confirmation at a time
                        await confirming
                    # Confirmed in the background: rows committed meanwhile go out at once
                    # instead of waiting for these answers (no pipeline bubble under load).
                    confirming = asyncio.create_task(self._confirm(window, generation))
                    window = _Window()
                    # `chains` keeps finished tasks too, for this drain: the next change of
                    # an item starts from the record its predecessor left, which the
                    # confirmation may not have stored yet.
                if rows:
                    continue
                if confirming is None:  # dry, and everything sent is confirmed
                    return
                await self._woken_or(confirming)
            raise TransportGone()  # a new stream (or none) since this drain began
        finally:
            for task in [*chains.values(), *window.roster, *([confirming] if confirming else [])]:
                _discard(task)

    def _current(self, generation: int) -> bool:
        return self.transport.ready and self.transport.generation == generation

    async def _deliver_suspects(self, generation: int) -> None:
        """Rows in flight when a stream was lost, each sent alone and confirmed before the
        next: if the stream goes again, the row alone is to blame (one attempt spent)."""
        while self._current(generation):
            now = self.clock.now_ms()
            rows = await self.db.read(lambda conn: outbox.suspects(conn, self.batch_size))
            due = [row for row in rows if row.next_try_at <= now]
            if not due:
                return
            for row in due:
                window = _Window()
                self._send([row], {}, window, now, alone=True)
                try:
                    await self._confirm(window, generation)
                except TransportGone:
                    self._in_flight.discard(row.id)
                    await self.db.write(
                        lambda tx, row=row: self._spend(tx, row, "the stream was lost while it was sent alone")
                    )
                    raise
                # Confirmed (deleted), or kept for a retry: either way no longer suspect.
                await self.db.write(lambda tx, row=row: outbox.clear_suspect(tx, row.id))

    async def _lost(self) -> None:
        """The stream went with rows in flight: mark them to be sent alone next time."""
        lost, self._in_flight = self._in_flight, set()
        if lost:
            await self.db.write(lambda tx: outbox.mark_suspect(tx, lost))
            log.info("outbox: %d row(s) were in flight when the stream was lost; they go alone next", len(lost))

    async def _woken_or(self, task: asyncio.Task[None]) -> None:
        """Until a commit wakes us (clearing the wake-up) or `task` ends."""
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({woken, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
        if self._wake.is_set():
            self._wake.clear()
            self._rescan = True

    def _send(
        self,
        rows: list[OutboxRow],
        chains: dict[tuple[str, str], asyncio.Task[_Applied]],
        window: _Window,
        now: int,
        alone: bool = False,
    ) -> None:
        for row in rows:
            key = (row.recipient, str(row.payload.get("jid"))) if row.kind == ROSTER else None
            if (row.suspect and not alone) or row.next_try_at > now:
                if key is not None:
                    self._waiting.add(key)  # later changes of the item wait behind it
                continue
            if row.kind in (MESSAGE, PRESENCE):
                try:
                    if row.kind == MESSAGE:
                        self.transport.send_management(row)
                    else:
                        self.transport.send_presence(row)
                except TransportGone:
                    raise
                except Exception as exc:  # this row cannot be built: it, not the others
                    log.warning("outbox: row %d (%s to %s) cannot be sent: %r", row.id, row.kind, row.recipient, exc)
                    window.failed.append((row, f"cannot be sent: {type(exc).__name__}", False))
                    continue
                window.ids.append(row.id)
                self._in_flight.add(row.id)
            elif row.kind == ROSTER:
                assert key is not None
                if self.transport.rosters_off:
                    window.ids.append(row.id)  # no roster backend: done, unapplied
                    continue
                if key in self._waiting or not self.transport.roster_allowed(row.recipient):
                    continue  # waits in the outbox, in order (until the server grants access)
                # Order matters per roster item (each change reads what the last left).
                task = asyncio.create_task(self._roster_row(chains.get(key), key, row))
                chains[key] = task
                window.roster.append(task)
                self._in_flight.add(row.id)
            else:
                log.error("outbox: unknown row kind %r (row %d)", row.kind, row.id)
                window.failed.append((row, f"unknown kind {row.kind!r}", True))

    async def _roster_row(
        self, previous: asyncio.Task[_Applied] | None, key: tuple[str, str], row: OutboxRow
    ) -> _Applied:
        """Apply one roster row after the item's previous one (whose failure, such as
        TransportGone, stops the rest of the chain)."""
        prior = await previous if previous is not None else None
        if key in self._waiting or (prior is not None and not prior.done):
            return _Applied(row, done=False)  # behind a waiting change: keep the order
        try:
            change = RosterChange.from_row(row.recipient, row.payload)
        except ValueError:
            log.error("outbox: roster row %d is not a roster change", row.id)
            return _Applied(row, done=False, failed="not a roster change", final=True)
        record = prior.record if prior is not None and prior.record is not None else await self.db.read(
            lambda conn: records.get(conn, change.owner, change.contact)
        )
        try:
            current = await self.transport.roster_item(change.owner, change.contact)
            step = plan(change, current, record)
            if step.creates and not (record is not None and record.created):
                # Recorded before the item exists: after a crash right after the set,
                # the service still knows it created the item (and may remove it).
                now = self.clock.now_ms()
                await self.db.write(
                    lambda tx: records.mark_created(tx, change.owner, change.contact, now)
                )
            if step.item is not None:
                await self.transport.set_roster_item(change.owner, step.item)
            elif step.remove:
                await self.transport.remove_roster_item(change.owner, change.contact)
        except RosterRefused:
            self.roster_errors += 1
            self._waiting.add(key)
            log.warning(
                "roster: the server refuses access to %s's roster; the change of %s waits"
                " in the outbox", change.owner, change.contact,
            )
            return _Applied(row, done=False)
        except RosterFailed as exc:
            self.roster_errors += 1
            self._waiting.add(key)  # the item's later changes wait for this one's retry
            log.warning(
                "roster: %s %s of %s in %s's roster failed (%s)",
                "adding" if change.add else "removing", change.direction, change.contact,
                change.owner, exc,
            )
            return _Applied(row, done=False, failed=f"the server answered {exc}")
        return _Applied(row, done=True, record=step.record)

    async def _confirm(self, window: _Window, generation: int) -> None:
        """Wait for the roster answers, then the barrier on the stream the rows were sent
        on; then, in one transaction, delete the rows that are done, store what was
        applied to each roster item, and count the attempt of each row that failed."""
        results = await asyncio.gather(*window.roster, return_exceptions=True)
        applied: list[_Applied] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            applied.append(result)
        await self.transport.barrier(generation)
        done = window.ids + [a.row.id for a in applied if a.done]
        saves = [a.record for a in applied if a.record is not None]
        failed = window.failed + [(a.row, a.failed, a.final) for a in applied if a.failed is not None]
        now = self.clock.now_ms()

        async def commit(tx: Conn) -> int:
            await outbox.delete(tx, done)
            await records.save_many(tx, saves, now)
            dead = 0
            for row, error, final in failed:
                dead += await self._spend(tx, row, error, final)
            return dead

        dead = await self.db.write(commit)
        self._in_flight.difference_update(window.ids)
        self._in_flight.difference_update(a.row.id for a in applied)
        self.delivered += len(done)
        self.dead += dead
        log.debug("outbox: delivered %d row(s)", len(done))

    async def _spend(self, tx: Conn, row: OutboxRow, error: str, final: bool = False) -> int:
        """One attempt of `row` failed: retry it later, or move it aside after the last
        (or at once when `final`; returns 1 then). Runs inside the caller's transaction."""
        now = self.clock.now_ms()
        if final or row.attempts + 1 >= self.max_attempts:
            await outbox.give_up(tx, row, error, now)
            log.error(
                "outbox: giving up on row %d (%s to %s) after %d attempts: %s; kept in dead_letters",
                row.id, row.kind, row.recipient, row.attempts + 1, error,
            )
            return 1
        await outbox.retry_later(tx, row.id, now + self.retry.delay_ms(row.attempts), error)
        return 0


def _discard(task: asyncio.Task[object]) -> None:
    """Stop a task this drain no longer needs; a failure it already had is not reported twice."""
    if task.done():
        if not task.cancelled():
            task.exception()  # retrieved: the drain reported (or is reporting) the cause
    else:
        task.cancel()
