"""Presence requests (family 1). Only pending and accepted requests are stored."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection

from component.model import (
    STORED_STATUSES,
    PresenceRequest,
    RequestId,
    RequestStatus,
    User,
    UserId,
)
from storage.conn import Conn

_SELECT = (
    "SELECT r.id, r.from_user_id, fu.jid, r.to_user_id, tu.jid, r.status,"
    " r.request_date, r.acceptation_date"
    " FROM presence_requests r"
    " JOIN users fu ON fu.id = r.from_user_id"
    " JOIN users tu ON tu.id = r.to_user_id"
)


# A stored status by its value: a dict lookup, where RequestStatus(value) takes a
# good part of a row's conversion (a page of 100 rows converts 100).
_STATUS = {status.value: status for status in STORED_STATUSES}


# A row's objects are made without their dataclass __init__: a frozen dataclass sets each
# field through object.__setattr__ (the dataclasses documentation's "tiny performance
# penalty"), and a page of 20 requests makes 20 PresenceRequests and up to 21 Users, which
# took the reader thread 92 us of its GIL time; 45 us this way (issue #14). The classes are
# the same frozen dataclasses (equal, hashable, immutable), built from values storage
# already holds; neither checks anything in __post_init__ (tests/unit/test_storage.py
# holds these to the classes' own constructors, field for field).
_new = object.__new__
_set = object.__setattr__


def _user(user_id: str, jid: str) -> User:
    user = _new(User)
    _set(user, "__dict__", {"id": user_id, "jid": jid})
    return user


def _from_row(row: sqlite3.Row, users: dict[str, User]) -> PresenceRequest:
    """`users`: the users built so far for the same answer, shared (they are immutable):
    every row of a page names the caller, so a page builds one User per row, not two."""
    from_user = users.get(row[1])
    if from_user is None:
        from_user = users[row[1]] = _user(row[1], row[2])
    to_user = users.get(row[3])
    if to_user is None:
        to_user = users[row[3]] = _user(row[3], row[4])
    request = _new(PresenceRequest)
    _set(request, "__dict__", {
        "id": row[0], "from_user": from_user, "to_user": to_user, "status": _STATUS[row[5]],
        "request_date": row[6], "acceptation_date": row[7],
        "declination_date": None, "cancellation_date": None,
    })
    return request


def _from_rows(rows: list[sqlite3.Row]) -> list[PresenceRequest]:
    users: dict[str, User] = {}
    return [_from_row(row, users) for row in rows]


async def insert(conn: Conn, request: PresenceRequest) -> None:
    await conn.execute(
        "INSERT INTO presence_requests"
        " (id, from_user_id, to_user_id, status, request_date, acceptation_date)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (
            request.id,
            request.from_user.id,
            request.to_user.id,
            request.status.value,
            request.request_date,
            request.acceptation_date,
        ),
    )


async def get(conn: Conn, request_id: RequestId) -> PresenceRequest | None:
    async with conn.execute(_SELECT + " WHERE r.id = ?", (request_id,)) as cur:
        row = await cur.fetchone()
    return _from_row(row, {}) if row else None


async def mark_accepted(conn: Conn, request_id: RequestId, now_ms: int) -> bool:
    """pending -> accepted; False when the request is gone or no longer pending."""
    cur = await conn.execute(
        "UPDATE presence_requests SET status = 'accepted', acceptation_date = ?"
        " WHERE id = ? AND status = 'pending'",
        (now_ms, request_id),
    )
    return cur.rowcount == 1


async def delete_in_status(
    conn: Conn, request_id: RequestId, status: RequestStatus
) -> bool:
    """Delete the request if it is still in `status`; False otherwise."""
    cur = await conn.execute(
        "DELETE FROM presence_requests WHERE id = ? AND status = ?", (request_id, status.value)
    )
    return cur.rowcount == 1


async def link_and_pending_sent(conn: Conn, from_id: UserId, to_id: UserId) -> tuple[bool, int]:
    """What a new request from `from_id` to `to_id` checks, in one statement (one round
    trip on PostgreSQL): whether a live (pending or accepted) request links the pair in
    that direction, and how many pending requests `from_id` has sent."""
    async with conn.execute(
        "SELECT EXISTS (SELECT 1 FROM presence_requests WHERE from_user_id = ?1 AND to_user_id = ?2),"
        " (SELECT count(*) FROM presence_requests WHERE from_user_id = ?1 AND status = 'pending')",
        (from_id, to_id),
    ) as cur:
        row = await cur.fetchone()
    return bool(row[0]), int(row[1])


async def list_for(
    conn: Conn,
    user_id: UserId,
    box: str,
    statuses: Collection[RequestStatus],
    limit: int,
    offset: int,
    descending: bool,
    after: tuple[int, str] | None = None,
) -> tuple[list[PresenceRequest], int]:
    """One page of the requests `user_id` received (box='received') or sent ('sent').

    Each shape of query is a range scan of one index (see migration 1): the box
    column, then the status when filtering on exactly one, then (request_date, id).
    `after` is a keyset cursor (request_date, id): only rows past it, in the page
    order, are returned (XEP-0059 paging); `total` still counts the whole filter.
    """
    column = {"received": "r.to_user_id", "sent": "r.from_user_id"}[box]
    wanted = sorted({RequestStatus(s).value for s in statuses} & {s.value for s in STORED_STATUSES})
    if not wanted:
        return [], 0
    where = f"{column} = ?"
    params: list[object] = [user_id]
    if len(wanted) == 1:
        where += " AND r.status = ?"
        params.append(wanted[0])
    order = "DESC" if descending else "ASC"
    page_where, page_params = where, list(params)
    if after is not None:
        page_where += f" AND (r.request_date, r.id) {'<' if descending else '>'} (?, ?)"
        page_params.extend(after)
    async with conn.execute(
        f"{_SELECT} WHERE {page_where}"
        f" ORDER BY r.request_date {order}, r.id {order} LIMIT ? OFFSET ?",
        (*page_params, limit, offset),
    ) as cur:
        rows = await cur.fetchall()
    async with conn.execute(
        f"SELECT count(*) FROM presence_requests r WHERE {where}", params
    ) as cur:
        total = (await cur.fetchone())[0]
    return _from_rows(rows), int(total)


async def accepted_between(conn: Conn, from_id: UserId, to_id: UserId) -> PresenceRequest | None:
    async with conn.execute(
        _SELECT + " WHERE r.from_user_id = ? AND r.to_user_id = ? AND r.status = 'accepted'",
        (from_id, to_id),
    ) as cur:
        row = await cur.fetchone()
    return _from_row(row, {}) if row else None


async def accepted_page(conn: Conn, after: RequestId | str, limit: int) -> list[PresenceRequest]:
    """Accepted requests after `after` in id order (resync walks them all)."""
    async with conn.execute(
        _SELECT + " WHERE r.status = 'accepted' AND r.id > ? ORDER BY r.id LIMIT ?", (after, limit)
    ) as cur:
        rows = await cur.fetchall()
    return _from_rows(rows)
