"""Moving a deployment: copy a SQLite database into an empty PostgreSQL one.

`python -m component migrate-storage --from PATH --to URL` (component/__main__.py).
Both databases are first brought to the current schema (the SQLite file as the
service would at its start; the PostgreSQL one from nothing), so the two have the
same tables and columns; then every row of every table is copied in one PostgreSQL
transaction (COPY, parents before the tables that refer to them), the identity
sequences are moved past the copied ids, and the row counts are compared. Nothing
is written unless the PostgreSQL database holds no row yet; a failure leaves it
as empty as it was.

Stop the service first: rows committed to the SQLite file during the copy would
not be in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from storage.db import Database
from storage.postgres import PostgresDatabase

CHUNK = 5000


class TransferRefused(RuntimeError):
    """The copy cannot be made (a missing file, a target that already holds rows)."""


def _tables_in_order(src: sqlite3.Connection) -> list[str]:
    """The tables to copy, each after the tables it refers to."""
    names = [
        r[0] for r in src.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT LIKE 'sqlite_%' AND name <> 'schema_version' ORDER BY name"
        )
    ]
    parents = {
        name: {r[2] for r in src.execute(f'PRAGMA foreign_key_list("{name}")')} - {name}
        for name in names
    }
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [n for n in names if n not in ordered and parents[n] <= set(ordered)]
        if not ready:
            raise TransferRefused("the tables' foreign keys form a cycle")
        ordered.extend(ready)
    return ordered


def _columns(src: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in src.execute(f'PRAGMA table_info("{table}")')]


def _last_id(src: sqlite3.Connection, table: str) -> int:
    try:
        row = src.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    except sqlite3.OperationalError:  # no AUTOINCREMENT table was ever written
        return 0
    return int(row[0]) if row else 0


async def copy_sqlite_to_postgres(path: str | Path, url: str) -> dict[str, int]:
    """Copy every row of the SQLite file at `path` into the empty PostgreSQL database
    at `url`; returns the rows copied per table."""
    if not Path(path).is_file():
        raise TransferRefused(f"{path}: no such SQLite file")
    source = Database(path)
    await source.open()  # the current schema, as the service would make it
    await source.close()
    target = PostgresDatabase(url, pool_size=2)
    await target.open()
    try:
        src = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, check_same_thread=False)
        try:
            tables = _tables_in_order(src)
            async with target.pool.acquire() as raw:
                for table in tables:
                    if await raw.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{table}")'):
                        raise TransferRefused(
                            f"the PostgreSQL database already holds rows (table {table}):"
                            " migrate-storage only fills an empty one"
                        )
                copied: dict[str, int] = {}
                async with raw.transaction():
                    for table in tables:
                        columns = _columns(src, table)
                        cur = src.execute(f'SELECT {", ".join(columns)} FROM "{table}"')
                        copied[table] = 0
                        while rows := await asyncio.to_thread(cur.fetchmany, CHUNK):
                            await raw.copy_records_to_table(table, records=rows, columns=columns)
                            copied[table] += len(rows)
                    for table in tables:
                        # Identity columns (INTEGER PRIMARY KEY AUTOINCREMENT on SQLite):
                        # the next id follows the highest copied, as SQLite's would.
                        # the next id follows the last SQLite gave (sqlite_sequence: rows
                        # delivered and deleted since count too), as SQLite's would.
                        if "id" not in _columns(src, table):
                            continue
                        sequence = await raw.fetchval("SELECT pg_get_serial_sequence($1, 'id')", table)
                        if sequence is not None:
                            last = max(_last_id(src, table), await raw.fetchval(
                                f'SELECT COALESCE(max(id), 0) FROM "{table}"'))
                            await raw.execute("SELECT setval($1, $2, false)", sequence, last + 1)
                    for table in tables:
                        there = await raw.fetchval(f'SELECT count(*) FROM "{table}"')
                        if there != copied[table]:
                            raise TransferRefused(f"{table}: copied {copied[table]} rows, found {there}")
                    # The copied outbox rows wait for the service: tell any instance listening.
                    await raw.execute("SELECT pg_notify('outbox', ''), pg_notify('mail_outbox', '')")
        finally:
            src.close()
    finally:
        await target.close()
    return copied
