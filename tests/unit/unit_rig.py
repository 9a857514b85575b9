"""Test doubles and row readers shared by the unit tier (imported by conftest and tests)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
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


# ---- raw HTTP: bytes an HTTP client library refuses to send ----------------------------


@dataclass(frozen=True)
class RawAnswer:
    status: int
    headers: dict[str, str]  # names lowercased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def raw_http(host: str, port: int, head: bytes, body: bytes = b"", timeout: float = 10.0) -> RawAnswer:
    """Send one request exactly as given (`head` is the request line and headers, without
    the blank line; `Connection: close` is added) and read the answer to the end."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head.rstrip(b"\r\n") + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        async with asyncio.timeout(timeout):
            data = await reader.read()
    finally:
        writer.close()
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawAnswer(int(status_line.split()[1]), headers, rest)
