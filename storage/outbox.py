"""The transactional outbox: notifications committed with the state change they announce."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from storage import dead_letters
from storage.conn import Conn


@dataclass(frozen=True)
class OutboxRow:
    id: int
    kind: str
    recipient: str
    payload: dict[str, Any]
    attempts: int = 0
    next_try_at: int = 0  # ms; not before
    suspect: bool = False  # in flight when a stream was lost: sent alone next time
    created_at: int = 0


_SELECT = "SELECT id, kind, recipient, payload, attempts, next_try_at, suspect, created_at FROM outbox"


def _row(r) -> OutboxRow:
    return OutboxRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], bool(r[6]), r[7])


async def add(
    conn: Conn, kind: str, recipient: str, payload: dict[str, Any], now_ms: int
) -> None:
    await add_many(conn, [(kind, recipient, payload)], now_ms)


async def add_many(
    conn: Conn, rows: list[tuple[str, str, dict[str, Any]]], now_ms: int
) -> None:
    """Several rows in one call (one trip to SQLite's thread), in order."""
    if rows:
        await conn.executemany(
            "INSERT INTO outbox (kind, recipient, payload, created_at) VALUES (?, ?, ?, ?)",
            [
                (kind, recipient, dead_letters.encode_payload(payload), now_ms)
                for kind, recipient, payload in rows
            ],
        )


async def next_batch(
    conn: Conn, after_id: int, limit: int, roster: bool = True
) -> list[OutboxRow]:
    """The oldest rows after `after_id`, in commit order; without `roster`, roster rows
    are left out (they wait in the table while the server grants no roster access).
    Rows waiting for a retry are included: the dispatcher keeps the order behind them."""
    sql = _SELECT + " WHERE id > ?"
    if not roster:
        sql += " AND kind <> 'roster'"
    async with conn.execute(sql + " ORDER BY id LIMIT ?", (after_id, limit)) as cur:
        rows = await cur.fetchall()
    return [_row(r) for r in rows]


async def roster_contacts_queued(conn: Conn, owner: str) -> set[str]:
    """Contacts whose roster changes for `owner` are still queued (not yet applied)."""
    async with conn.execute(
        "SELECT payload FROM outbox WHERE kind = 'roster' AND recipient = ?", (owner,)
    ) as cur:
        rows = await cur.fetchall()
    return {json.loads(r[0])["jid"] for r in rows}


async def suspects(conn: Conn, limit: int) -> list[OutboxRow]:
    """Rows that were in flight when a stream was lost, oldest first."""
    async with conn.execute(_SELECT + " WHERE suspect = 1 ORDER BY id LIMIT ?", (limit,)) as cur:
        rows = await cur.fetchall()
    return [_row(r) for r in rows]


async def mark_suspect(conn: Conn, ids: Iterable[int]) -> None:
    await conn.executemany("UPDATE outbox SET suspect = 1 WHERE id = ?", [(i,) for i in ids])


async def clear_suspect(conn: Conn, row_id: int) -> None:
    await conn.execute("UPDATE outbox SET suspect = 0 WHERE id = ?", (row_id,))


async def retry_later(conn: Conn, row_id: int, next_try_at: int, error: str) -> None:
    """One more failed attempt: not before `next_try_at`."""
    await conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, next_try_at = ?, last_error = ? WHERE id = ?",
        (next_try_at, error, row_id),
    )


async def give_up(conn: Conn, row: OutboxRow, error: str, now_ms: int) -> None:
    """Move the row aside (dead_letters): its attempts are spent."""
    await dead_letters.add(
        conn, "outbox", row.kind, row.recipient, row.payload, row.attempts + 1, error,
        row.created_at, now_ms,
    )
    await conn.execute("DELETE FROM outbox WHERE id = ?", (row.id,))


async def delete(conn: Conn, ids: list[int]) -> None:
    if ids:
        await conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])


async def count(conn: Conn) -> int:
    async with conn.execute("SELECT count(*) FROM outbox") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def depth(conn: Conn) -> tuple[int, int | None]:
    """How many rows wait, and when the oldest was committed (ms; None when empty)."""
    async with conn.execute("SELECT count(*), min(created_at) FROM outbox") as cur:
        row = await cur.fetchone()
    return int(row[0]), row[1]
