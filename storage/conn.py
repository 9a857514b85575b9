"""The connection a storage body sees: sqlite3 calls behind aiosqlite's async surface.

Bodies (see storage.db) and repository functions are written against this surface
(`await conn.execute(...)`, `async with conn.execute(...) as cur`, `await
cur.fetchone()`), so they take either a `Conn` (inside `Database.write()`/`read()`,
on SQLite's own thread, where every await returns at once) or an aiosqlite
connection (tests, one-off scripts).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class BodyAwaitedOutside(RuntimeError):
    """A storage body awaited something other than its connection (a programming error)."""


class Cursor:
    """A finished statement; the async methods return at once (the work is done)."""

    __slots__ = ("_cur",)

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    async def fetchone(self) -> sqlite3.Row | None:
        return self._cur.fetchone()

    async def fetchall(self) -> list[sqlite3.Row]:
        return self._cur.fetchall()

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cur.close()

    def __await__(self):  # `cur = await conn.execute(...)`
        return self._itself().__await__()

    async def _itself(self) -> Cursor:
        return self


class Conn:
    """What a body gets: runs each statement at once, on the connection's own thread.

    Offers the part of aiosqlite's Connection the repositories use, so repository
    functions take either (tests also call them with the reader's aiosqlite connection).
    """

    __slots__ = ("_raw",)
    dialect = "sqlite"  # storage.dialect.SQLITE; PostgreSQL's connection says "postgresql"

    def __init__(self, raw: sqlite3.Connection) -> None:
        self._raw = raw

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        return Cursor(self._raw.execute(sql, parameters))

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> Cursor:
        return Cursor(self._raw.executemany(sql, parameters))


def run_body(body: Callable[[Conn], Awaitable[T]], conn: Conn) -> T:
    """Run a body to completion without an event loop: it never suspends.

    Any awaitable will do: an `async def` body's coroutine, or what a lambda
    returns (a repository call's coroutine, or `conn.execute(...)` itself).
    """
    steps = body(conn).__await__()
    try:
        steps.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    steps.close()  # type: ignore[attr-defined]
    name = getattr(body, "__qualname__", repr(body))
    raise BodyAwaitedOutside(f"{name} awaited something other than its connection")
