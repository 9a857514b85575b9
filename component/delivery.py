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
messages and presences behind them go on meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from component.clock import Clock
from component.notifications import MESSAGE, PRESENCE, ROSTER
from component.rosters import RosterChange, RosterItem, plan
from component.worker import Worker
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
    """The server refused this one change for good (say, the account does not exist):
    logged, and the row is not retried."""


class Transport(Protocol):
    """What the dispatcher needs from the XMPP side (implemented by PresenceComponent)."""

    @property
    def ready(self) -> bool:
        """Session up and privileges known."""

    @property
    def roster_ready(self) -> bool:
        """Roster access (read and write) granted for every served domain."""

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

    async def barrier(self) -> None:
        """Returns once the server has processed everything sent before; TransportGone otherwise."""


@dataclass(frozen=True)
class _Applied:
    """The fate of one roster row: `done` (delete it: applied, or failed for good) or
    waiting; and the item's record after it, to store with the deletion."""

    row_id: int
    done: bool
    record: RosterRecord | None = None


class OutboxDispatcher(Worker):
    """Woken after every commit that wrote outbox rows, after every (re)connect, and
    every `poll_s` seconds (rows committed by another process, such as `resync`)."""

    task_name = "outbox-dispatcher"

    def __init__(
        self,
        db: Database,
        transport: Transport,
        batch_size: int = 500,
        confirm_window: int = 2000,
        clock: Clock | None = None,
        poll_s: float = 5.0,
    ) -> None:
        super().__init__()
        self.db = db
        self.transport = transport
        self.batch_size = batch_size
        self.confirm_window = confirm_window
        self.clock = clock or Clock()
        self.poll_s = poll_s
        self.delivered = 0
        self._waiting: set[tuple[str, str]] = set()  # roster items whose rows wait (this drain)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except TimeoutError:
                pass
            self._wake.clear()
            if not self.transport.ready:
                continue
            try:
                await self.drain()
            except TransportGone:
                log.info("outbox: stream lost while delivering; will resume after reconnect")
            except Exception:
                log.exception("outbox: delivery failed; retrying in 1 s")
                await asyncio.sleep(1)
                self._wake.set()

    async def drain(self) -> None:
        """Deliver every row in the outbox, oldest first, until it is empty.

        Rows are sent as they are read, batch after batch, without waiting for the
        previous batch's roster IQs: those run as one ordered chain per roster item
        (owner and contact: each change reads the item its predecessor left), up to
        the transport's IQ bound, across batch boundaries. Rows are confirmed (every
        roster answer in, then the barrier) and deleted in windows of up to
        `confirm_window` rows, and whenever the outbox runs dry. A confirmation runs
        in the background, one at a time: rows committed meanwhile are sent at once,
        so the server's pipeline does not drain while we wait for the last answers of
        a window.
        """
        cursor = 0
        window: list[int] = []  # messages and presences sent, not yet confirmed
        roster_window: list[asyncio.Task[_Applied]] = []  # roster rows, likewise
        chains: dict[tuple[str, str], asyncio.Task[_Applied]] = {}
        confirming: asyncio.Task[None] | None = None
        self._waiting = set()
        try:
            while self.transport.ready:
                if confirming is not None and confirming.done():
                    confirming.result()  # its failure (TransportGone) ends this drain
                    confirming = None
                roster = self.transport.roster_ready
                rows = await self.db.read(
                    lambda conn, after=cursor: outbox.next_batch(conn, after, self.batch_size, roster)
                )
                if rows:
                    self._send(rows, chains, window, roster_window)
                    cursor = rows[-1].id
                pending = len(window) + len(roster_window)
                if pending and (
                    pending >= self.confirm_window or (not rows and confirming is None)
                ):
                    if confirming is not None:  # one confirmation at a time
                        await confirming
                    # Confirmed in the background: rows committed meanwhile go out at once
                    # instead of waiting for these answers (no pipeline bubble under load).
                    confirming = asyncio.create_task(self._confirm(window, roster_window))
                    window, roster_window = [], []
                    # `chains` keeps finished tasks too, for this drain: the next change of
                    # an item starts from the record its predecessor left, which the
                    # confirmation may not have stored yet.
                if rows:
                    continue
                if confirming is None:  # dry, and everything sent is confirmed
                    return
                await self._woken_or(confirming)
        finally:
            for task in [*chains.values(), *roster_window, *([confirming] if confirming else [])]:
                _discard(task)

    async def _woken_or(self, task: asyncio.Task[None]) -> None:
        """Until a commit wakes us (clearing the wake-up) or `task` ends."""
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({woken, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
        if self._wake.is_set():
            self._wake.clear()

    def _send(
        self,
        rows: list[OutboxRow],
        chains: dict[tuple[str, str], asyncio.Task[_Applied]],
        window: list[int],
        roster_window: list[asyncio.Task[_Applied]],
    ) -> None:
        for row in rows:
            if row.kind == MESSAGE:
                self.transport.send_management(row)
                window.append(row.id)
            elif row.kind == PRESENCE:
                self.transport.send_presence(row)
                window.append(row.id)
            elif row.kind == ROSTER:
                if not self.transport.roster_allowed(row.recipient):
                    continue  # waits in the outbox until the server grants roster access
                # Order matters per roster item (each change reads what the last left).
                key = (row.recipient, str(row.payload.get("jid")))
                task = asyncio.create_task(self._roster_row(chains.get(key), key, row))
                chains[key] = task
                roster_window.append(task)
            else:
                log.error("outbox: unknown row kind %r (row %d), dropping it", row.kind, row.id)
                window.append(row.id)

    async def _roster_row(
        self, previous: asyncio.Task[_Applied] | None, key: tuple[str, str], row: OutboxRow
    ) -> _Applied:
        """Apply one roster row after the item's previous one (whose failure, such as
        TransportGone, stops the rest of the chain)."""
        prior = await previous if previous is not None else None
        if key in self._waiting or (prior is not None and not prior.done):
            return _Applied(row.id, done=False)  # behind a waiting change: keep the order
        try:
            change = RosterChange.from_row(row.recipient, row.payload)
        except ValueError:
            log.error("outbox: roster row %d is not a roster change, dropping it", row.id)
            return _Applied(row.id, done=True)
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
            self._waiting.add(key)
            log.warning(
                "roster: the server refuses access to %s's roster; the change of %s waits"
                " in the outbox", change.owner, change.contact,
            )
            return _Applied(row.id, done=False)
        except RosterFailed as exc:
            log.warning(
                "roster: %s %s of %s in %s's roster failed for good (%s); dropped",
                "adding" if change.add else "removing", change.direction, change.contact,
                change.owner, exc,
            )
            return _Applied(row.id, done=True)
        return _Applied(row.id, done=True, record=step.record)

    async def _confirm(self, ids: list[int], roster_rows: list[asyncio.Task[_Applied]]) -> None:
        """Wait for the roster answers, then the barrier; then delete the rows that are
        done and store what was applied to each roster item, in one transaction."""
        results = await asyncio.gather(*roster_rows, return_exceptions=True)
        applied: list[_Applied] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            applied.append(result)
        await self.transport.barrier()
        done = ids + [a.row_id for a in applied if a.done]
        saves = [a.record for a in applied if a.record is not None]
        now = self.clock.now_ms()

        async def commit(tx: Conn) -> None:
            await outbox.delete(tx, done)
            for record in saves:
                await records.save(tx, record, now)

        await self.db.write(commit)
        self.delivered += len(done)
        log.debug("outbox: delivered %d row(s)", len(done))


def _discard(task: asyncio.Task[object]) -> None:
    """Stop a task this drain no longer needs; a failure it already had is not reported twice."""
    if task.done():
        if not task.cancelled():
            task.exception()  # retrieved: the drain reported (or is reporting) the cause
    else:
        task.cancel()
