"""Extension states and the presence subscriptions to them (family 2)."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

from component.model import BareJid, PresenceState, Subscription, SubscriptionId, new_account_id
from storage.conn import Conn

_SELECT = (
    "SELECT id, realm, extension, event, subscriber, created_at, notify_sequence,"
    " notify_body, version FROM subscriptions"
)


def _subscription(row: sqlite3.Row) -> Subscription:
    return Subscription(
        SubscriptionId(row[0]),
        row[1],
        row[2],
        row[3],
        BareJid(row[4]),
        row[5],
        row[6],
        row[7],
        row[8],
    )


async def state_of(conn: Conn, realm: str, extension: str) -> PresenceState:
    async with conn.execute(
        "SELECT state FROM extension_states WHERE realm = ? AND extension = ?", (realm, extension)
    ) as cur:
        row = await cur.fetchone()
    return PresenceState(row[0]) if row else PresenceState.TERMINATED


async def set_state(
    conn: Conn, realm: str, extension: str, state: PresenceState, now_ms: int
) -> None:
    await conn.execute(
        "INSERT INTO extension_states (realm, extension, state, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (realm, extension) DO UPDATE SET state = excluded.state,"
        " updated_at = excluded.updated_at",
        (realm, extension, state.value, now_ms),
    )


async def add(conn: Conn, subscription: Subscription) -> bool:
    """Record the subscription; False if the subscriber already had it (kept as is)."""
    cur = await conn.execute(
        "INSERT INTO subscriptions (id, realm, extension, event, subscriber, created_at,"
        " notify_sequence, notify_body, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (realm, extension, event, subscriber) DO NOTHING",
        (
            subscription.id,
            subscription.realm,
            subscription.extension,
            subscription.event,
            subscription.subscriber,
            subscription.created_at,
            subscription.notify_sequence,
            subscription.notify_body,
            subscription.version,
        ),
    )
    return cur.rowcount == 1


async def find(
    conn: Conn, realm: str, extension: str, event: str, subscriber: BareJid
) -> Subscription | None:
    async with conn.execute(
        _SELECT + " WHERE realm = ? AND extension = ? AND event = ? AND subscriber = ?",
        (realm, extension, event, subscriber),
    ) as cur:
        row = await cur.fetchone()
    return _subscription(row) if row else None


async def remove(
    conn: Conn, realm: str, extension: str, event: str, subscriber: BareJid
) -> bool:
    cur = await conn.execute(
        "DELETE FROM subscriptions WHERE realm = ? AND extension = ? AND event = ? AND subscriber = ?",
        (realm, extension, event, subscriber),
    )
    return cur.rowcount == 1


async def for_extension(
    conn: Conn, realm: str, extension: str
) -> list[Subscription]:
    async with conn.execute(
        _SELECT + " WHERE realm = ? AND extension = ? ORDER BY event, subscriber",
        (realm, extension),
    ) as cur:
        rows = await cur.fetchall()
    return [_subscription(r) for r in rows]


async def for_realm(
    conn: Conn, realm: str, event: str | None = None
) -> list[Subscription]:
    if event is None:
        sql, params = _SELECT + " WHERE realm = ? ORDER BY extension, event, subscriber", (realm,)
    else:
        sql = _SELECT + " WHERE realm = ? AND event = ? ORDER BY extension, event, subscriber"
        params = (realm, event)
    async with conn.execute(sql, params) as cur:
        rows = await cur.fetchall()
    return [_subscription(r) for r in rows]


async def record_notification(
    conn: Conn, subscription_id: SubscriptionId, body: str
) -> int:
    """Count one more notification sent to the subscriber; returns the new sequence."""
    async with conn.execute(
        "UPDATE subscriptions SET notify_sequence = notify_sequence + 1, notify_body = ?"
        " WHERE id = ? RETURNING notify_sequence",
        (body, subscription_id),
    ) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def open_subscription(
    conn: Conn, realm: str, extension: str, event: str, subscriber: BareJid, now_ms: int
) -> tuple[Subscription, bool, PresenceState]:
    """Record (or confirm) the subscription and count the state notification it is owed
    now: the subscription as stored (with that notification's sequence), whether it is
    new, and the extension's current state."""
    created = await add(
        conn,
        Subscription(
            SubscriptionId(new_account_id()), realm, extension, event, subscriber, now_ms, 0, None, 1
        ),
    )
    found = await find(conn, realm, extension, event, subscriber)
    assert found is not None
    state = await state_of(conn, realm, extension)
    sequence = await record_notification(conn, found.id, state.value)
    return replace(found, notify_sequence=sequence, notify_body=state.value), created, state


async def of_subscriber(
    conn: Conn, extension: str, event: str, subscriber: BareJid
) -> list[Subscription]:
    """The subscriber's subscriptions to one extension JID, in every realm."""
    async with conn.execute(
        _SELECT + " WHERE subscriber = ? AND extension = ? AND event = ? ORDER BY realm",
        (subscriber, extension, event),
    ) as cur:
        rows = await cur.fetchall()
    return [_subscription(r) for r in rows]


async def extensions_of_subscriber(conn: Conn, subscriber: BareJid, event: str, limit: int) -> list[str]:
    """The extensions the subscriber watches (in any realm), in order."""
    async with conn.execute(
        "SELECT DISTINCT extension FROM subscriptions WHERE subscriber = ? AND event = ?"
        " ORDER BY extension LIMIT ?",
        (subscriber, event, limit),
    ) as cur:
        rows = await cur.fetchall()
    return [r[0] for r in rows]


async def remove_realm(conn: Conn, realm: str) -> None:
    """Forget every subscription and state of a realm (its account was deleted)."""
    await conn.execute("DELETE FROM subscriptions WHERE realm = ?", (realm,))
    await conn.execute("DELETE FROM extension_states WHERE realm = ?", (realm,))


async def count_of_subscriber(conn: Conn, subscriber: BareJid) -> int:
    async with conn.execute("SELECT count(*) FROM subscriptions WHERE subscriber = ?", (subscriber,)) as cur:
        row = await cur.fetchone()
    return int(row[0])
