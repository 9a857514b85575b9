"""Group commit in Database.transaction(): concurrent transactions share one COMMIT,
each member is durable (visible to the reader) when its block exits, and a failing
member rolls back only itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from storage import Database


@pytest.fixture
async def db(tmp_path: Path):
    database = Database(tmp_path / "group.sqlite3")
    await database.open()
    async with database.transaction() as tx:
        await tx.execute("CREATE TABLE items (n INTEGER PRIMARY KEY)")
    yield database
    await database.close()


async def rows(db: Database) -> set[int]:
    async with db.read() as conn, conn.execute("SELECT n FROM items") as cur:
        return {r[0] for r in await cur.fetchall()}


async def insert(db: Database, n: int, fail: bool = False) -> int:
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO items (n) VALUES (?)", (n,))
        if fail:
            raise ValueError(n)
    # Acknowledged means committed: the reader (another connection) sees it now.
    assert n in await rows(db)
    return n


async def test_concurrent_transactions_are_all_committed_in_fewer_commits(db: Database) -> None:
    commits = 0
    execute = db._writer.execute  # type: ignore[union-attr]

    async def counting(sql, *args):
        nonlocal commits
        commits += sql == "COMMIT"
        return await execute(sql, *args)

    db._writer.execute = counting  # type: ignore[method-assign,union-attr]
    assert await asyncio.gather(*(insert(db, n) for n in range(50))) == list(range(50))
    assert await rows(db) == set(range(50))
    assert 1 <= commits < 50


async def test_a_failing_member_rolls_back_only_itself(db: Database) -> None:
    results = await asyncio.gather(
        *(insert(db, n, fail=n % 3 == 0) for n in range(30)), return_exceptions=True
    )
    failed = {r.args[0] for r in results if isinstance(r, ValueError)}
    assert failed == {n for n in range(30) if n % 3 == 0}
    assert await rows(db) == {n for n in range(30) if n % 3}


async def test_the_first_member_failing_alone_leaves_nothing_and_the_next_works(db: Database) -> None:
    with pytest.raises(ValueError):
        await insert(db, 1, fail=True)
    assert await insert(db, 2) == 2
    assert await rows(db) == {2}


async def test_a_cancelled_waiter_does_not_leave_the_group_open(db: Database) -> None:
    inside = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO items (n) VALUES (1)")
            inside.set()
            await release.wait()

    first = asyncio.create_task(holder())
    await inside.wait()
    waiter = asyncio.create_task(insert(db, 2))
    await asyncio.sleep(0)  # the waiter queues for the lock: the holder will leave the group open
    release.set()
    await asyncio.sleep(0)
    waiter.cancel()
    # The holder returns only once its row is committed, even though the waiter it
    # left the group open for never ran.
    await asyncio.wait_for(first, 5)
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await rows(db) == {1}
    assert await insert(db, 3) == 3
