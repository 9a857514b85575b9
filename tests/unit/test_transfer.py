"""`python -m component migrate-storage`: a SQLite database copied into PostgreSQL.

The SQLite side is filled by the real actions (the `db` fixture on SQLite: these
tests name `db_path`); the command runs as a real subprocess against the session's
PostgreSQL cluster; then the two databases must hold the same rows, and the copy must
go on working as the service's database (ids continue, tokens still authenticate).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from component.actions import Identity, PresenceSharing
from component.commands import CreatePresenceRequest, ShareDevice
from component.device_sharing import DeviceSharing
from component.model import BareJid, User
from storage import Database, outbox
from storage.postgres import PostgresDatabase
from unit_rig import SERVED, TOKEN_TTL_S, FakeVerifier

pytestmark = pytest.mark.postgresql

ROOT = Path(__file__).resolve().parents[2]


def migrate(source: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "component", "migrate-storage", "--from", str(source), "--to", url],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )


def sqlite_rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(path) as conn:
        tables = [
            r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {
            t: sorted(tuple(r) for r in conn.execute(f'SELECT * FROM "{t}"')) for t in tables
        }


async def postgres_rows(url: str, tables: list[str]) -> dict[str, list[tuple[object, ...]]]:
    pg = PostgresDatabase(url)
    await pg.open()
    try:
        found = {}
        async with pg.pool.acquire() as raw:
            for table in tables:
                # Same column order as SQLite's (both made by the same migrations).
                found[table] = sorted(tuple(r) for r in await raw.fetch(f'SELECT * FROM "{table}"'))
        return found
    finally:
        await pg.close()


async def test_a_sqlite_database_is_copied_whole_and_works_on_postgresql(
    db: Database, db_path: Path, postgres, identity: Identity, sharing: PresenceSharing,
    device_sharing: DeviceSharing, home, clock,
) -> None:
    # Rows in every table the actions write: users, tokens, a request and its outbox
    # rows, an account with users and devices, shares (one by e-mail: mail_outbox).
    token, alice = await identity.login("alice@example.test", "alice-pw")
    await sharing.create(CreatePresenceRequest(alice, to_jid=BareJid("dave@example.test")))
    await device_sharing.share(ShareDevice(home.alice, home.hall.id, "app", 3600, user="bob@example.test"))
    await device_sharing.share(ShareDevice(home.alice, home.hall.id, "email", 3600, user="stranger@mail.test"))
    # Delivered rows are deleted: ids on PostgreSQL must still go on past them.
    delivered = await db.read(lambda conn: outbox.next_batch(conn, 0, 2))
    await db.write(lambda tx: outbox.delete(tx, [r.id for r in delivered]))
    last_id = max(r.id for r in await db.read(lambda conn: outbox.next_batch(conn, 0, 1000)))
    await db.close()

    before = sqlite_rows(db_path)
    assert all(before[t] for t in ("users", "tokens", "presence_requests", "outbox", "accounts",
                                   "account_users", "devices", "device_shares", "mail_outbox"))
    url = postgres.new_database("transfer")
    done = migrate(db_path, url)
    assert done.returncode == 0, done.stderr
    assert "migrate-storage: copied" in done.stdout
    assert "secret" not in done.stdout + done.stderr

    assert await postgres_rows(url, list(before)) == before

    pg = PostgresDatabase(url)
    await pg.open()
    try:
        # The token issued on SQLite authenticates on PostgreSQL.
        moved = Identity(pg, clock, SERVED, FakeVerifier(), TOKEN_TTL_S)  # type: ignore[arg-type]
        assert await moved.authenticate(token) == User(alice.id, alice.jid)
        # New outbox rows get ids past every id SQLite gave, delivered ones included.
        await pg.write(lambda tx: outbox.add(tx, "message", "alice@example.test", {}, 1))
        rows = await pg.read(lambda conn: outbox.next_batch(conn, last_id, 10))
        assert [r.recipient for r in rows] == ["alice@example.test"]
        assert rows[0].id == last_id + 1
    finally:
        await pg.close()

    # A second copy into the now filled database is refused and changes nothing.
    again = migrate(db_path, url)
    assert again.returncode == 1
    assert "already holds rows" in again.stderr
    assert (await postgres_rows(url, ["users"]))["users"] == before["users"]


async def test_a_missing_source_file_is_refused(tmp_path: Path, postgres) -> None:
    url = postgres.new_database("transfer")
    done = migrate(tmp_path / "nowhere.sqlite3", url)
    assert done.returncode == 1
    assert "no such SQLite file" in done.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://presence:s3cret@db:5432/presence", "postgresql://presence:***@db:5432/presence"),
        ("postgresql://db/presence?user=presence&password=s3cret", "postgresql://db/presence?user=presence&password=***"),
        ("postgresql://u:a@b@db/p?sslmode=require&PASSWORD=x&x=1", "postgresql://u:***@db/p?sslmode=require&PASSWORD=***&x=1"),
        ("postgresql://presence@db/presence", "postgresql://presence@db/presence"),
    ],
)
def test_urls_in_logs_carry_no_password(url: str, shown: str) -> None:
    from storage.postgres import redact

    assert redact(url) == shown
