"""The mail outbox: e-mails committed with the change that needs them."""

from __future__ import annotations

from dataclasses import dataclass

from storage import dead_letters
from storage.conn import Conn


@dataclass(frozen=True)
class Mail:
    id: int
    recipient: str
    subject: str
    body: str
    attempts: int
    created_at: int = 0


async def add(conn: Conn, recipient: str, subject: str, body: str, now_ms: int) -> None:
    await conn.execute(
        "INSERT INTO mail_outbox (recipient, subject, body, next_try_at, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (recipient, subject, body, now_ms, now_ms),
    )


async def due(conn: Conn, now_ms: int, limit: int) -> list[Mail]:
    async with conn.execute(
        "SELECT id, recipient, subject, body, attempts, created_at FROM mail_outbox"
        " WHERE next_try_at <= ? ORDER BY next_try_at, id LIMIT ?",
        (now_ms, limit),
    ) as cur:
        rows = await cur.fetchall()
    return [Mail(*row) for row in rows]


async def next_due_at(conn: Conn) -> int | None:
    async with conn.execute("SELECT min(next_try_at) FROM mail_outbox") as cur:
        row = await cur.fetchone()
    return row[0] if row and row[0] is not None else None


async def delete(conn: Conn, mail_id: int) -> None:
    await conn.execute("DELETE FROM mail_outbox WHERE id = ?", (mail_id,))


async def retry_later(conn: Conn, mail_id: int, next_try_at: int, error: str = "") -> None:
    await conn.execute(
        "UPDATE mail_outbox SET attempts = attempts + 1, next_try_at = ?, last_error = ? WHERE id = ?",
        (next_try_at, error, mail_id),
    )


async def give_up(conn: Conn, mail: Mail, error: str, now_ms: int) -> None:
    """Move the mail aside (dead_letters): its attempts are spent."""
    await dead_letters.add(
        conn, "mail", "mail", mail.recipient, {"subject": mail.subject, "body": mail.body},
        mail.attempts + 1, error, mail.created_at, now_ms,
    )
    await conn.execute("DELETE FROM mail_outbox WHERE id = ?", (mail.id,))


async def count(conn: Conn) -> int:
    async with conn.execute("SELECT count(*) FROM mail_outbox") as cur:
        row = await cur.fetchone()
    return int(row[0])
