"""The SQLite database, set up like a server.

Two aiosqlite connections, each with its own thread: one writer and one reader
(WAL lets the reader see the last commit while a write is in progress).

Work reaches a connection as a *body*: an async function taking a `Conn` and using
only it (`await conn.execute(...)`, `async with conn.execute(...) as cur`,
`await cur.fetchone()`, the repository functions in this package). The whole body
runs in one call on the connection's thread, where every statement is a plain
synchronous sqlite3 call: a transaction costs one round trip between the event loop
and SQLite's thread instead of one per statement (and three per `SELECT`: execute,
fetch, close). Measured on this project's 2-core machines, a round trip costs about
90 microseconds, against a few microseconds for an indexed statement, and writers
are serialised: per-statement round trips capped the service at about 800 write
transactions per second whatever the CPU could do (issue #5).

A body must not await anything but its connection; one that does fails with
`BodyAwaitedOutside` and its transaction is rolled back.

Batching (group commit): bodies that queue while a batch runs go together in the
next call. Writes: `BEGIN IMMEDIATE`, each body in its own savepoint (one failing
rolls back only itself), one `COMMIT`, so one fsync for the whole batch; each caller
is answered only after the COMMIT that made its changes durable. Reads: each body in
its own read transaction, so all its statements see one snapshot.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from storage.batches import Batches, Job
from storage.conn import Conn, run_body
from storage.migrations import UPGRADES

log = logging.getLogger(__name__)

T = TypeVar("T")

# Pragmas chosen on purpose:
# - foreign_keys: SQLite leaves them off by default.
# - journal_mode=WAL: readers never block the writer and vice versa.
# - synchronous=FULL: an acknowledged request must survive power loss, not only a
#   process crash (NORMAL in WAL mode may lose the last commits on power loss).
# - busy_timeout: another process (an operator's sqlite3 shell) may hold a lock briefly.
# - cache_size of the reader (`[storage] read_cache_mb`, 8 MB): SQLite's default is 2 MB
#   a connection, and a first page of 200 requests on a database of 1M touches about 600
#   pages (the requests' rows and both users' of each), 2.4 MB: such a read missed the
#   cache on nearly every page (a repeated walk larger than an LRU cache). Measured in
#   process (issue #14), one page of 200 at 1M rows: 835 us with 2 MB, 396 with 8, 384
#   with 16, 330 at 10k rows; a page of 1000 (`max_page_size`): 5273, 2822, 2964, 1732.
#   The cache fills only as pages are read, up to its size. The writer keeps SQLite's
#   2 MB: a write touches a few pages, and housekeeping's walk over the users would
#   fill any size.
DEFAULT_READ_CACHE_MB = 8
_PRAGMAS = (
    "PRAGMA foreign_keys = ON",
    "PRAGMA synchronous = FULL",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA temp_store = MEMORY",
)

class SchemaTooNew(RuntimeError):
    """The database was written by a newer version of the service."""


# --- batches --------------------------------------------------------------------------


def _write_batch(raw: sqlite3.Connection, jobs: list[Job[Any]]) -> None:
    """On the writer's thread: one transaction for the batch, a savepoint per body.

    Sets each job's outcome; raises (after rolling everything back) only when the
    transaction as a whole fails (BEGIN, a savepoint, COMMIT, or SQLite aborting it),
    which fails every job of the batch.
    """
    conn = Conn(raw)
    raw.execute("BEGIN IMMEDIATE")
    try:
        for job in jobs:
            raw.execute("SAVEPOINT body")
            try:
                result = run_body(job.body, conn)
            except Exception as exc:  # noqa: BLE001 - the body's own failure, for its caller
                if not raw.in_transaction:
                    # SQLite rolled the whole transaction back (disk full, I/O error):
                    # the bodies before this one are lost too, so the batch fails.
                    raise
                raw.execute("ROLLBACK TO body")
                raw.execute("RELEASE body")
                job.outcome = (False, exc)
            else:
                raw.execute("RELEASE body")
                job.outcome = (True, result)
        raw.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        raise


def _read_batch(raw: sqlite3.Connection, jobs: list[Job[Any]]) -> None:
    """On the reader's thread: each body in its own read transaction (one snapshot)."""
    conn = Conn(raw)
    for job in jobs:
        raw.execute("BEGIN")
        try:
            job.outcome = (True, run_body(job.body, conn))
        except Exception as exc:  # noqa: BLE001 - the body's own failure, for its caller
            job.outcome = (False, exc)
        finally:
            if raw.in_transaction:
                raw.execute("COMMIT")  # read-only: ends the snapshot


def _on_thread(conn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> Awaitable[T]:
    """Run `fn(raw sqlite3 connection)` on aiosqlite's own thread, in one round trip.

    aiosqlite has no public call for this (the maintainer agreed it would be "a
    performance improvement to run sequential queries on the dedicated thread",
    omnilib/aiosqlite#19, but none was added); `_execute` and `_conn` are what its own
    Cursor uses, unchanged from 0.17 to 0.22. The dependency is pinned below 0.23 and
    tests/unit/test_group_commit.py runs this path, so a change shows in CI at once.
    """
    return conn._execute(lambda: fn(conn._conn))  # noqa: SLF001


def _lane(conn: aiosqlite.Connection, run_batch: Callable[[sqlite3.Connection, list[Job[Any]]], None]) -> Batches:
    """One connection's queue of bodies, each batch sent to its thread in one call."""
    return Batches(lambda jobs: _on_thread(conn, lambda raw: run_batch(raw, jobs)), _sqlite_failure)


def _sqlite_failure(exc: BaseException) -> str | None:
    """SQLite's error class (a full disk, a read-only file...) for /healthz."""
    if not isinstance(exc, sqlite3.Error):
        return None
    log.error("storage: a transaction batch failed: %s", exc)
    return type(exc).__name__


class Database:
    """The SQLite database (storage/postgres.py has the same surface on PostgreSQL)."""

    engine = "sqlite"

    def __init__(self, path: str | Path, read_cache_mb: int = DEFAULT_READ_CACHE_MB) -> None:
        self.path = str(path)
        self.read_cache_mb = read_cache_mb
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lane: Batches | None = None
        self._read_lane: Batches | None = None

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        self._write_lane = _lane(self._writer, _write_batch)
        try:
            await self._writer.execute("PRAGMA journal_mode = WAL")
            await self._migrate()
        except BaseException:
            # aiosqlite's worker thread is not a daemon: a connection left open
            # here (SchemaTooNew, a failed migration) keeps the process alive.
            await self._writer.close()
            self._writer = None
            self._write_lane = None
            raise
        self._reader = await self._connect() if self.path != ":memory:" else self._writer
        await self._reader.execute(f"PRAGMA cache_size = {-1024 * int(self.read_cache_mb)}")  # KiB when < 0
        self._read_lane = _lane(self._reader, _read_batch)

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
        self._read_lane = self._write_lane = None

    @property
    def reader(self) -> aiosqlite.Connection:
        """The reader connection itself; code outside `read()` is for tests only."""
        assert self._reader is not None, "Database.open() was not awaited"
        return self._reader

    async def write(self, body: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `body` as one write transaction; returns once it is durable.

        Any exception from the body rolls back the body's changes and is raised here.
        A caller cancelled after its batch started may still see its body committed
        (as with any database once COMMIT is sent).
        """
        assert self._write_lane is not None, "Database.open() was not awaited"
        return await self._write_lane.run(body)

    async def read(self, body: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `body` on the reader, seeing the latest commit in one snapshot."""
        assert self._read_lane is not None, "Database.open() was not awaited"
        return await self._read_lane.run(body)

    async def schema_version(self) -> int:
        conn = self._writer or self._reader
        assert conn is not None
        async with conn.execute("SELECT version FROM schema_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def state(self) -> str:
        """What /healthz says of storage: "ok"; "read-only" when the file or its folder
        cannot be written (WAL needs both); "error" when reads fail or the last write
        transaction failed as a whole (a full disk, an I/O error)."""
        if not await self.ping():
            return "error"
        if self.path != ":memory:":
            folder = str(Path(self.path).parent)
            if not (os.access(self.path, os.W_OK) and os.access(folder, os.W_OK)):
                return "read-only"
        if self._write_lane is not None and self._write_lane.failure is not None:
            return "error"
        return "ok"

    async def ping(self) -> bool:
        async def one(conn: Conn) -> bool:
            async with conn.execute("SELECT 1") as cur:
                return await cur.fetchone() is not None

        try:
            return await self.read(one)
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

            async def upgrade(tx: Conn, version: int = version) -> None:
                await UPGRADES[version - 1](tx)
                await tx.execute("DELETE FROM schema_version")
                await tx.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

            await self.write(upgrade)
