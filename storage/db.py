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


class SchemaTooNew(RuntimeError):
    """The database was written by a newer version of the service."""


class Database:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()

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
        """One write transaction: committed on success, rolled back on any exception."""
        assert self._writer is not None, "Database.open() was not awaited"
        async with self._write_lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                await self._writer.execute("ROLLBACK")
                raise
            else:
                await self._writer.execute("COMMIT")

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
