"""What the service did to users' roster items (table roster_items).

One row per (owner, contact) the service changed: whether it created the item, and
the directions (`granted`: none/to/from/both) it added for a consent and last
applied. The outbox dispatcher writes it as roster changes are applied; the roster
check and `resync` read it (component.rosters).
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.conn import Conn


@dataclass(frozen=True)
class RosterRecord:
    owner: str
    contact: str
    created: bool
    granted: str  # none / to / from / both
    version: int = 0


_SELECT = "SELECT owner, contact, created, granted, version FROM roster_items"


def _record(row) -> RosterRecord:
    return RosterRecord(row[0], row[1], bool(row[2]), row[3], row[4])


async def get(conn: Conn, owner: str, contact: str) -> RosterRecord | None:
    async with conn.execute(_SELECT + " WHERE owner = ? AND contact = ?", (owner, contact)) as cur:
        row = await cur.fetchone()
    return _record(row) if row else None


async def for_owner(conn: Conn, owner: str) -> list[RosterRecord]:
    async with conn.execute(_SELECT + " WHERE owner = ? ORDER BY contact", (owner,)) as cur:
        rows = await cur.fetchall()
    return [_record(r) for r in rows]


async def page(conn: Conn, after: tuple[str, str], limit: int) -> list[RosterRecord]:
    """Records after (owner, contact), in key order (resync walks them all)."""
    async with conn.execute(
        _SELECT + " WHERE (owner, contact) > (?, ?) ORDER BY owner, contact LIMIT ?", (*after, limit)
    ) as cur:
        rows = await cur.fetchall()
    return [_record(r) for r in rows]


async def mark_created(conn: Conn, owner: str, contact: str, now_ms: int) -> None:
    """Before the service creates the item: the fact must survive a crash after the set."""
    await conn.execute(
        "INSERT INTO roster_items (owner, contact, created, granted, updated_at)"
        " VALUES (?, ?, 1, 'none', ?)"
        " ON CONFLICT (owner, contact) DO UPDATE SET created = 1, version = roster_items.version + 1,"
        " updated_at = excluded.updated_at",
        (owner, contact, now_ms),
    )


_UPSERT = (
    "INSERT INTO roster_items (owner, contact, created, granted, updated_at)"
    " VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (owner, contact) DO UPDATE SET created = excluded.created,"
    " granted = excluded.granted, version = roster_items.version + 1, updated_at = excluded.updated_at"
)
_DELETE = "DELETE FROM roster_items WHERE owner = ? AND contact = ?"


def _holds_nothing(record: RosterRecord) -> bool:
    return not record.created and record.granted == "none"


async def save(conn: Conn, record: RosterRecord, now_ms: int) -> None:
    """Store what was applied; a record that holds nothing any more is deleted."""
    await save_many(conn, [record], now_ms)


async def save_many(conn: Conn, records: list[RosterRecord], now_ms: int) -> None:
    """`save` each record, in order, in two statements at most (one round trip each on
    PostgreSQL): of several records of one item, the last is what is stored (its
    version goes up once, which is all readers of `version` ask: did it change); a
    record that holds nothing any more is deleted."""
    last = {(r.owner, r.contact): r for r in records}
    upserts = [(r.owner, r.contact, int(r.created), r.granted, now_ms) for r in last.values() if not _holds_nothing(r)]
    deletes = [(r.owner, r.contact) for r in last.values() if _holds_nothing(r)]
    if upserts:
        await conn.executemany(_UPSERT, upserts)
    if deletes:
        await conn.executemany(_DELETE, deletes)


async def delete(conn: Conn, owner: str, contact: str) -> None:
    await conn.execute("DELETE FROM roster_items WHERE owner = ? AND contact = ?", (owner, contact))
