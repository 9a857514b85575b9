"""Notifications given up on after their attempts, kept for the operator: one table for
both outboxes (XMPP stanzas and invitation e-mails)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from storage.conn import Conn

# A notification's payload as the outbox and this table store it: compact JSON. One
# encoder built once: json.dumps with any option builds a new JSONEncoder per call, a
# third of the cost of a small payload (several per REST write, issue #14).
encode_payload = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True)
class DeadLetter:
    id: int
    source: str  # "outbox" or "mail"
    kind: str
    recipient: str
    payload: dict[str, Any]
    attempts: int
    last_error: str
    created_at: int
    failed_at: int


async def add(
    conn: Conn,
    source: str,
    kind: str,
    recipient: str,
    payload: dict[str, Any],
    attempts: int,
    last_error: str,
    created_at: int,
    now_ms: int,
) -> None:
    await conn.execute(
        "INSERT INTO dead_letters (source, kind, recipient, payload, attempts, last_error,"
        " created_at, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            source, kind, recipient, encode_payload(payload),
            attempts, last_error, created_at, now_ms,
        ),
    )


async def recent(conn: Conn, limit: int = 100) -> list[DeadLetter]:
    async with conn.execute(
        "SELECT id, source, kind, recipient, payload, attempts, last_error, created_at, failed_at"
        " FROM dead_letters ORDER BY failed_at DESC, id DESC LIMIT ?",
        (limit,),
    ) as cur:
        rows = await cur.fetchall()
    return [DeadLetter(r[0], r[1], r[2], r[3], json.loads(r[4]), *r[5:]) for r in rows]


async def count(conn: Conn) -> int:
    async with conn.execute("SELECT count(*) FROM dead_letters") as cur:
        row = await cur.fetchone()
    return int(row[0])
