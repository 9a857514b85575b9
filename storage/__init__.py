"""Persistence: schema, migrations and one repository per aggregate, on SQLite
(aiosqlite, the default) or PostgreSQL (asyncpg).

Nothing here imports slixmpp or aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlite3
from typing import Any

from storage.conn import BodyAwaitedOutside, Conn
from storage.db import DEFAULT_READ_CACHE_MB, Database, SchemaTooNew

if TYPE_CHECKING:
    from storage.postgres import PostgresDatabase

__all__ = ["BodyAwaitedOutside", "Conn", "Database", "IntegrityError", "SchemaTooNew", "database_for", "is_postgres_url"]


def __getattr__(name: str) -> Any:
    # `IntegrityError`: a constraint refused a change (unique, foreign key, check), as
    # either engine raises it. Built on first use: a SQLite-only service never loads
    # asyncpg (a few MB of memory).
    if name == "IntegrityError":
        import asyncpg

        return (sqlite3.IntegrityError, asyncpg.IntegrityConstraintViolationError)
    raise AttributeError(name)


def is_postgres_url(target: str) -> bool:
    return target.startswith(("postgresql://", "postgres://"))


def database_for(
    target: str, pool_size: int = 10, read_cache_mb: int = DEFAULT_READ_CACHE_MB
) -> Database | PostgresDatabase:
    """The database at `target`: a postgresql:// URL (`pool_size` connections), or else
    the path of a SQLite file (`read_cache_mb`: its reader's page cache). Both have the
    same surface (open, write, read, close, state...)."""
    if is_postgres_url(target):
        from storage.postgres import PostgresDatabase

        return PostgresDatabase(target, pool_size)
    return Database(target, read_cache_mb)
