"""Users: a stable 24-hex id per bare JID, created the first time the JID is seen."""

from __future__ import annotations

from component.model import BareJid, User, UserId, jid_domain, new_object_id
from storage.conn import Conn


async def get_or_create(conn: Conn, jid: BareJid, now_ms: int) -> User:
    """The user for `jid` (normalised by the caller), which showed up itself (a login, a
    stanza it sent, its provisioning): created inside the caller's transaction if new,
    marked seen if it was only named before."""
    await conn.execute(
        "INSERT INTO users (id, jid, created_at, domain, seen_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (jid) DO UPDATE SET seen_at = COALESCE(users.seen_at, excluded.seen_at)",
        (new_object_id(), jid, now_ms, jid_domain(jid), now_ms),
    )
    user = await by_jid(conn, jid)
    assert user is not None
    return user


async def named(conn: Conn, jid: BareJid, named_by: UserId, now_ms: int) -> tuple[User, bool]:
    """The user for a JID someone names as a target (it may never have shown up):
    created unseen if new. Returns the user and whether it was just created."""
    cur = await conn.execute(
        "INSERT INTO users (id, jid, created_at, domain, named_by) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (jid) DO NOTHING",
        (new_object_id(), jid, now_ms, jid_domain(jid), named_by),
    )
    user = await by_jid(conn, jid)
    assert user is not None
    return user, cur.rowcount == 1


async def unseen_named_by(conn: Conn, user_id: UserId) -> int:
    """How many users `user_id` named that never showed up (and are still referred to)."""
    async with conn.execute(
        "SELECT count(*) FROM users WHERE named_by = ? AND seen_at IS NULL", (user_id,)
    ) as cur:
        row = await cur.fetchone()
    return int(row[0])


async def forget_unreferenced(conn: Conn, limit: int) -> int:
    """Delete users that never showed up and that nothing refers to any more (a target
    whose request was cancelled, a share's user whose share went). Returns how many."""
    cur = await conn.execute(
        "DELETE FROM users WHERE id IN (SELECT u.id FROM users u WHERE u.seen_at IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM presence_requests r WHERE r.from_user_id = u.id)"
        " AND NOT EXISTS (SELECT 1 FROM presence_requests r WHERE r.to_user_id = u.id)"
        " AND NOT EXISTS (SELECT 1 FROM device_shares s WHERE s.from_user_id = u.id)"
        " AND NOT EXISTS (SELECT 1 FROM device_shares s WHERE s.to_user_id = u.id)"
        " AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.owner_id = u.id)"
        " AND NOT EXISTS (SELECT 1 FROM account_users a WHERE a.user_id = u.id)"
        " AND NOT EXISTS (SELECT 1 FROM tokens t WHERE t.user_id = u.id)"
        " LIMIT ?)",
        (limit,),
    )
    return cur.rowcount


async def by_jid(conn: Conn, jid: BareJid) -> User | None:
    async with conn.execute("SELECT id, jid FROM users WHERE jid = ?", (jid,)) as cur:
        row = await cur.fetchone()
    return User(UserId(row[0]), BareJid(row[1])) if row else None


async def seen_by_jid(conn: Conn, jid: BareJid) -> User | None:
    """The user, if the account showed up itself before (not only named as a target)."""
    async with conn.execute(
        "SELECT id, jid FROM users WHERE jid = ? AND seen_at IS NOT NULL", (jid,)
    ) as cur:
        row = await cur.fetchone()
    return User(UserId(row[0]), BareJid(row[1])) if row else None


async def by_id(conn: Conn, user_id: UserId) -> User | None:
    async with conn.execute("SELECT id, jid FROM users WHERE id = ?", (user_id,)) as cur:
        row = await cur.fetchone()
    return User(UserId(row[0]), BareJid(row[1])) if row else None


async def due_for_check(conn: Conn, now_ms: int, every_ms: int, limit: int) -> list[User]:
    """Users holding a live token whose account was not checked in the last `every_ms`,
    the least recently checked first."""
    async with conn.execute(
        "SELECT u.id, u.jid FROM users u"
        " WHERE (u.checked_at IS NULL OR u.checked_at <= ?)"
        " AND EXISTS (SELECT 1 FROM tokens t WHERE t.user_id = u.id AND t.expires_at > ?)"
        " ORDER BY coalesce(u.checked_at, 0), u.id LIMIT ?",
        (now_ms - every_ms, now_ms, limit),
    ) as cur:
        rows = await cur.fetchall()
    return [User(UserId(r[0]), BareJid(r[1])) for r in rows]


async def mark_checked(conn: Conn, user_id: UserId, now_ms: int) -> None:
    await conn.execute("UPDATE users SET checked_at = ? WHERE id = ?", (now_ms, user_id))
