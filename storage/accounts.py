"""Accounts (tenants), their provisioned users and their devices (family 2)."""

from __future__ import annotations

import sqlite3

from component.model import (
    Account,
    AccountId,
    AccountUser,
    BareJid,
    Device,
    DeviceId,
    User,
    UserId,
)
from storage.conn import Conn


async def insert_account(conn: Conn, account: Account, now_ms: int) -> None:
    await conn.execute(
        "INSERT INTO accounts (id, name, realm, created_at) VALUES (?, ?, ?, ?)",
        (account.id, account.name, account.realm, now_ms),
    )


async def get_account(conn: Conn, account_id: AccountId) -> Account | None:
    async with conn.execute(
        "SELECT id, name, realm FROM accounts WHERE id = ?", (account_id,)
    ) as cur:
        row = await cur.fetchone()
    return Account(AccountId(row[0]), row[1], row[2]) if row else None


async def account_for_realm(conn: Conn, realm: str) -> Account | None:
    async with conn.execute(
        "SELECT id, name, realm FROM accounts WHERE realm = ?", (realm,)
    ) as cur:
        row = await cur.fetchone()
    return Account(AccountId(row[0]), row[1], row[2]) if row else None


async def list_accounts(conn: Conn) -> list[Account]:
    async with conn.execute("SELECT id, name, realm FROM accounts ORDER BY realm") as cur:
        rows = await cur.fetchall()
    return [Account(AccountId(r[0]), r[1], r[2]) for r in rows]


async def delete_account(conn: Conn, account_id: AccountId) -> bool:
    cur = await conn.execute("DELETE FROM accounts WHERE id = ?", (account_id,))
    return cur.rowcount == 1


def _account_user(row: sqlite3.Row) -> AccountUser:
    return AccountUser(
        User(UserId(row[0]), BareJid(row[1])), AccountId(row[2]), row[3], row[4], row[5]
    )


async def upsert_account_user(
    conn: Conn,
    user_id: UserId,
    account_id: AccountId,
    username: str,
    presence_id: str | None,
    now_ms: int,
    email: str | None = None,
) -> bool:
    """Provision the user in the account; False if it already was (nothing changed)."""
    cur = await conn.execute(
        "INSERT INTO account_users (user_id, account_id, username, presence_id, created_at, email)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id) DO NOTHING",
        (user_id, account_id, username, presence_id, now_ms, email),
    )
    return cur.rowcount == 1


async def user_by_email(conn: Conn, email: str) -> User | None:
    """The provisioned user with this (lowercased) e-mail address."""
    async with conn.execute(
        "SELECT u.id, u.jid FROM account_users au JOIN users u ON u.id = au.user_id"
        " WHERE au.email = ?",
        (email,),
    ) as cur:
        row = await cur.fetchone()
    return User(UserId(row[0]), BareJid(row[1])) if row else None


# Members of an account: every user of its realm's domain (DESIGN "Consent rules: realm
# membership is by domain"), with the Kazoo fields of those that were provisioned.
_MEMBER_SELECT = (
    "SELECT u.id, u.jid, ?1, COALESCE(au.username, substr(u.jid, 1, instr(u.jid, '@') - 1)),"
    " au.presence_id, au.email"
    " FROM users u LEFT JOIN account_users au ON au.user_id = u.id AND au.account_id = ?1"
    " WHERE u.domain = ?2"
)


async def member(
    conn: Conn, account: Account, user_id: UserId
) -> AccountUser | None:
    """A user of the account's realm, provisioned or not."""
    async with conn.execute(_MEMBER_SELECT + " AND u.id = ?3", (account.id, account.realm, user_id)) as cur:
        row = await cur.fetchone()
    return _account_user(row) if row else None


async def members(conn: Conn, account: Account) -> list[AccountUser]:
    """Every user of the account's realm the service knows, oldest first."""
    async with conn.execute(
        _MEMBER_SELECT + " ORDER BY u.created_at, u.id", (account.id, account.realm)
    ) as cur:
        rows = await cur.fetchall()
    return [_account_user(r) for r in rows]


async def delete_account_user(
    conn: Conn, account_id: AccountId, user_id: UserId
) -> bool:
    """Unprovision: the Kazoo fields go, and the devices the user managed are left
    without a manager. The user (its id, requests, membership by domain) stays."""
    cur = await conn.execute(
        "DELETE FROM account_users WHERE account_id = ? AND user_id = ?", (account_id, user_id)
    )
    await conn.execute(
        "UPDATE devices SET owner_id = NULL WHERE account_id = ? AND owner_id = ?",
        (account_id, user_id),
    )
    return cur.rowcount == 1


_DEVICE_SELECT = (
    "SELECT id, account_id, name, sip_username, presence_id, owner_id FROM devices"
)


def _device(row: sqlite3.Row) -> Device:
    return Device(
        DeviceId(row[0]),
        AccountId(row[1]),
        row[2],
        row[3],
        row[4],
        UserId(row[5]) if row[5] else None,
    )


async def insert_device(conn: Conn, device: Device, now_ms: int) -> None:
    await conn.execute(
        "INSERT INTO devices (id, account_id, name, sip_username, presence_id, owner_id, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            device.id,
            device.account_id,
            device.name,
            device.sip_username,
            device.presence_id,
            device.owner_id,
            now_ms,
        ),
    )


async def sip_username_taken(
    conn: Conn, account_id: AccountId, sip_username: str
) -> bool:
    async with conn.execute(
        "SELECT 1 FROM devices WHERE account_id = ? AND sip_username = ?",
        (account_id, sip_username),
    ) as cur:
        return await cur.fetchone() is not None


async def get_device(
    conn: Conn, account_id: AccountId, device_id: DeviceId
) -> Device | None:
    async with conn.execute(
        _DEVICE_SELECT + " WHERE account_id = ? AND id = ?", (account_id, device_id)
    ) as cur:
        row = await cur.fetchone()
    return _device(row) if row else None


async def device_by_id(conn: Conn, device_id: DeviceId) -> Device | None:
    async with conn.execute(_DEVICE_SELECT + " WHERE id = ?", (device_id,)) as cur:
        row = await cur.fetchone()
    return _device(row) if row else None


async def list_devices(conn: Conn, account_id: AccountId) -> list[Device]:
    async with conn.execute(
        _DEVICE_SELECT + " WHERE account_id = ? ORDER BY created_at, id", (account_id,)
    ) as cur:
        rows = await cur.fetchall()
    return [_device(r) for r in rows]


async def devices_owned_by(
    conn: Conn, account_id: AccountId, owner_id: UserId
) -> list[Device]:
    async with conn.execute(
        _DEVICE_SELECT + " WHERE owner_id = ? AND account_id = ? ORDER BY created_at, id",
        (owner_id, account_id),
    ) as cur:
        rows = await cur.fetchall()
    return [_device(r) for r in rows]


async def devices_managed_by(conn: Conn, owner_id: UserId, limit: int) -> list[Device]:
    """The devices, in any account, whose manager (owner_id) is the user."""
    async with conn.execute(
        _DEVICE_SELECT + " WHERE owner_id = ? ORDER BY created_at, id LIMIT ?", (owner_id, limit)
    ) as cur:
        rows = await cur.fetchall()
    return [_device(r) for r in rows]


async def devices_with_extension(conn: Conn, realm: str, extension: str) -> list[Device]:
    """The devices of the realm's account whose extension (presence_id, else SIP
    username) is `extension`."""
    async with conn.execute(
        "SELECT d.id, d.account_id, d.name, d.sip_username, d.presence_id, d.owner_id"
        " FROM devices d JOIN accounts a ON a.id = d.account_id"
        " WHERE a.realm = ? AND COALESCE(d.presence_id, d.sip_username) = ?"
        " ORDER BY d.created_at, d.id",
        (realm, extension),
    ) as cur:
        rows = await cur.fetchall()
    return [_device(r) for r in rows]


async def delete_device(
    conn: Conn, account_id: AccountId, device_id: DeviceId
) -> bool:
    cur = await conn.execute(
        "DELETE FROM devices WHERE account_id = ? AND id = ?", (account_id, device_id)
    )
    return cur.rowcount == 1
