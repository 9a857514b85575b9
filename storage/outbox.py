"""The transactional outbox: notifications committed with the state change they announce."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from storage.conn import Conn


@dataclass(frozen=True)
class OutboxRow:
    id: int
    kind: str
    recipient: str
    payload: dict[str, Any]


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
                (kind, recipient, json.dumps(payload, separators=(",", ":")), now_ms)
                for kind, recipient, payload in rows
            ],
        )


async def next_batch(
    conn: Conn, after_id: int, limit: int, roster: bool = True
) -> list[OutboxRow]:
    """The oldest rows after `after_id`, in commit order; without `roster`, roster rows
    are left out (they wait in the table while the server grants no roster access)."""
    sql = "SELECT id, kind, recipient, payload FROM outbox WHERE id > ?"
    if not roster:
        sql += " AND kind <> 'roster'"
    async with conn.execute(sql + " ORDER BY id LIMIT ?", (after_id, limit)) as cur:
        rows = await cur.fetchall()
    return [OutboxRow(r[0], r[1], r[2], json.loads(r[3])) for r in rows]


async def roster_contacts_queued(conn: Conn, owner: str) -> set[str]:
    """Contacts whose roster changes for `owner` are still queued (not yet applied)."""
    async with conn.execute(
        "SELECT payload FROM outbox WHERE kind = 'roster' AND recipient = ?", (owner,)
    ) as cur:
        rows = await cur.fetchall()
    return {json.loads(r[0])["jid"] for r in rows}


async def delete(conn: Conn, ids: list[int]) -> None:
    if ids:
        await conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])


async def count(conn: Conn) -> int:
    async with conn.execute("SELECT count(*) FROM outbox") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0
