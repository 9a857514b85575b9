"""Storage against the real schema and migrations, in a real SQLite file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import itertools
import sqlite3
import threading
from pathlib import Path

import pytest

from component.actions import Identity
from component.clock import FixedClock
from component.errors import Unauthorized
from component.model import (
    STORED_STATUSES,
    PresenceRequest,
    RequestId,
    RequestStatus,
    User,
    new_object_id,
)
from storage import Conn, Database, IntegrityError, SchemaTooNew, database_for
from storage import presence_requests, tokens
from storage.migrations import UPGRADES
from unit_rig import TOKEN_TTL_S


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _pending(sender: User, receiver: User, when: int) -> PresenceRequest:
    return PresenceRequest(
        id=RequestId(new_object_id()),
        from_user=sender,
        to_user=receiver,
        status=RequestStatus.PENDING,
        request_date=when,
    )


# ---- migrations ---------------------------------------------------------------------


async def test_migrations_bring_a_new_file_to_the_latest_version(db: Database, db_path: Path) -> None:
    assert await db.schema_version() == len(UPGRADES)
    assert {"schema_version", "users", "tokens", "presence_requests", "outbox"} <= _tables(db_path)


async def test_reopening_a_migrated_database_changes_nothing(db_path: Path) -> None:
    first = Database(db_path)
    await first.open()
    await first.close()
    again = Database(db_path)
    await again.open()
    try:
        assert await again.schema_version() == len(UPGRADES)
        async with again.reader.execute("SELECT count(*) FROM schema_version") as cur:
            assert (await cur.fetchone())[0] == 1
    finally:
        await again.close()


async def _cache_size(conn: Conn) -> int:
    async with conn.execute("PRAGMA cache_size") as cur:
        return (await cur.fetchone())[0]


@pytest.mark.parametrize(("read_cache_mb", "kib"), [(None, 8 * 1024), (3, 3 * 1024)])
async def test_the_reader_gets_the_configured_page_cache(db_path: Path, read_cache_mb: int | None, kib: int) -> None:
    # SQLite's own default (2 MB) made a page of a 1M-row database miss on nearly every
    # page (storage/db.py, _PRAGMAS); `[storage] read_cache_mb` sets it, 8 by default.
    # The writer keeps SQLite's default (-2000: 2,000 KiB).
    db = database_for(str(db_path)) if read_cache_mb is None else database_for(str(db_path), read_cache_mb=read_cache_mb)
    await db.open()
    try:
        assert await db.read(_cache_size) == -kib  # negative: in KiB
        assert await db.write(_cache_size) == -2000
    finally:
        await db.close()


async def test_a_database_from_a_newer_version_is_refused(db_path: Path) -> None:
    first = Database(db_path)
    await first.open()
    await first.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (len(UPGRADES) + 1,))
    threads_before = set(threading.enumerate())
    newer = Database(db_path)
    with pytest.raises(SchemaTooNew):
        await newer.open()
    # The refused open leaves no connection behind: aiosqlite's worker threads are not
    # daemons, and one left running would keep `python -m component` from exiting.
    for thread in set(threading.enumerate()) - threads_before:
        thread.join(timeout=5)
        assert not thread.is_alive(), thread
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(len(UPGRADES) + 1,)]


@pytest.mark.sqlite_only
@pytest.mark.parametrize("which", ["writer", "reader"])
async def test_pragmas_are_in_effect_on_both_connections(db: Database, which: str) -> None:
    conn = db._writer if which == "writer" else db.reader
    assert conn is not None
    observed = {}
    for pragma in ("journal_mode", "foreign_keys", "synchronous"):
        async with conn.execute(f"PRAGMA {pragma}") as cur:
            observed[pragma] = (await cur.fetchone())[0]
    assert observed == {"journal_mode": "wal", "foreign_keys": 1, "synchronous": 2}


async def test_foreign_keys_refuse_a_request_for_an_unknown_user(db: Database, alice: User) -> None:
    ghost = User(new_object_id(), "ghost@example.test")  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):
        await db.write(lambda tx: presence_requests.insert(tx, _pending(alice, ghost, 1)))
    async with db.reader.execute("SELECT count(*) FROM presence_requests") as cur:
        assert (await cur.fetchone())[0] == 0


# ---- presence_requests ----------------------------------------------------------------


async def test_the_pair_index_refuses_a_second_live_request_in_one_direction(
    db: Database, alice: User, bob: User
) -> None:
    await db.write(lambda tx: presence_requests.insert(tx, _pending(alice, bob, 1)))
    with pytest.raises(IntegrityError):
        await db.write(lambda tx: presence_requests.insert(tx, _pending(alice, bob, 2)))
    # the reverse direction is another pair
    await db.write(lambda tx: presence_requests.insert(tx, _pending(bob, alice, 3)))
    async with db.reader.execute(
        "SELECT from_user_id, to_user_id, request_date FROM presence_requests ORDER BY request_date"
    ) as cur:
        assert [tuple(r) for r in await cur.fetchall()] == [(alice.id, bob.id, 1), (bob.id, alice.id, 3)]


_SHAPES = list(
    itertools.product(
        ["received", "sent"],
        [frozenset({RequestStatus.PENDING}), frozenset({RequestStatus.ACCEPTED}), STORED_STATUSES],
        [False, True],
        [False, True],
    )
)


@pytest.mark.sqlite_only  # EXPLAIN QUERY PLAN is SQLite's
@pytest.mark.parametrize(
    ("box", "statuses", "descending", "keyset"),
    _SHAPES,
    ids=[
        f"{b}-{'+'.join(sorted(s))}-{'desc' if d else 'asc'}-{'after' if k else 'first'}"
        for b, s, d, k in _SHAPES
    ],
)
async def test_every_list_query_is_a_range_scan_of_a_presence_requests_index(
    db: Database,
    alice: User,
    bob: User,
    carol: User,
    box: str,
    statuses: frozenset[RequestStatus],
    descending: bool,
    keyset: bool,
) -> None:
    first = _pending(bob, alice, 10)

    async def three_requests_one_accepted(tx: Conn) -> None:
        await presence_requests.insert(tx, first)
        await presence_requests.insert(tx, _pending(carol, alice, 20))
        await presence_requests.insert(tx, _pending(alice, bob, 30))
        await presence_requests.mark_accepted(tx, first.id, 40)

    await db.write(three_requests_one_accepted)

    # Record the SQL the module really issues on this connection.
    conn = db.reader
    issued: list[tuple[str, tuple[object, ...]]] = []
    real_execute = conn.execute

    def recording_execute(sql: str, parameters=None):  # type: ignore[no-untyped-def]
        issued.append((sql, tuple(parameters or ())))
        return real_execute(sql, parameters)

    conn.execute = recording_execute  # type: ignore[method-assign]
    try:
        after = (15, "0" * 24) if keyset else None
        await presence_requests.list_for(conn, alice.id, box, statuses, 10, 0, descending, after)
    finally:
        del conn.execute  # back to the class's method

    assert len(issued) == 2  # the page, then the total
    for sql, params in issued:
        async with db.reader.execute(f"EXPLAIN QUERY PLAN {sql}", params) as cur:
            plan = [row[3] for row in await cur.fetchall()]
        scans_of_requests = [step for step in plan if step.startswith(("SEARCH r ", "SCAN r "))]
        assert scans_of_requests, plan
        assert all(" INDEX presence_requests_" in step for step in scans_of_requests), plan
        assert not any(step.startswith("SCAN") for step in plan), plan
        assert not any("USE TEMP B-TREE" in step for step in plan), plan


async def test_list_for_pages_by_keyset_in_both_orders(
    db: Database, alice: User, bob: User, carol: User
) -> None:
    dave = User(new_object_id(), "dave@example.test")  # type: ignore[arg-type]
    made = [_pending(sender, alice, when) for sender, when in ((bob, 1), (carol, 2), (dave, 3))]

    async def dave_and_three_requests(tx: Conn) -> None:
        await tx.execute("INSERT INTO users (id, jid, created_at) VALUES (?, ?, 0)", (dave.id, dave.jid))
        for request in made:
            await presence_requests.insert(tx, request)

    await db.write(dave_and_three_requests)
    ids = [r.id for r in made]

    page, total = await presence_requests.list_for(
        db.reader, alice.id, "received", STORED_STATUSES, 10, 0, False, (1, ids[0])
    )
    assert ([r.id for r in page], total) == (ids[1:], 3)
    page, total = await presence_requests.list_for(
        db.reader, alice.id, "received", STORED_STATUSES, 10, 0, True, (3, ids[2])
    )
    assert ([r.id for r in page], total) == ([ids[1], ids[0]], 3)


async def test_a_page_builds_each_user_once_and_every_row_keeps_its_values(
    db: Database, alice: User, bob: User, carol: User
) -> None:
    made = [_pending(alice, bob, 1), _pending(alice, carol, 2), _pending(bob, carol, 3)]

    async def three(tx: Conn) -> None:
        for request in made:
            await presence_requests.insert(tx, request)

    await db.write(three)
    page, total = await presence_requests.list_for(db.reader, alice.id, "sent", STORED_STATUSES, 10, 0, False)
    assert (page, total) == (made[:2], 2)  # field by field, the users' ids and JIDs included
    assert page[0].from_user is page[1].from_user  # the caller, built once for the page
    # Built without __init__ (storage/presence_requests.py): the same fields, no more, no
    # fewer, still hashable and frozen.
    assert [vars(r) for r in page] == [vars(r) for r in made[:2]]
    assert [vars(r.to_user) for r in page] == [vars(r.to_user) for r in made[:2]]
    assert hash(page[0]) == hash(made[0]) and hash(page[0].to_user) == hash(bob)
    with pytest.raises(dataclasses.FrozenInstanceError):
        page[0].status = RequestStatus.ACCEPTED  # type: ignore[misc]
    (received,), _ = await presence_requests.list_for(db.reader, bob.id, "received", STORED_STATUSES, 10, 0, False)
    assert received == made[0]
    assert await presence_requests.get(db.reader, made[2].id) == made[2]


# ---- tokens -----------------------------------------------------------------------------


async def test_tokens_are_stored_only_as_their_sha256(
    db: Database, identity: Identity, db_path: Path
) -> None:
    token, user = await identity.login("alice@example.test", "alice-pw")
    async with db.reader.execute("SELECT hash, user_id, created_at, expires_at FROM tokens") as cur:
        rows = [tuple(r) for r in await cur.fetchall()]
    now = FixedClock().now_ms()
    assert rows == [(hashlib.sha256(token.encode()).digest(), user.id, now, now + TOKEN_TTL_S * 1000)]
    await db.close()
    for name in (db_path.name, db_path.name + "-wal"):
        file = db_path.parent / name
        if file.exists():
            assert token.encode() not in file.read_bytes()
    await db.open()


async def test_tokens_expire_after_their_ttl(identity: Identity, clock: FixedClock) -> None:
    token, user = await identity.login("alice@example.test", "alice-pw")
    clock.advance(TOKEN_TTL_S * 1000 - 1)
    assert await identity.authenticate(token) == user
    clock.advance(1)
    with pytest.raises(Unauthorized):
        await identity.authenticate(token)


async def test_purge_expired_deletes_only_expired_tokens(db: Database, alice: User, bob: User) -> None:
    async def two_tokens_then_purge(tx: Conn) -> int:
        await tokens.insert(tx, b"old", alice.id, 0, 100)
        await tokens.insert(tx, b"new", bob.id, 0, 101)
        return await tokens.purge_expired(tx, 100)

    assert await db.write(two_tokens_then_purge) == 1
    async with db.reader.execute("SELECT hash FROM tokens") as cur:
        assert [r[0] for r in await cur.fetchall()] == [b"new"]
    assert await tokens.holder(db.reader, b"new", 100) == (bob, 101)
    assert await tokens.holder(db.reader, b"new", 101) is None


async def test_deleting_a_user_deletes_its_tokens(db: Database, alice: User) -> None:
    async def token_then_delete_user(tx: Conn) -> None:
        await tokens.insert(tx, b"t", alice.id, 0, 100)
        await tx.execute("DELETE FROM users WHERE id = ?", (alice.id,))

    await db.write(token_then_delete_user)
    async with db.reader.execute("SELECT count(*) FROM tokens") as cur:
        assert (await cur.fetchone())[0] == 0


# ---- schema 4: one identity per account, roster rows per direction --------------------------


async def test_upgrading_merges_the_spellings_of_one_account(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before schema 4, `carol\\u200b@` (the server logs it in as carol) was a second user:
    the upgrade re-normalises every JID and merges such users into the oldest one."""
    import storage.db

    monkeypatch.setattr(storage.db, "UPGRADES", UPGRADES[:3])
    old = Database(db_path)
    await old.open()
    rows = [
        ("a" * 24, "carol@example.test", 1),
        ("b" * 24, "carol\u200b@example.test", 2),  # same account
        ("c" * 24, "Stra\u00dfe@example.test", 3),  # renamed: strasse
        ("d" * 24, "bob@example.test", 4),
        ("e" * 24, "\u202ebidi@example.test", 5),  # refused by the server: left alone
    ]

    async def legacy(tx) -> None:
        await tx.executemany("INSERT INTO users (id, jid, created_at) VALUES (?, ?, ?)", rows)
        await tx.executemany(
            "INSERT INTO presence_requests (id, from_user_id, to_user_id, status, request_date)"
            " VALUES (?, ?, ?, ?, ?)",
            [
                ("1" * 24, "d" * 24, "a" * 24, "accepted", 10),  # bob -> carol
                ("2" * 24, "d" * 24, "b" * 24, "pending", 11),  # bob -> carol again: a duplicate
                ("3" * 24, "b" * 24, "a" * 24, "pending", 12),  # carol -> carol: goes
                ("4" * 24, "b" * 24, "d" * 24, "pending", 13),  # carol -> bob: kept, moved
            ],
        )
        await tx.execute(
            "INSERT INTO tokens (hash, user_id, created_at, expires_at) VALUES (x'00', ?, 0, 99)", ("b" * 24,)
        )
        await tx.execute(
            "INSERT INTO subscriptions (id, realm, extension, event, subscriber, created_at)"
            " VALUES ('s1', 'example.test', '101', 'presence', 'carol\u200b@example.test', 0)"
        )
        await tx.execute(
            "INSERT INTO outbox (kind, recipient, payload, created_at) VALUES"
            " ('message', 'carol\u200b@example.test', '{}', 0),"
            " ('roster', 'bob@example.test', '{\"jid\":\"carol@example.test\",\"subscription\":\"to\",\"name\":\"carol\"}', 0),"
            " ('roster', 'carol@example.test', '{\"jid\":\"bob@example.test\",\"subscription\":\"remove\",\"name\":\"bob\"}', 0)"
        )

    await old.write(legacy)
    await old.close()
    monkeypatch.setattr(storage.db, "UPGRADES", UPGRADES)

    db = Database(db_path)
    await db.open()
    try:
        async def read(sql: str) -> list[tuple]:
            async with db.reader.execute(sql) as cur:
                return [tuple(r) for r in await cur.fetchall()]

        assert await read("SELECT id, jid, domain FROM users ORDER BY created_at") == [
            ("a" * 24, "carol@example.test", "example.test"),
            ("c" * 24, "strasse@example.test", "example.test"),
            ("d" * 24, "bob@example.test", "example.test"),
            ("e" * 24, "\u202ebidi@example.test", "example.test"),
        ]
        assert await read("SELECT id, from_user_id, to_user_id FROM presence_requests ORDER BY id") == [
            ("1" * 24, "d" * 24, "a" * 24), ("4" * 24, "a" * 24, "d" * 24),
        ]
        assert await read("SELECT user_id FROM tokens") == [("a" * 24,)]
        assert await read("SELECT subscriber FROM subscriptions") == [("carol@example.test",)]
        # Whole-item roster rows became one row per direction, in order, after the others.
        outbox_rows = await read("SELECT kind, recipient, payload FROM outbox ORDER BY id")
        assert [(k, r, json.loads(p)) for k, r, p in outbox_rows] == [
            ("message", "carol@example.test", {}),
            ("roster", "bob@example.test", {"jid": "carol@example.test", "direction": "to", "op": "add", "name": "carol"}),
            ("roster", "bob@example.test", {"jid": "carol@example.test", "direction": "from", "op": "remove"}),
            ("roster", "carol@example.test", {"jid": "bob@example.test", "direction": "to", "op": "remove"}),
            ("roster", "carol@example.test", {"jid": "bob@example.test", "direction": "from", "op": "remove"}),
        ]
    finally:
        await db.close()
