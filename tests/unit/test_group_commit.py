"""Database.write()/read(): bodies run in batches (group commit).

Concurrent writes share one COMMIT, each caller is answered only once its body is
durable (visible to the reader, another connection), a failing body rolls back only
itself. On SQLite the batch runs on SQLite's thread and a body that awaits anything
but its connection is refused; on PostgreSQL (the `[postgresql]` runs) a batch that
PostgreSQL aborts to keep it serializable runs again, whole.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from storage import BodyAwaitedOutside, Conn, Database, IntegrityError
from storage.postgres import PostgresDatabase


@pytest.fixture
async def db(tmp_path: Path):
    database = Database(tmp_path / "group.sqlite3")
    await database.open()
    await database.write(lambda tx: tx.execute("CREATE TABLE items (n INTEGER PRIMARY KEY)"))
    yield database
    await database.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
async def any_db(request: pytest.FixtureRequest, tmp_path: Path):
    """The same `items` table on either engine."""
    if request.param == "sqlite":
        database: Database = Database(tmp_path / "group.sqlite3")
    else:
        database = PostgresDatabase(request.getfixturevalue("postgres").new_database("group"))  # type: ignore[assignment]
    await database.open()
    await database.write(lambda tx: tx.execute("CREATE TABLE items (n INTEGER PRIMARY KEY)"))
    yield database
    await database.close()


async def rows(db: Database) -> set[int]:
    async def select(conn: Conn) -> set[int]:
        async with conn.execute("SELECT n FROM items") as cur:
            return {r[0] for r in await cur.fetchall()}

    return await db.read(select)


async def insert(db: Database, n: int, fail: bool = False) -> int:
    async def body(tx: Conn) -> int:
        await tx.execute("INSERT INTO items (n) VALUES (?)", (n,))
        if fail:
            raise ValueError(n)
        return n

    result = await db.write(body)
    # Acknowledged means committed: the reader (another connection) sees it now.
    assert n in await rows(db)
    return result


async def commits_of(db: Database) -> list[int]:
    """Count COMMITs on the writer's own sqlite3 connection (a trace callback on its thread)."""
    seen: list[int] = []
    raw = await db._writer._execute(lambda: db._writer._conn)  # type: ignore[union-attr]
    await db._writer._execute(  # type: ignore[union-attr]
        raw.set_trace_callback, lambda sql: seen.append(1) if sql == "COMMIT" else None
    )
    return seen


async def test_concurrent_writes_are_all_committed_in_fewer_commits(db: Database) -> None:
    commits = await commits_of(db)
    assert await asyncio.gather(*(insert(db, n) for n in range(50))) == list(range(50))
    assert await rows(db) == set(range(50))
    assert 1 <= len(commits) < 50


async def test_a_failing_body_rolls_back_only_itself(any_db: Database) -> None:
    results = await asyncio.gather(
        *(insert(any_db, n, fail=n % 3 == 0) for n in range(30)), return_exceptions=True
    )
    failed = {r.args[0] for r in results if isinstance(r, ValueError)}
    assert failed == {n for n in range(30) if n % 3 == 0}
    assert await rows(any_db) == {n for n in range(30) if n % 3}


async def test_a_body_failing_alone_leaves_nothing_and_the_next_works(any_db: Database) -> None:
    with pytest.raises(ValueError):
        await insert(any_db, 1, fail=True)
    assert await insert(any_db, 2) == 2
    assert await rows(any_db) == {2}


async def test_a_constraint_error_is_the_callers_and_the_batch_goes_on(any_db: Database) -> None:
    await insert(any_db, 7)
    results = await asyncio.gather(insert(any_db, 7), insert(any_db, 8), return_exceptions=True)
    assert isinstance(results[0], IntegrityError)
    assert results[1] == 8
    assert await rows(any_db) == {7, 8}


async def test_a_transaction_aborted_under_a_body_fails_the_whole_batch(db: Database) -> None:
    """When SQLite itself ends the transaction (disk full, I/O error), the bodies that ran
    before in the same batch are lost too: every caller of the batch gets the error."""

    def inserting(n: int):
        async def body(tx: Conn) -> None:
            await tx.execute("INSERT INTO items (n) VALUES (?)", (n,))
        return body

    async def aborted(tx: Conn) -> None:
        await tx.execute("INSERT INTO items (n) VALUES (2)")
        await tx.execute("ROLLBACK")  # what SQLite does itself on SQLITE_FULL or SQLITE_IOERR
        raise sqlite3.OperationalError("database or disk is full")

    # Queued in the same loop turn, the three share one batch.
    results = await asyncio.gather(
        db.write(inserting(0)), db.write(inserting(1)), db.write(aborted), return_exceptions=True
    )
    # Each caller gets SQLite's own error, not a follow-up one about the lost savepoint.
    assert [str(r) for r in results] == ["database or disk is full"] * 3, results
    assert await rows(db) == set()
    # /healthz says so until a write transaction succeeds again.
    assert await db.state() == "error"
    assert await insert(db, 5) == 5
    assert await db.state() == "ok"


async def test_a_body_awaiting_something_else_is_refused_and_rolled_back(db: Database) -> None:
    async def sleepy(tx: Conn) -> None:
        await tx.execute("INSERT INTO items (n) VALUES (1)")
        await asyncio.sleep(0)

    with pytest.raises(BodyAwaitedOutside):
        await db.write(sleepy)
    assert await rows(db) == set()
    assert await insert(db, 2) == 2


async def test_a_cancelled_caller_does_not_block_the_others(any_db: Database) -> None:
    waiters = [asyncio.create_task(insert(any_db, n)) for n in range(5)]
    waiters[2].cancel()
    done = await asyncio.gather(*waiters, return_exceptions=True)
    assert isinstance(done[2], asyncio.CancelledError)
    assert {0, 1, 3, 4} <= await rows(any_db)
    assert await insert(any_db, 9) == 9


async def test_a_read_body_sees_one_snapshot(db: Database) -> None:
    await insert(db, 1)

    async def twice(conn: Conn) -> tuple[int, int]:
        async with conn.execute("SELECT count(*) FROM items") as cur:
            before = (await cur.fetchone())[0]
        # A write committed by another connection in between is not seen by this body.
        other = sqlite3.connect(db.path, isolation_level=None)
        other.execute("INSERT INTO items (n) VALUES (2)")
        other.close()
        async with conn.execute("SELECT count(*) FROM items") as cur:
            after = (await cur.fetchone())[0]
        return before, after

    assert await db.read(twice) == (1, 1)
    assert await rows(db) == {1, 2}


@pytest.mark.postgresql
async def test_postgres_concurrent_writes_share_transactions(postgres) -> None:
    db = PostgresDatabase(postgres.new_database("group_share"))
    await db.open()
    try:
        await db.write(lambda tx: tx.execute("CREATE TABLE items (n INTEGER PRIMARY KEY)"))

        async def body(tx: Conn, n: int) -> int:
            await tx.execute("INSERT INTO items (n) VALUES (?)", (n,))
            async with tx.execute("SELECT txid_current()") as cur:
                return (await cur.fetchone())[0]

        txids = await asyncio.gather(*(db.write(lambda tx, n=n: body(tx, n)) for n in range(50)))
        assert await rows(db) == set(range(50))
        assert 1 <= len(set(txids)) < 50  # fewer transactions (COMMITs) than writes
    finally:
        await db.close()


@pytest.mark.postgresql
async def test_postgres_a_batch_aborted_for_serializability_runs_again_whole(postgres) -> None:
    """Another connection's conflicting transaction makes PostgreSQL abort the batch
    (a serialization failure): every body of it runs again, and each caller gets its
    own result once, with nothing applied twice."""
    url = postgres.new_database("group_retry")
    db = PostgresDatabase(url)
    await db.open()
    import asyncpg

    other = await asyncpg.connect(url)
    try:
        await db.write(lambda tx: tx.execute("CREATE TABLE items (n INTEGER PRIMARY KEY)"))
        await db.write(lambda tx: tx.execute("CREATE TABLE counter (v INTEGER NOT NULL)"))
        await db.write(lambda tx: tx.execute("INSERT INTO counter (v) VALUES (0)"))
        runs: list[int] = []
        gate = asyncio.Event()
        loop = asyncio.get_running_loop()

        async def conflicting(tx: Conn) -> int:
            runs.append(1)
            async with tx.execute("SELECT v FROM counter") as cur:
                value = (await cur.fetchone())[0]
            if len(runs) == 1:
                # While this transaction holds its snapshot, another one changes the
                # row and commits: this UPDATE then fails to serialize. (The body runs
                # on the writer's thread; `other` belongs to the test's loop.)
                asyncio.run_coroutine_threadsafe(other.execute("UPDATE counter SET v = v + 100"), loop).result(10)
                gate.set()
            await tx.execute("UPDATE counter SET v = ?", (value + 1,))
            return value + 1

        async def plain(tx: Conn, n: int) -> int:
            await tx.execute("INSERT INTO items (n) VALUES (?)", (n,))
            return n

        results = await asyncio.gather(
            db.write(lambda tx: plain(tx, 1)), db.write(conflicting), db.write(lambda tx: plain(tx, 2)),
        )
        assert gate.is_set() and len(runs) == 2
        assert results == [1, 101, 2]
        assert db.retried >= 1
        assert await rows(db) == {1, 2}
        assert await other.fetchval("SELECT v FROM counter") == 101
    finally:
        await other.close()
        await db.close()


@pytest.mark.postgresql
async def test_postgres_a_batch_with_a_failing_body_runs_again_with_savepoints(postgres) -> None:
    """A batch first runs without savepoints; when a body fails, it is rolled back and
    run again with a savepoint per body (the failing one rolls back only itself), and
    so is the next batch; a batch without a failure turns savepoints off again."""
    db = PostgresDatabase(postgres.new_database("group_rerun"))
    await db.open()
    try:
        await db.write(lambda tx: tx.execute("CREATE TABLE items (n INTEGER PRIMARY KEY)"))
        runs: list[int] = []

        async def counted(tx: Conn, n: int, fail: bool = False) -> int:
            runs.append(n)
            await tx.execute("INSERT INTO items (n) VALUES (?)", (n,))
            if fail:
                raise ValueError(n)
            return n

        def batch(*bodies):  # queued in one loop turn: one batch
            return asyncio.gather(*(db.write(b) for b in bodies), return_exceptions=True)

        results = await batch(lambda tx: counted(tx, 1), lambda tx: counted(tx, 2, fail=True),
                              lambda tx: counted(tx, 3))
        assert results[0] == 1 and isinstance(results[1], ValueError) and results[2] == 3
        assert runs == [1, 2, 1, 2, 3]  # stopped at the failure, then all of it guarded
        assert db.rerun == 1 and await rows(db) == {1, 3}
        # The next batch runs with savepoints at once: no failure, so no rerun either.
        runs.clear()
        assert await batch(lambda tx: counted(tx, 4), lambda tx: counted(tx, 5)) == [4, 5]
        assert runs == [4, 5] and db.rerun == 1
        # ... and the one after runs without: a failure makes it run again.
        runs.clear()
        results = await batch(lambda tx: counted(tx, 6), lambda tx: counted(tx, 1))  # 1: duplicate key
        assert results[0] == 6 and isinstance(results[1], IntegrityError)
        assert runs == [6, 1, 6, 1] and db.rerun == 2
        assert await rows(db) == {1, 3, 4, 5, 6}
    finally:
        await db.close()


@pytest.mark.postgresql
async def test_postgres_a_read_body_of_several_statements_sees_one_snapshot(postgres) -> None:
    """A read body's first SELECT runs alone; at its second statement the body is run
    again in one snapshot (and bodies of the same code go there at once)."""
    import asyncpg

    url = postgres.new_database("group_reads")
    db = PostgresDatabase(url)
    await db.open()
    other = await asyncpg.connect(url)
    try:
        await db.write(lambda tx: tx.execute("CREATE TABLE items (n INTEGER PRIMARY KEY)"))
        runs: list[int] = []

        async def twice(conn: Conn) -> tuple[int, int]:
            runs.append(1)
            async with conn.execute("SELECT count(*) FROM items") as cur:
                before = (await cur.fetchone())[0]
            # Committed by another connection between the two statements: not seen.
            await other.execute("INSERT INTO items (n) VALUES ($1)", len(runs))
            async with conn.execute("SELECT count(*) FROM items") as cur:
                after = (await cur.fetchone())[0]
            return before, after

        assert await db.read(twice) == (1, 1)  # the first run's insert is seen by the second
        assert len(runs) == 2
        assert await db.read(twice) == (2, 2)  # straight into a snapshot this time
        assert len(runs) == 3
        assert await rows(db) == {1, 2, 3}
    finally:
        await other.close()
        await db.close()


@pytest.mark.postgresql
async def test_postgres_a_read_body_cannot_write(postgres) -> None:
    import asyncpg

    db = PostgresDatabase(postgres.new_database("group_read_only"))
    await db.open()
    try:
        await db.write(lambda tx: tx.execute("CREATE TABLE items (n INTEGER PRIMARY KEY)"))
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await db.read(lambda conn: conn.execute("INSERT INTO items (n) VALUES (1)"))
        assert await rows(db) == set()
    finally:
        await db.close()


@pytest.mark.postgresql
async def test_postgres_writes_run_off_the_service_loop_and_survive_a_lost_connection(postgres) -> None:
    """Write transactions run on the writer's own thread and connection; when that
    connection is lost, a write fails at most (storage says "error"), the next one
    connects again and works."""
    import threading

    import asyncpg

    url = postgres.new_database("group_writer")
    db = PostgresDatabase(url)
    await db.open()
    admin = await asyncpg.connect(url)
    try:
        async def where(tx: Conn) -> tuple[str, int]:
            async with tx.execute("SELECT pg_backend_pid()") as cur:
                return threading.current_thread().name, (await cur.fetchone())[0]

        thread, pid = await db.write(where)
        assert thread == "storage-writer" and thread != threading.current_thread().name
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        try:
            # Fails, unless the driver saw the connection close first (then: a new one).
            await db.write(lambda tx: tx.execute("SELECT 1"))
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.InternalClientError):
            assert await db.state() == "error"
        _, again = await db.write(where)
        assert again != pid and await db.state() == "ok"
    finally:
        await admin.close()
        await db.close()


@pytest.mark.postgresql
async def test_postgres_a_batch_sends_its_outbox_rows_together_in_order(postgres, monkeypatch) -> None:
    """In a batch without savepoints the outbox rows are held back and sent in one
    executemany before COMMIT, in the bodies' order; a statement naming the outbox
    (here a body counting it) sends the rows held so far first, so it sees them."""
    from storage import outbox, postgres as pg

    db = PostgresDatabase(postgres.new_database("group_outbox"))
    await db.open()
    sent: list[int] = []
    real_many = pg._many

    async def counting(raw, sql, parameters):
        rows = [tuple(p) for p in parameters]
        if "INSERT INTO outbox" in sql:
            sent.append(len(rows))
        return await real_many(raw, sql, rows)

    monkeypatch.setattr(pg, "_many", counting)
    try:
        async def add(tx: Conn, *names: str) -> None:
            await outbox.add_many(tx, [("message", f"{n}@example.test", {"n": n}) for n in names], 1)

        async def add_then_count(tx: Conn) -> int:
            await add(tx, "c")
            async with tx.execute("SELECT count(*) FROM outbox") as cur:
                return (await cur.fetchone())[0]

        results = await asyncio.gather(
            db.write(lambda tx: add(tx, "a", "b")), db.write(add_then_count),
            db.write(lambda tx: add(tx, "d")), db.write(lambda tx: add(tx, "e")),
        )
        assert results[1] == 3  # its own row and the first body's, sent before the count
        assert sent == [3, 2]  # a, b, c before the count; d, e together before COMMIT
        order = await db.read(lambda conn: outbox.next_batch(conn, 0, 10))
        assert [r.payload["n"] for r in order] == ["a", "b", "c", "d", "e"]
    finally:
        await db.close()
