"""Bearer tokens, stored only as their SHA-256 hash."""

from __future__ import annotations

from component.model import BareJid, User, UserId
from storage.conn import Conn


async def insert(
    conn: Conn, token_hash: bytes, user_id: UserId, now_ms: int, expires_ms: int
) -> None:
    await conn.execute(
        "INSERT INTO tokens (hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
        (token_hash, user_id, now_ms, expires_ms),
    )


async def holder(conn: Conn, token_hash: bytes, now_ms: int) -> tuple[User, int] | None:
    """The token's user and when the token expires (ms), or None when the token is
    unknown or expired."""
    async with conn.execute(
        "SELECT u.id, u.jid, t.expires_at FROM tokens t JOIN users u ON u.id = t.user_id"
        " WHERE t.hash = ? AND t.expires_at > ?",
        (token_hash, now_ms),
    ) as cur:
        row = await cur.fetchone()
    return (User(UserId(row[0]), BareJid(row[1])), int(row[2])) if row else None


async def delete(conn: Conn, token_hash: bytes) -> bool:
    cur = await conn.execute("DELETE FROM tokens WHERE hash = ?", (token_hash,))
    return cur.rowcount > 0


async def purge_expired(conn: Conn, now_ms: int) -> int:
    cur = await conn.execute("DELETE FROM tokens WHERE expires_at <= ?", (now_ms,))
    return cur.rowcount


async def keep_newest(conn: Conn, user_id: UserId, keep: int) -> int:
    """Revoke the user's oldest tokens beyond the newest `keep`. Returns how many went."""
    cur = await conn.execute(
        "DELETE FROM tokens WHERE user_id = ?1 AND hash NOT IN"
        " (SELECT hash FROM tokens WHERE user_id = ?1 ORDER BY created_at DESC, hash LIMIT ?2)",
        (user_id, keep),
    )
    return cur.rowcount


async def revoke_all(conn: Conn, user_id: UserId) -> int:
    cur = await conn.execute("DELETE FROM tokens WHERE user_id = ?", (user_id,))
    return cur.rowcount
