"""One service per SQLite database: an exclusive lock held for the process's lifetime.

ejabberd load-balances several connections of one component JID; two services on one
database would both dispatch its outbox (every notification sent twice, roster changes
raced). With the SQLite default, a second `python -m component` on the same database
refuses to start (exit status 2). Several connections for one component JID need the
PostgreSQL setup, where one instance at a time connects (README, "ejabberd").

The lock is `flock(2)` on `PATH.lock` beside the database: the kernel releases it when
the process ends, however it ends (SIGKILL included), so no stale lock is left behind.
`python -m component resync` takes no lock: it only writes rows for the service to send.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class DatabaseInUse(RuntimeError):
    """Another process holds the database's instance lock."""


class InstanceLock:
    def __init__(self, db_path: str | Path) -> None:
        self.path = Path(f"{db_path}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting; DatabaseInUse if another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise DatabaseInUse(
                f"another service (pid {holder or 'unknown'}) already runs on this database ({self.path} is locked)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
