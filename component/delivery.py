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
        outbox runs dry. A confirmation runs in the background, one at a time: rows
        committed meanwhile are sent at once, so the server's pipeline does not drain
        while we wait for the last answers of a window.
        """
        cursor = 0
        window: list[int] = []  # rows sent, not yet handed to a confirmation
        chains: dict[tuple[str, str], asyncio.Task[None]] = {}
        confirming: asyncio.Task[None] | None = None
        try:
            while self.transport.ready:
                if confirming is not None and confirming.done():
                    confirming.result()  # its failure (TransportGone) ends this drain
                    confirming = None
                rows = await self.db.read(
                    lambda conn, after=cursor: outbox.next_batch(conn, after, self.batch_size)
                )
                if rows:
                    self._send(rows, chains)
                    cursor = rows[-1].id
                    window.extend(r.id for r in rows)
                if window and (
                    len(window) >= self.confirm_window or (not rows and confirming is None)
                ):
                    if confirming is not None:  # one confirmation at a time
                        await confirming
                    # Confirmed in the background: rows committed meanwhile go out at once
                    # instead of waiting for these answers (no pipeline bubble under load).
                    confirming = asyncio.create_task(self._confirm(window, list(chains.values())))
                    window = []
                    chains = {key: task for key, task in chains.items() if not task.done()}
                if rows:
                    continue
                if confirming is None:  # dry, and everything sent is confirmed
                    return
                await self._woken_or(confirming)
        finally:
            for task in [*chains.values(), *([confirming] if confirming else [])]:
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

    async def _confirm(self, ids: list[int], sets: list[asyncio.Task[None]]) -> None:
        """Wait for the roster answers, then the barrier; then delete the rows."""
        results = await asyncio.gather(*sets, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        await self.transport.barrier()
        await self.db.write(lambda tx: outbox.delete(tx, ids))
        self.delivered += len(ids)
        log.debug("outbox: delivered %d row(s)", len(ids))


def _discard(task: asyncio.Task[None]) -> None:
    """Stop a task this drain no longer needs; a failure it already had is not reported twice."""
    if task.done():
        if not task.cancelled():
            task.exception()  # retrieved: the drain reported (or is reporting) the cause
    else:
        task.cancel()
