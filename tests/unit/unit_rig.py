"""Test doubles and row readers shared by the unit tier (imported by conftest and tests)."""

from __future__ import annotations

import json
from typing import Any

from component.model import BareJid
from storage import Conn, Database

SERVED = frozenset({"example.test"})
TOKEN_TTL_S = 3600


class FakeVerifier:
    """Stands in for the SASL check against the XMPP server: every account's
    password is its localpart followed by `-pw` (alice@example.test: alice-pw)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def verify(self, jid: BareJid, password: str) -> bool:
        self.calls.append((jid, password))
        return password == f"{jid.partition('@')[0]}-pw"


class CommitCounter:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


async def outbox_rows(db: Database) -> list[tuple[str, str, dict[str, Any]]]:
    """Every outbox row, oldest first, as (kind, recipient, payload)."""
    async with db.reader.execute("SELECT kind, recipient, payload FROM outbox ORDER BY id") as cur:
        rows = await cur.fetchall()
    return [(r[0], r[1], json.loads(r[2])) for r in rows]


async def clear_outbox(db: Database) -> None:
    async def delete_all(tx: Conn) -> None:
        await tx.execute("DELETE FROM outbox")

    await db.write(delete_all)


async def request_rows(db: Database) -> list[tuple[Any, ...]]:
    async with db.reader.execute(
        "SELECT id, from_user_id, to_user_id, status, request_date, acceptation_date"
        " FROM presence_requests ORDER BY request_date, id"
    ) as cur:
        return [tuple(r) for r in await cur.fetchall()]
