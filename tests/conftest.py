"""Fixtures every tier may use: a private PostgreSQL cluster for the whole session.

`postgres` (session): a throwaway cluster (scripts/local_postgres.py: initdb in a temp
folder as the `postgres` user, a free loopback port, its socket in the folder), stopped
and removed at the end. It is started only when a test asks for it: the SQLite tiers
run without PostgreSQL installed (`-m "not postgresql"` leaves its tests out). A test
that asks for it fails, never skips, when PostgreSQL is missing: CI installs it
(scripts/install-postgres.sh), so a missing server is a broken setup, not a reason
to test less.

A SIGTERM or SIGHUP to the pytest process (a CI timeout, `timeout`, `kill`, a closed
terminal) stops the run as Ctrl-C does, so that every fixture's teardown still stops
the servers it started (`pytest_configure` below).
"""

from __future__ import annotations

import itertools
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from local_postgres import LocalPostgres, LocalPostgresError  # noqa: E402

_names = itertools.count(1)

# Stopped as Ctrl-C stops a run. Their default action ends the process at once: no
# fixture teardown, no atexit, and the servers the fixtures started (each in a session of
# its own, so the signal never reaches them) are left running without their owner.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_previous_handlers: dict[int, object] = {}


def _stop_as_on_ctrl_c(signum: int, frame: object) -> None:
    """Hand the signal to whatever SIGINT handler is in place: pytest's KeyboardInterrupt
    (it then tears down every fixture, session ones included), or, inside an async test,
    asyncio.Runner's, which first cancels the test's task so that its own `finally`
    blocks run at once, then raises KeyboardInterrupt.

    Once only: a second signal arriving during the teardown is ignored so that the teardown
    the first one asked for completes (SIGKILL still ends a hung one). A Python no-op, not
    SIG_IGN: an ignored signal would stay ignored in every server started afterwards."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, lambda *_: None)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def pytest_configure(config: pytest.Config) -> None:
    for sig in _STOP_SIGNALS:
        _previous_handlers[sig] = signal.signal(sig, _stop_as_on_ctrl_c)
    # A run started with SIGINT ignored (a background job of a script) would get no
    # Runner handler: a KeyboardInterrupt raised anywhere in the event loop instead, which
    # an async test can outlive (seen: test_demo went on to start its next ejabberd, left
    # running). And every child would inherit the ignored SIGINT, which bash cannot trap:
    # run.sh would not stop on the SIGINT the tests send it. SIGINT works as usual here.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        _previous_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_unconfigure(config: pytest.Config) -> None:
    for sig, handler in _previous_handlers.items():
        signal.signal(sig, handler)
    _previous_handlers.clear()


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
