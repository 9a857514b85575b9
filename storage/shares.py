"""Device shares (family 3, Xlink): invitations to share a device's presence."""

from __future__ import annotations

import sqlite3

from component.model import (
    BareJid,
    DeviceId,
    DeviceShare,
    InviteCode,
    ShareMode,
    ShareState,
    User,
    UserId,
)
from storage.conn import Conn

_SELECT = (
    "SELECT s.invite_code, s.device_id, s.from_user_id, fu.jid, s.to_user_id, tu.jid,"
    " s.to_email, s.mode, s.authority, s.state, s.create_date, s.expire_date, s.reason,"
    " s.updated_at"
    " FROM device_shares s"
    " JOIN users fu ON fu.id = s.from_user_id"
    " LEFT JOIN users tu ON tu.id = s.to_user_id"
)


def _share(row: sqlite3.Row) -> DeviceShare:
    return DeviceShare(
        invite_code=InviteCode(row[0]),
        device_id=DeviceId(row[1]),
        from_user=User(UserId(row[2]), BareJid(row[3])),
        to_user=User(UserId(row[4]), BareJid(row[5])) if row[4] else None,
        to_email=row[6],
        mode=ShareMode(row[7]),
        authority=row[8],
        state=ShareState(row[9]),
        create_date=row[10],
        expire_date=row[11],
        reason=row[12],
        updated_at=row[13],
    )


async def insert(conn: Conn, share: DeviceShare) -> None:
    await conn.execute(
        "INSERT INTO device_shares (invite_code, device_id, from_user_id, to_user_id, to_email,"
        " mode, authority, state, create_date, expire_date, reason, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            share.invite_code,
            share.device_id,
            share.from_user.id,
            share.to_user.id if share.to_user else None,
            share.to_email,
            share.mode.value,
            share.authority,
            share.state.value,
            share.create_date,
            share.expire_date,
            share.reason,
            share.updated_at,
        ),
    )


async def get(conn: Conn, invite_code: InviteCode) -> DeviceShare | None:
    async with conn.execute(_SELECT + " WHERE s.invite_code = ?", (invite_code,)) as cur:
        row = await cur.fetchone()
    return _share(row) if row else None


async def update_state(
    conn: Conn,
    invite_code: InviteCode,
    expected: ShareState,
    state: ShareState,
    now_ms: int,
    to_user_id: UserId | None = None,
    reason: str | None = None,
) -> bool:
    """Move the share from `expected` to `state`; False if it is no longer in `expected`."""
    cur = await conn.execute(
        "UPDATE device_shares SET state = ?, updated_at = ?,"
        " to_user_id = COALESCE(?, to_user_id), reason = COALESCE(?, reason)"
        " WHERE invite_code = ? AND state = ?",
        (state.value, now_ms, to_user_id, reason, invite_code, expected.value),
    )
    return cur.rowcount == 1


async def hide_for(conn: Conn, invite_code: InviteCode, user_id: UserId) -> bool:
    """Hide the share from `user_id`'s own history (the other party still sees it)."""
    # `IS`, not `=`: to_user_id is NULL until someone answers a qrcode share (or an e-mail
    # share to an unknown address), and NULL in a NOT NULL column failed the whole update.
    cur = await conn.execute(
        "UPDATE device_shares SET"
        " hidden_by_sender = CASE WHEN from_user_id = ?1 THEN 1 ELSE hidden_by_sender END,"
        " hidden_by_receiver = CASE WHEN to_user_id = ?1 THEN 1 ELSE hidden_by_receiver END"
        " WHERE invite_code = ?2 AND (from_user_id = ?1 OR to_user_id = ?1)",
        (user_id, invite_code),
    )
    return cur.rowcount == 1


async def visible_to(conn: Conn, user_id: UserId, limit: int) -> list[DeviceShare]:
    """Shares the user sent or received and has not deleted from its history, newest first."""
    async with conn.execute(
        "SELECT * FROM ("
        + _SELECT
        + " WHERE s.from_user_id = ?1 AND s.hidden_by_sender = 0"
        " UNION ALL "
        + _SELECT
        + " WHERE s.to_user_id = ?1 AND s.from_user_id <> ?1 AND s.hidden_by_receiver = 0"
        ") AS visible ORDER BY 11 DESC, 1 LIMIT ?2",
        (user_id, limit),
    ) as cur:
        rows = await cur.fetchall()
    return [_share(r) for r in rows]


async def count_pending_for_device(
    conn: Conn, device_id: DeviceId, now_ms: int
) -> int:
    """Pending shares of the device that have not expired yet (swept or not)."""
    async with conn.execute(
        "SELECT count(*) FROM device_shares"
        " WHERE device_id = ? AND state = 'pending' AND expire_date > ?",
        (device_id, now_ms),
    ) as cur:
        row = await cur.fetchone()
    return int(row[0])


async def expired_pending(conn: Conn, now_ms: int, limit: int) -> list[DeviceShare]:
    async with conn.execute(
        _SELECT + " WHERE s.state = 'pending' AND s.expire_date <= ? ORDER BY s.expire_date LIMIT ?",
        (now_ms, limit),
    ) as cur:
        rows = await cur.fetchall()
    return [_share(r) for r in rows]


async def count_accepted(conn: Conn, device_id: DeviceId, user_id: UserId) -> int:
    """Accepted shares of the device to the user (each one grants the same access)."""
    async with conn.execute(
        "SELECT count(*) FROM device_shares WHERE device_id = ? AND to_user_id = ? AND state = 'accept'",
        (device_id, user_id),
    ) as cur:
        row = await cur.fetchone()
    return int(row[0])


async def live_for_device(conn: Conn, device_id: DeviceId) -> list[DeviceShare]:
    """The device's pending and accepted shares (what deleting the device must end)."""
    async with conn.execute(
        _SELECT + " WHERE s.device_id = ? AND s.state IN ('pending', 'accept') ORDER BY s.create_date",
        (device_id,),
    ) as cur:
        rows = await cur.fetchall()
    return [_share(r) for r in rows]


async def held_by(conn: Conn, user_id: UserId) -> list[DeviceShare]:
    """Accepted shares the user holds (each gives it a device's presence)."""
    async with conn.execute(
        _SELECT + " WHERE s.to_user_id = ? AND s.state = 'accept' ORDER BY s.create_date", (user_id,)
    ) as cur:
        rows = await cur.fetchall()
    return [_share(r) for r in rows]


async def accepted_page(conn: Conn, after: InviteCode | str, limit: int) -> list[DeviceShare]:
    """Accepted shares after `after` in invite-code order (resync walks them all)."""
    async with conn.execute(
        _SELECT + " WHERE s.state = 'accept' AND s.invite_code > ? ORDER BY s.invite_code LIMIT ?",
        (after, limit),
    ) as cur:
        rows = await cur.fetchall()
    return [_share(r) for r in rows]
