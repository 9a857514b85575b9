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

    def __init__(
        self, db: Database, transport: Transport, batch_size: int = 500, confirm_window: int = 2000
    ) -> None:
        super().__init__()
        self.db = db
        self.transport = transport
        self.batch_size = batch_size
        self.confirm_window = confirm_window
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
        """Deliver every row in the outbox, oldest first, until it is empty.

        Rows are sent as they are read, batch after batch, without waiting for the
        previous batch's roster IQs: those run as one ordered chain per roster item
        (owner and contact: the last set wins), up to the transport's IQ bound, across
        batch boundaries. Rows are confirmed (every roster answer in, then the barrier)
        and deleted in windows of up to `confirm_window` rows, and whenever the
        outbox runs dry.
        """
        cursor = 0
        window: list[int] = []
        chains: dict[tuple[str, str], asyncio.Task[None]] = {}
        try:
            while self.transport.ready:
                rows = await self.db.read(
                    lambda conn, after=cursor: outbox.next_batch(conn, after, self.batch_size)
                )
                if rows:
                    self._send(rows, chains)
                    cursor = rows[-1].id
                    window.extend(r.id for r in rows)
                if window and (not rows or len(window) >= self.confirm_window):
                    await self._confirm(window, chains)
                    window = []
                elif not rows:
                    return
        finally:
            for chain in chains.values():
                chain.cancel()

    def _send(self, rows: list[OutboxRow], chains: dict[tuple[str, str], asyncio.Task[None]]) -> None:
        for row in rows:
            if row.kind == MESSAGE:
                self.transport.send_management(row)
            elif row.kind == PRESENCE:
                self.transport.send_presence(row)
            elif row.kind == ROSTER:
                if self.transport.roster_allowed(row.recipient):
                    # Order matters per roster item (the last set wins), not per owner.
                    key = (row.recipient, row.payload["jid"])
                    chains[key] = asyncio.create_task(self._set_after(chains.get(key), row))
                else:
                    log.debug("outbox: roster privilege missing, dropping roster row %d", row.id)
            else:
                log.error("outbox: unknown row kind %r (row %d), dropping it", row.kind, row.id)

    async def _set_after(self, previous: asyncio.Task[None] | None, row: OutboxRow) -> None:
        """One roster item's sets in commit order: wait for the item's previous set first."""
        if previous is not None:
            await previous  # its failure (TransportGone) stops the rest of the chain
        await self.transport.set_roster_item(row)

    async def _confirm(
        self, ids: list[int], chains: dict[tuple[str, str], asyncio.Task[None]]
    ) -> None:
        """Wait for every roster answer, then the barrier; then delete the rows."""
        results = await asyncio.gather(*chains.values(), return_exceptions=True)
        chains.clear()
        for result in results:
            if isinstance(result, BaseException):
                raise result
        await self.transport.barrier()
        await self.db.write(lambda tx: outbox.delete(tx, ids))
        self.delivered += len(ids)
        log.debug("outbox: delivered %d row(s)", len(ids))
