"""The SQLite database, set up like a server.

Two connections: one writer, used only inside `transaction()` (serialised by a
lock, `BEGIN IMMEDIATE` so concurrent writers queue instead of failing late), and
one reader for queries outside transactions, used only inside `read()` (WAL lets
it read the last committed state while a write is in progress). `read()` is
serialised too: two coroutines interleaving statements on one connection would
keep one read transaction open across both, pinning an old snapshot (stale reads)
and, under steady load, preventing WAL checkpoints for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from storage.migrations import UPGRADES

log = logging.getLogger(__name__)

# Pragmas chosen on purpose:
# - foreign_keys: SQLite leaves them off by default.
# - journal_mode=WAL: readers never block the writer and vice versa.
# - synchronous=FULL: an acknowledged request must survive power loss, not only a
#   process crash (NORMAL in WAL mode may lose the last commits on power loss).
# - busy_timeout: another process (an operator's sqlite3 shell) may hold a lock briefly.
_PRAGMAS = (
    "PRAGMA foreign_keys = ON",
    "PRAGMA synchronous = FULL",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA temp_store = MEMORY",
)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a group's outcome as seen: members that failed on their own never await it."""
    if not future.cancelled():
        future.exception()


class SchemaTooNew(RuntimeError):
    """The database was written by a newer version of the service."""


class Database:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        # Group commit: the open SQLite transaction's completion, and how many
        # transactions wait for the write lock (they join the group).
        self._group: asyncio.Future[None] | None = None
        self._queued = 0

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        try:
            await self._writer.execute("PRAGMA journal_mode = WAL")
            await self._migrate()
        except BaseException:
            # aiosqlite's worker thread is not a daemon: a connection left open
            # here (SchemaTooNew, a failed migration) keeps the process alive.
            await self._writer.close()
            self._writer = None
            raise
        self._reader = await self._connect() if self.path != ":memory:" else self._writer

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        for pragma in _PRAGMAS:
            await conn.execute(pragma)
        return conn

    async def close(self) -> None:
        for conn in {id(c): c for c in (self._reader, self._writer) if c is not None}.values():
            await conn.close()
        self._reader = self._writer = None

    @property
    def reader(self) -> aiosqlite.Connection:
        """The reader connection itself; code outside `read()` is for tests only."""
        assert self._reader is not None, "Database.open() was not awaited"
        return self._reader

    @asynccontextmanager
    async def read(self) -> AsyncIterator[aiosqlite.Connection]:
        """Exclusive use of the reader: every statement sees the latest commit."""
        async with self._read_lock:
            yield self.reader

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction: durable once the block exits, rolled back on any exception.

        Group commit: transactions queued while one runs join its SQLite transaction,
        each in its own savepoint (so one failing rolls back only itself), and the
        last of the queue commits for all: one fsync for the group. Every caller
        still returns only after the COMMIT that made its changes durable.
        """
        writer = self._writer
        assert writer is not None, "Database.open() was not awaited"
        self._queued += 1
        try:
            await self._write_lock.acquire()
        except BaseException:
            # A cancelled waiter may have been the one the group was left open for.
            self._queued -= 1
            asyncio.get_running_loop().call_soon(self._commit_abandoned_group)
            raise
        self._queued -= 1
        opened = self._group is None
        try:
            if opened:
                await writer.execute("BEGIN IMMEDIATE")
                self._group = asyncio.get_running_loop().create_future()
                self._group.add_done_callback(_retrieve)
            else:
                await writer.execute("SAVEPOINT tx")
            group = self._group
            try:
                yield writer
            except BaseException:
                if opened:  # alone in the group so far: undo it all
                    self._group = None
                    await writer.execute("ROLLBACK")
                    group.set_result(None)
                else:
                    await writer.execute("ROLLBACK TO tx")
                    await writer.execute("RELEASE tx")
                raise
            if not opened:
                await writer.execute("RELEASE tx")
        finally:
            try:
                if self._group is not None and self._queued == 0:
                    await asyncio.shield(self._commit_group())
            finally:
                self._write_lock.release()
        await asyncio.shield(group)

    async def _commit_group(self) -> None:
        """COMMIT the open group and tell every member (called with the write lock held)."""
        assert self._writer is not None and self._group is not None
        group, self._group = self._group, None
        try:
            await self._writer.execute("COMMIT")
        except BaseException as exc:
            try:
                await self._writer.execute("ROLLBACK")
            except Exception:  # noqa: BLE001 - the COMMIT error is the one to report
                pass
            group.set_exception(exc if isinstance(exc, Exception) else RuntimeError("commit interrupted"))
        else:
            group.set_result(None)

    def _commit_abandoned_group(self) -> None:
        if self._group is not None:
            asyncio.ensure_future(self._commit_when_free())

    async def _commit_when_free(self) -> None:
        async with self._write_lock:  # not counted in _queued: real transactions go first
            if self._group is not None and self._queued == 0:
                await self._commit_group()

    async def schema_version(self) -> int:
        conn = self._writer or self._reader
        assert conn is not None
        async with conn.execute("SELECT version FROM schema_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def ping(self) -> bool:
        try:
            async with self.read() as conn, conn.execute("SELECT 1") as cur:
                return (await cur.fetchone()) is not None
        except Exception:  # noqa: BLE001 - health check reports, never raises
            log.exception("storage health check failed")
            return False

    async def _migrate(self) -> None:
        assert self._writer is not None
        conn = self._writer
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = await self.schema_version()
        latest = len(UPGRADES)
        if current > latest:
            raise SchemaTooNew(
                f"database {self.path} has schema version {current}, this service knows up to {latest}"
            )
        for version in range(current + 1, latest + 1):
            log.info("storage: migrating %s to schema version %d", self.path, version)
            async with self.transaction() as tx:
                await UPGRADES[version - 1](tx)
                await tx.execute("DELETE FROM schema_version")
                await tx.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
