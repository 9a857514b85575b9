"""Users: a stable 24-hex id per bare JID, created the first time the JID is seen."""

from __future__ import annotations

from component.model import BareJid, User, UserId, jid_domain, new_object_id
from storage.conn import Conn


async def get_or_create(conn: Conn, jid: BareJid, now_ms: int) -> User:
    """Return the user for `jid` (normalised by the caller), creating it inside the
    caller's transaction if new."""
    await conn.execute(
        "INSERT INTO users (id, jid, created_at, domain) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (jid) DO NOTHING",
        (new_object_id(), jid, now_ms, jid_domain(jid)),
    )
    user = await by_jid(conn, jid)
    assert user is not None
    return user


async def by_jid(conn: Conn, jid: BareJid) -> User | None:
    async with conn.execute("SELECT id, jid FROM users WHERE jid = ?", (jid,)) as cur:
        row = await cur.fetchone()
    return User(UserId(row[0]), BareJid(row[1])) if row else None


async def by_id(conn: Conn, user_id: UserId) -> User | None:
    async with conn.execute("SELECT id, jid FROM users WHERE id = ?", (user_id,)) as cur:
        row = await cur.fetchone()
    return User(UserId(row[0]), BareJid(row[1])) if row else None
