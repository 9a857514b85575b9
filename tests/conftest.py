"""Fixtures every tier may use: a private PostgreSQL cluster for the whole session.

`postgres` (session): a throwaway cluster (scripts/local_postgres.py: initdb in a temp
folder as the `postgres` user, a free loopback port, its socket in the folder), stopped
and removed at the end. It is started only when a test asks for it: the SQLite tiers
run without PostgreSQL installed (`-m "not postgresql"` leaves its tests out). A test
that asks for it fails, never skips, when PostgreSQL is missing: CI installs it
(scripts/install-postgres.sh), so a missing server is a broken setup, not a reason
to test less.
"""

from __future__ import annotations

import itertools
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from local_postgres import LocalPostgres, LocalPostgresError  # noqa: E402

_names = itertools.count(1)


class PostgresCluster:
    """The session's cluster, and fresh databases on it."""

    def __init__(self, server: LocalPostgres) -> None:
        self.server = server

    def new_database(self, prefix: str = "t") -> str:
        """A new, empty database; returns its URL."""
        return self.server.create_database(f"{prefix}_{next(_names)}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    root = Path(tempfile.mkdtemp(prefix="presence-pg-"))
    server = LocalPostgres(root)
    try:
        server.start()
    except LocalPostgresError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL is needed by this test: {exc}", pytrace=False)
    try:
        yield PostgresCluster(server)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
