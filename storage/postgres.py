"""The PostgreSQL database (asyncpg and a pool), with the surface of storage.db.

Bodies and repository functions are the same as on SQLite (they take a connection
with `execute`, `executemany`, cursors with `fetchone`/`fetchall`/`rowcount`);
each statement is translated once by storage.dialect. What differs, and why:

- A write body runs in one SERIALIZABLE transaction: the actions were written against
  SQLite's single writer (every transaction sees the ones before it whole), and
  serializable is the isolation that keeps that promise with several writers (several
  instances). A transaction PostgreSQL aborts to keep it (a serialization failure, a
  deadlock) is run again, up to `WRITE_ATTEMPTS` times; a body only touches its
  connection, so running it again is safe. The accept-vs-cancel race stays one-winner.
- Within one instance, write transactions run one at a time (as on SQLite), on a
  connection of their own driven by a thread of their own (its own event loop), reads
  in parallel on the pool (`pool_size` - 1 connections) on the service's loop. A
  write transaction is a chain of round trips, one after the other; on the service's
  loop each step waited for the loop's next turn (every HTTP request and stanza
  handled meanwhile), so that a busy loop made the one writer slow for everybody. On
  its own loop, a step waits only for the server. The bodies run there too: like
  SQLite's (on SQLite's thread), they only touch their connection. Measured with 32 concurrent create+accept callers on a fresh
  database (2 vCPUs): one writer, 736 actions/s and no retry; ten concurrent
  serializable writers, 233-332 actions/s with about 2.5 retries per action
  (serializable's predicate locks on small tables' index pages make most pairs of
  concurrent transactions conflict). Several instances still write concurrently, and
  serializable keeps them correct.
- Group commit, as on SQLite: bodies that queue while a transaction runs go together
  in the next one, one COMMIT (one WAL flush) for all; each caller is answered once
  that COMMIT is durable. One instance's writes are one chain of round trips to the
  server, so a batch first runs without savepoints (two round trips fewer per body):
  when a body fails, the transaction is rolled back and the batch runs again with each
  body in its own savepoint (one failing rolls back only itself), and so do the
  following batches until one runs without a failing body. The outcome is the same
  either way: a failing body changes nothing, the others are committed. In a batch
  without savepoints, the outbox rows the bodies insert are held back and sent in one
  `executemany` before COMMIT (or before a statement that names the outbox): one
  round trip for the batch instead of one per body, in the same order. When
  PostgreSQL aborts a batch to keep it serializable, the whole batch runs again
  (every body is re-run from the start). `retried` and `rerun` count both.
- A read body's first statement, when it is a SELECT, runs alone (one statement is
  one snapshot: one round trip instead of BEGIN, SELECT, COMMIT). A body that runs a
  second statement is stopped there and run again from the start in one REPEATABLE
  READ, READ ONLY transaction (one snapshot for all its statements); bodies of the
  same code go straight there afterwards. Reading twice is harmless: read bodies
  only read.
- Wake-ups across instances: committing a row into `outbox` or `mail_outbox`
  notifies the channel of the same name (triggers of migration 6, so the NOTIFY is
  part of the committing transaction and is delivered only if it commits).
  `listen()` keeps one connection listening and calls back on each notification.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import asyncpg

from component.worker import stop_task
from storage import dialect
from storage.batches import Batches, Job
from storage.db import SchemaTooNew
from storage.migrations import UPGRADES

log = logging.getLogger(__name__)

T = TypeVar("T")

WRITE_ATTEMPTS = 20

# Serialises schema upgrades of instances starting together (any constant of our own).
MIGRATION_LOCK = 0x70726573  # "pres"
_RETRYABLE = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)
# The database went away under a transaction: /healthz says "error" until a write works.
# (InternalClientError: the driver's protocol state broke, as when the server ended the
# session between two statements; the connection is as good as lost.)
_CONNECTION_LOST = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.InternalClientError)
# Failures of the batch's transaction, not of one body: the batch is run again
# (_RETRYABLE) or fails as a whole.
_BATCH_FAILS = (*_RETRYABLE, *_CONNECTION_LOST)


class Cursor:
    """A statement, run when first awaited (`await`, `async with`, a fetch)."""

    __slots__ = ("_run", "_rows", "rowcount")

    def __init__(self, run: Callable[[], Awaitable[tuple[list[Any], int]]]) -> None:
        self._run: Callable[[], Awaitable[tuple[list[Any], int]]] | None = run
        self._rows: list[Any] = []
        self.rowcount = -1

    async def _done(self) -> Cursor:
        if self._run is not None:
            run, self._run = self._run, None
            self._rows, self.rowcount = await run()
        return self

    async def fetchone(self) -> Any:
        await self._done()
        return self._rows.pop(0) if self._rows else None

    async def fetchall(self) -> list[Any]:
        await self._done()
        rows, self._rows = self._rows, []
        return rows

    async def __aenter__(self) -> Cursor:
        return await self._done()

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __await__(self):
        return self._done().__await__()


async def _statement(raw: Any, sql: str, parameters: Sequence[Any]) -> tuple[list[Any], int]:
    stmt = dialect.postgres(sql)
    if stmt.returns_rows:
        rows = await raw.fetch(stmt.sql, *parameters)
        return rows, len(rows)
    status = await raw.execute(stmt.sql, *parameters)
    return [], dialect.rowcount(status)


async def _many(raw: Any, sql: str, parameters: Iterable[Sequence[Any]]) -> tuple[list[Any], int]:
    rows = [tuple(p) for p in parameters]
    if rows:
        await raw.executemany(dialect.postgres(sql).sql, rows)
    return [], -1


class PgConn:
    """What a body gets on PostgreSQL: one connection, inside the body's transaction.

    With `defer` (a batch run without savepoints, see the module's doc), rows inserted
    into the outbox with `executemany` are held back and sent together, in order, by
    `flush()`: before any later statement that names the outbox, and before COMMIT.
    """

    __slots__ = ("_raw", "_deferred")
    dialect = dialect.POSTGRESQL

    def __init__(self, raw: asyncpg.Connection, defer: bool = False) -> None:
        self._raw = raw
        self._deferred: list[tuple[str, list[tuple[Any, ...]]]] | None = [] if defer else None

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        return Cursor(lambda: self._after_deferred(sql, lambda: _statement(self._raw, sql, parameters)))

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> Cursor:
        deferred = self._deferred
        if deferred is not None and _DEFERRED_INSERT.match(sql):
            async def hold() -> tuple[list[Any], int]:
                rows = [tuple(p) for p in parameters]
                if rows:
                    deferred.append((sql, rows))
                return [], -1

            return Cursor(hold)
        return Cursor(lambda: self._after_deferred(sql, lambda: _many(self._raw, sql, parameters)))

    async def _after_deferred(
        self, sql: str, run: Callable[[], Awaitable[tuple[list[Any], int]]]
    ) -> tuple[list[Any], int]:
        if self._deferred and _NAMES_DEFERRED.search(sql):
            await self.flush()
        return await run()

    async def flush(self) -> None:
        """Send the held-back rows, in order: one executemany per run of one statement."""
        deferred = self._deferred
        while deferred:
            sql = deferred[0][0]
            rows: list[tuple[Any, ...]] = []
            while deferred and deferred[0][0] == sql:
                rows.extend(deferred.pop(0)[1])
            await _many(self._raw, sql, rows)


# The rows a batch may hold back (PgConn's `defer`): plain inserts into the outbox, an
# append-only queue with no foreign keys and no trigger reading other tables, that no
# write body reads but through a statement naming it (which flushes them first).
_DEFERRED_INSERT = re.compile(r"\s*INSERT\s+INTO\s+outbox\s*\((?:(?!RETURNING|ON\s+CONFLICT).)*$", re.I | re.S)
_NAMES_DEFERRED = re.compile(r"\boutbox\b", re.I)


class _FirstStatement:
    """What a read body gets first (see the module's doc): its first statement runs
    alone if it is a SELECT; any other statement raises _NeedsSnapshot."""

    __slots__ = ("_raw", "_ran")
    dialect = dialect.POSTGRESQL

    def __init__(self, raw: asyncpg.Connection) -> None:
        self._raw = raw
        self._ran = False

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        async def run() -> tuple[list[Any], int]:
            if self._ran or not _SELECT.match(sql):
                raise _NeedsSnapshot()
            self._ran = True
            return await _statement(self._raw, sql, parameters)

        return Cursor(run)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> Cursor:
        async def run() -> tuple[list[Any], int]:
            raise _NeedsSnapshot()

        return Cursor(run)


class _NeedsSnapshot(BaseException):
    """A read body runs more than its first SELECT: it needs a transaction. A
    BaseException, so that no body's `except Exception` takes it for its own."""


_SELECT = re.compile(r"\s*SELECT\b", re.I)


class PoolConn:
    """Each statement on a connection of the pool, committed on its own (tests, scripts)."""

    __slots__ = ("_pool",)
    dialect = dialect.POSTGRESQL

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        async def run() -> tuple[list[Any], int]:
            async with self._pool.acquire() as raw:
                return await _statement(raw, sql, parameters)

        return Cursor(run)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> Cursor:
        async def run() -> tuple[list[Any], int]:
            async with self._pool.acquire() as raw:
                async with raw.transaction():
                    return await _many(raw, sql, parameters)

        return Cursor(run)


class PostgresDatabase:
    """The same surface as storage.db.Database, on a PostgreSQL database."""

    engine = dialect.POSTGRESQL

    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = url
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._writer: _Writer | None = None
        self.retried = 0  # write transactions run again after PostgreSQL aborted them
        self.rerun = 0  # batches run again with savepoints because a body failed
        # After a batch with a failing body, batches run with savepoints until one has none.
        self._savepoints = False
        # Read bodies (their code) that run more than one statement: a snapshot at once.
        self._snapshot_reads: set[Any] = set()
        # One write transaction at a time per instance, as on SQLite, taking every body
        # queued meanwhile (group commit, see the module's doc).
        self._writes = Batches(self._commit, _connection_failure)

    @property
    def path(self) -> str:
        """Where the database is, for logs: the URL without its password."""
        return redact(self.url)

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "PostgresDatabase.open() was not awaited"
        return self._pool

    async def open(self) -> None:
        # asyncpg prepares each statement once per connection and caches it: a
        # repository's statement costs one round trip after its first use.
        # No reset query when a connection goes back to the pool (asyncpg's default runs
        # `RESET ALL; UNLISTEN *; ...`, one more round trip each time): the service never
        # changes a pooled connection's session (LISTEN and the leadership lock have
        # connections of their own), and asyncpg still rolls back an open transaction.
        # Of `pool_size` connections, one is the writer's (see the module's doc).
        self._pool = await asyncpg.create_pool(
            self.url, min_size=1, max_size=max(1, self.pool_size - 1), reset=_keep_session,
        )
        try:
            await self._migrate()
            self._writer = _Writer(self.url)
            await self._writer.run(self._writer.connection)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                async with asyncio.timeout(10):
                    await pool.close()
            except (TimeoutError, Exception):  # noqa: BLE001 - closing: nothing left to tell
                pool.terminate()

    @property
    def reader(self) -> PoolConn:
        """Statements outside `read()`, each on its own; for tests only."""
        return PoolConn(self.pool)

    async def write(self, body: Callable[[PgConn], Awaitable[T]]) -> T:
        """Run `body` in a serializable transaction (shared with the bodies queued
        beside it); returns once it is committed. Any exception from the body rolls back
        the body's changes and is raised here."""
        return await self._writes.run(body)

    @property
    def failure(self) -> str | None:
        """Why the last write failed as a whole, for want of the database (/healthz)."""
        return self._writes.failure

    async def _commit(self, jobs: list[Job[Any]]) -> None:
        """One serializable transaction for `jobs`, on the writer's thread."""
        assert self._writer is not None, "PostgresDatabase.open() was not awaited"
        writer = self._writer
        await writer.run(lambda: self._commit_there(writer, jobs))

    async def _commit_there(self, writer: _Writer, jobs: list[Job[Any]]) -> None:
        """On the writer's loop: one serializable transaction for `jobs`, run again
        (whole) when PostgreSQL aborts it to keep it serializable. Sets each job's
        outcome; raises only when the transaction as a whole fails."""
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                raw = await writer.connection()
                try:
                    if len(jobs) == 1:
                        await _run_alone(raw, jobs[0])
                    elif self._savepoints or not await _run_unguarded(raw, jobs):
                        if not self._savepoints:
                            self.rerun += 1
                        self._savepoints = await _run_together(raw, jobs)
                except _RETRYABLE:
                    raise  # rolled back: the connection is as good as before
                except BaseException:
                    # Lost, broken, or left inside a transaction (cancelled): a new one next time.
                    writer.drop()
                    raise
                return
            except _RETRYABLE:
                if attempt == WRITE_ATTEMPTS:
                    raise
                self.retried += 1
                # Back off a little, more with each attempt, so that contenders spread.
                await asyncio.sleep(0.001 * attempt)
        raise AssertionError("unreachable")

    async def read(self, body: Callable[[PgConn], Awaitable[T]]) -> T:
        """Run `body` in one read-only snapshot (its first SELECT alone, when that is
        all it runs: see the module's doc)."""
        code = getattr(body, "__code__", None)
        async with self.pool.acquire() as raw:
            if code not in self._snapshot_reads:
                try:
                    return await body(_FirstStatement(raw))  # type: ignore[arg-type]
                except _NeedsSnapshot:
                    if code is not None:
                        self._snapshot_reads.add(code)
            async with raw.transaction(isolation="repeatable_read", readonly=True):
                return await body(PgConn(raw))

    async def schema_version(self) -> int:
        async with self.pool.acquire() as raw:
            return await _schema_version(raw)

    async def state(self) -> str:
        """What /healthz says of storage: "ok", or "error" when the database cannot be
        read or the last write failed for want of the database."""
        if not await self.ping():
            return "error"
        return "error" if self.failure is not None else "ok"

    async def ping(self) -> bool:
        try:
            async with self.pool.acquire(timeout=5) as raw:
                return await raw.fetchval("SELECT 1") == 1
        except Exception:  # noqa: BLE001 - health check reports, never raises
            log.exception("storage health check failed")
            return False

    async def listen(self, channels: Iterable[str], on_notify: Callable[[str], None]) -> Listener:
        """Call `on_notify(channel)` for each notification on `channels`, from now on;
        the listening connection comes back by itself when it is lost."""
        listener = Listener(self.url, tuple(channels), on_notify)
        await listener.start()
        return listener

    async def _migrate(self) -> None:
        async with self.pool.acquire() as raw:
            async with raw.transaction():
                # Instances starting together: one upgrades, the others wait and see it done.
                await raw.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                await raw.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            current = await _schema_version(raw)
            latest = len(UPGRADES)
            if current > latest:
                raise SchemaTooNew(
                    f"database {self.path} has schema version {current}, this service knows up to {latest}"
                )
            for version in range(current + 1, latest + 1):
                async with raw.transaction():
                    await raw.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                    if await _schema_version(raw) >= version:
                        continue  # another instance did it meanwhile
                    log.info("storage: migrating %s to schema version %d", self.path, version)
                    await UPGRADES[version - 1](PgConn(raw))
                    await raw.execute("DELETE FROM schema_version")
                    await raw.execute("INSERT INTO schema_version (version) VALUES ($1)", version)


class _Writer:
    """A thread running an event loop of its own, and the one connection (made on that
    loop) that write transactions run on; `run(fn)` runs `fn()` there."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="storage-writer", daemon=True)
        self._thread.start()
        self._conn: asyncpg.Connection | None = None  # used on the writer's loop only

    async def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        """From the service's loop: `fn()` on the writer's loop; cancelling the caller
        cancels it there."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_call(fn), self._loop))

    async def connection(self) -> asyncpg.Connection:
        """On the writer's loop: its connection, made again after `drop()`."""
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            self._conn = await asyncpg.connect(self.url)
        return self._conn

    def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def close(self) -> None:
        async def close_connection() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    async with asyncio.timeout(10):
                        await conn.close()
                except (TimeoutError, Exception):  # noqa: BLE001 - closing: nothing left to tell
                    conn.terminate()

        try:
            await self.run(close_connection)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 10)
            if not self._thread.is_alive():
                self._loop.close()


async def _call(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


async def _keep_session(_conn: asyncpg.Connection) -> None:
    return None


def _connection_failure(exc: BaseException) -> str | None:
    """The database went away under a write: /healthz says "error" until one works."""
    if not isinstance(exc, _CONNECTION_LOST):
        return None
    log.error("storage: a write transaction failed: %s", type(exc).__name__)
    return type(exc).__name__


async def _run_alone(raw: asyncpg.Connection, job: Job[Any]) -> None:
    """One body, its own transaction: its failure rolls the transaction back."""
    try:
        async with raw.transaction(isolation="serializable"):
            job.outcome = (True, await job.body(PgConn(raw)))
    except _BATCH_FAILS:
        raise
    except Exception as exc:  # noqa: BLE001 - the body's own failure, for its caller
        job.outcome = (False, exc)


class _BodyFailed(Exception):
    """A body failed in a batch run without savepoints: roll back, run it with them."""


async def _run_unguarded(raw: asyncpg.Connection, jobs: list[Job[Any]]) -> bool:
    """Several bodies, one transaction, no savepoints, the outbox rows of all sent
    together before COMMIT: True once committed; False, with nothing committed, as soon
    as a body (or the held-back rows) fails: the batch must run again with savepoints,
    and the outcomes set here are then replaced."""
    conn = PgConn(raw, defer=True)
    try:
        async with raw.transaction(isolation="serializable"):
            for job in jobs:
                try:
                    job.outcome = (True, await job.body(conn))
                except _BATCH_FAILS:
                    raise
                except Exception as exc:  # noqa: BLE001 - the body's own failure: run it guarded
                    raise _BodyFailed() from exc
            try:
                await conn.flush()
            except _BATCH_FAILS:
                raise
            except Exception as exc:  # noqa: BLE001 - whose rows? Run it guarded to tell
                raise _BodyFailed() from exc
    except _BodyFailed:
        return False
    return True


async def _run_together(raw: asyncpg.Connection, jobs: list[Job[Any]]) -> bool:
    """Several bodies, one transaction, a savepoint each: a body's failure rolls back
    only its own changes (PostgreSQL accepts more statements after ROLLBACK TO).
    Returns whether a body failed."""
    conn = PgConn(raw)
    failed = False
    async with raw.transaction(isolation="serializable"):
        for job in jobs:
            await raw.execute("SAVEPOINT body")
            try:
                result = await job.body(conn)
            except _BATCH_FAILS:
                raise
            except Exception as exc:  # noqa: BLE001 - the body's own failure, for its caller
                await raw.execute("ROLLBACK TO SAVEPOINT body; RELEASE SAVEPOINT body")
                job.outcome = (False, exc)
                failed = True
            else:
                await raw.execute("RELEASE SAVEPOINT body")
                job.outcome = (True, result)
    return failed


async def _schema_version(raw: asyncpg.Connection) -> int:
    value = await raw.fetchval("SELECT version FROM schema_version")
    return int(value) if value is not None else 0


class Listener:
    """One connection LISTENing on some channels; reconnects with a short backoff."""

    def __init__(self, url: str, channels: tuple[str, ...], on_notify: Callable[[str], None]) -> None:
        self.url = url
        self.channels = channels
        self.on_notify = on_notify
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="storage-listener")
        try:
            async with asyncio.timeout(10):
                await asyncio.shield(self._ready.wait())
        except TimeoutError:
            log.warning("storage: LISTEN not set up yet; the periodic poll covers meanwhile")

    def _notified(self, _conn: object, _pid: int, channel: str, _payload: str) -> None:
        self.on_notify(channel)

    async def _run(self) -> None:
        delay = 0.2
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.url)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c: lost.set())
                for channel in self.channels:
                    await conn.add_listener(channel, self._notified)
                self._ready.set()
                delay = 0.2
                # Rows committed while we were not listening: one wake-up covers them.
                for channel in self.channels:
                    self.on_notify(channel)
                while not lost.is_set():
                    try:
                        async with asyncio.timeout(5):
                            await lost.wait()
                    except TimeoutError:
                        # A half-open TCP connection tells nothing: ask.
                        async with asyncio.timeout(5):
                            await conn.fetchval("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database is away: try again
                log.warning("storage: notification listener lost (%s); again in %.1f s",
                            type(exc).__name__, delay)
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*", re.I)


def redact(url: str) -> str:
    """The URL with its password replaced, for logs: in the user part
    (`user:pw@host`) and as a query parameter (`?password=pw`), both of which
    libpq-style URLs (and asyncpg) accept."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if at and ":" in creds:
        rest = f"{creds.split(':', 1)[0]}:***@{host}"
    return f"{scheme}{sep}{_QUERY_PASSWORD.sub(lambda m: m.group(1) + '***', rest)}"
