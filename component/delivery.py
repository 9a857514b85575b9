"""The outbox dispatcher: turns committed outbox rows into XMPP traffic.

Delivery is at-least-once. Rows are deleted only after the server has taken
them: roster sets when their IQ result (or a final error) comes back, messages
and presences once a ping sent after them is answered (the stream is ordered, so the server
has processed every message before the ping). A stream that drops mid-batch
leaves the rows in place; they are sent again after the next reconnect, with
the same stanza id (`ph-{row id}`) so clients can drop duplicates.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Protocol

from component.notifications import MESSAGE, PRESENCE, ROSTER
from component.worker import Worker
from storage import Database, outbox
from storage.outbox import OutboxRow

log = logging.getLogger(__name__)


class TransportGone(Exception):
    """The XMPP stream went away; undelivered rows stay in the outbox."""


class Transport(Protocol):
    """What the dispatcher needs from the XMPP side (implemented by PresenceComponent)."""

    @property
    def ready(self) -> bool:
        """Session up and privileges known."""

    def roster_allowed(self, owner: str) -> bool: ...

    def send_management(self, row: OutboxRow) -> None: ...

    def send_presence(self, row: OutboxRow) -> None: ...

    async def set_roster_item(self, row: OutboxRow) -> None:
        """Raises TransportGone when the stream drops before the answer."""

    async def barrier(self) -> None:
        """Returns once the server has processed everything sent before; TransportGone otherwise."""


class OutboxDispatcher(Worker):
    """Woken after every commit that wrote outbox rows, and after every (re)connect."""

    task_name = "outbox-dispatcher"

    def __init__(self, db: Database, transport: Transport, batch_size: int = 500) -> None:
        super().__init__()
        self.db = db
        self.transport = transport
        self.batch_size = batch_size
        self.delivered = 0

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
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
        """Deliver every row in the outbox, oldest first, until it is empty."""
        while self.transport.ready:
            async with self.db.read() as conn:
                rows = await outbox.next_batch(conn, 0, self.batch_size)
            if not rows:
                return
            await self._deliver(rows)
            async with self.db.transaction() as tx:
                await outbox.delete(tx, [r.id for r in rows])
            self.delivered += len(rows)
            log.debug("outbox: delivered %d row(s)", len(rows))

    async def _deliver(self, rows: list[OutboxRow]) -> None:
        by_owner: dict[str, list[OutboxRow]] = defaultdict(list)
        for row in rows:
            if row.kind == MESSAGE:
                self.transport.send_management(row)
            elif row.kind == PRESENCE:
                self.transport.send_presence(row)
            elif row.kind == ROSTER:
                if self.transport.roster_allowed(row.recipient):
                    by_owner[row.recipient].append(row)
                else:
                    log.debug("outbox: roster privilege missing, dropping roster row %d", row.id)
            else:
                log.error("outbox: unknown row kind %r (row %d), dropping it", row.kind, row.id)
        # One owner's items in commit order (the last one wins); owners in parallel,
        # bounded by the transport's IQ semaphore.
        results = await asyncio.gather(
            *(self._set_in_order(items) for items in by_owner.values()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        await self.transport.barrier()

    async def _set_in_order(self, rows: list[OutboxRow]) -> None:
        for row in rows:
            await self.transport.set_roster_item(row)
