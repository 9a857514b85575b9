"""Which of several instances on one PostgreSQL database is the active one.

Every instance serves REST; exactly one holds the XMPP session, dispatches the
outbox, sends invitation e-mails and runs the sweeper: the one holding a
PostgreSQL session-level advisory lock (`pg_try_advisory_lock`), taken on a
connection of its own and asked for about every second by the others (standbys).

Why a lock rather than claiming rows (`SELECT ... FOR UPDATE SKIP LOCKED`): Prosody
takes one connection per component JID, so only one instance can deliver at all;
the lock says which, and the moment its holder's connection closes (the process
exits, is killed with SIGKILL, or its host vanishes and TCP gives up) PostgreSQL
releases it and the next standby to ask takes over. Nothing is lost: the outbox is
at-least-once (rows are deleted once the server has them), so the new holder sends
whatever the old one had not confirmed.

The holder checks its lock connection about every second; if that connection is
lost it can no longer know that it holds the lock (another instance may take it at
once), so it stops being the active one at once: `on_lost` is called (the service
stops and exits, to be restarted by its supervisor as a standby).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from component.worker import stop_task

log = logging.getLogger(__name__)


def lock_key(component_jid: str) -> int:
    """The advisory lock's key: one per component JID (a signed 64-bit integer), so that
    two different components may share a database."""
    digest = hashlib.sha256(f"presence-consent leader {component_jid}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Leadership:
    def __init__(
        self,
        url: str,
        key: int,
        on_elected: Callable[[], Awaitable[None]],
        on_lost: Callable[[], None],
        poll_s: float = 1.0,
    ) -> None:
        self.url = url
        self.key = key
        self.on_elected = on_elected
        self.on_lost = on_lost
        self.poll_s = poll_s
        self.leader = False
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="leadership")

    async def _connect(self) -> asyncpg.Connection:
        delay = self.poll_s
        while True:
            try:
                return await asyncpg.connect(self.url, timeout=10)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("leadership: cannot reach the database (%s); again in %.0f s",
                            type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    async def _run(self) -> None:
        conn = self._conn = await self._connect()
        announced = False
        while True:
            try:
                async with asyncio.timeout(10):
                    got = await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                conn.terminate()
                conn = self._conn = await self._connect()
                continue
            if got:
                break
            if not announced:
                log.info("leadership: another instance is active; standing by")
                announced = True
            await asyncio.sleep(self.poll_s)
        self.leader = True
        log.info("leadership: this instance is now the active one")
        try:
            await self.on_elected()
        except Exception:
            # Holding the lock without doing the work would stall every instance: stop.
            log.exception("leadership: could not start as the active instance; stopping")
            self.leader = False
            self.on_lost()
            return
        # Hold: the lock lives as long as this connection. Check it is still there.
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                async with asyncio.timeout(max(5.0, 5 * self.poll_s)):
                    await conn.fetchval("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: the lock may be gone
                self.leader = False
                log.error(
                    "leadership: lost the database connection holding the lock (%s);"
                    " another instance may take over: stopping", type(exc).__name__,
                )
                conn.terminate()
                self.on_lost()
                return

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                # Closing the connection releases the lock: a standby takes over at once.
                async with asyncio.timeout(5):
                    await conn.close()
            except Exception:  # noqa: BLE001 - terminate releases it as well
                conn.terminate()
        self.leader = False
