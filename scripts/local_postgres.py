#!/usr/bin/env python3
"""Throwaway, loopback-only PostgreSQL cluster for development and tests.

Stdlib only (Python 3.11). Usable as a module::

    from local_postgres import LocalPostgres
    with LocalPostgres(Path(tmp)) as pg:          # initdb + start
        url = pg.create_database("presence")      # postgresql://postgres@127.0.0.1:PORT/presence
        ...

and as a CLI (a cluster for the demo or a benchmark; Ctrl-C or SIGTERM stops and removes it)::

    python scripts/local_postgres.py up --dir /tmp/pg --database presence

The cluster is private: `initdb` in the given folder run as the `postgres` user
(PostgreSQL refuses to run as root; the folder is chowned to it), listening on a free
port of 127.0.0.1 only, its unix socket in the folder too, trust authentication (only
loopback and the folder's socket reach it), fsync kept on (the service's durability
is what the tests check). `stop()` stops it; the folder is the caller's to remove.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from loopback import forget_at_exit, free_port, stop_at_exit

__all__ = ["LocalPostgres", "LocalPostgresError", "find_bin", "free_port"]

SYSTEM_USER = "postgres"


class LocalPostgresError(RuntimeError):
    """PostgreSQL could not be found, initialised, started or driven."""


def _log(msg: str) -> None:
    print(f"[local_postgres] {msg}", file=sys.stderr, flush=True)


def find_bin() -> Path | None:
    """The newest installed server binaries (Debian: /usr/lib/postgresql/N/bin)."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class LocalPostgres:
    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.logfile = self.root / "postgres.log"
        self.port = port or free_port()
        self.bin = find_bin()
        self._process: subprocess.Popen[bytes] | None = None

    # -- running commands as the postgres user -------------------------------------
    def _demote(self):
        if os.geteuid() != 0:
            return None
        entry = pwd.getpwnam(SYSTEM_USER)

        def drop() -> None:
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)

        return drop

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _tool(self, name: str) -> str:
        if self.bin is None or not (self.bin / name).exists():
            raise LocalPostgresError(
                f"PostgreSQL's {name} not found (install it: bash scripts/install-postgres.sh)"
            )
        return str(self.bin / name)

    @property
    def url(self) -> str:
        return f"postgresql://{SYSTEM_USER}@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://{SYSTEM_USER}@127.0.0.1:{self.port}/{database}"

    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self, timeout: float = 30) -> "LocalPostgres":
        if self.is_running():
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        self._chown(self.root)
        # The folder's parents must be traversable by the postgres user (pytest's tmp is 0700).
        for parent in self.root.parents:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if os.geteuid() == 0 and not mode & 0o001:
                os.chmod(parent, mode | 0o001)
        self.socket_dir.mkdir(exist_ok=True)
        self._chown(self.socket_dir)
        if not (self.data / "PG_VERSION").exists():
            result = subprocess.run(
                [self._tool("initdb"), "-D", str(self.data), "-U", SYSTEM_USER,
                 "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"],
                preexec_fn=self._demote(), capture_output=True, cwd=self.root,
            )
            if result.returncode != 0:
                raise LocalPostgresError("initdb failed: " + result.stderr.decode(errors="replace"))
        log = open(self.logfile, "ab")
        self._chown(self.logfile)
        self._process = subprocess.Popen(
            [self._tool("postgres"), "-D", str(self.data),
             "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
             "-c", f"unix_socket_directories={self.socket_dir}",
             "-c", "max_connections=200", "-c", "shared_buffers=64MB",
             "-c", "log_min_messages=warning"],
            preexec_fn=self._demote(), stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
            start_new_session=True,
        )
        log.close()
        stop_at_exit(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise LocalPostgresError("postgres exited at start:\n" + self.log_tail())
            ready = subprocess.run(
                [self._tool("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
            )
            if ready.returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()
        raise LocalPostgresError("postgres did not get ready in time:\n" + self.log_tail())

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [self._tool("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SYSTEM_USER,
             "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
            capture_output=True,
        )
        if result.returncode != 0:
            raise LocalPostgresError(f"psql failed: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode()

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self, timeout: float = 15) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        forget_at_exit(self)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # "fast" shutdown: disconnect clients, stop
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> "LocalPostgres":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalPostgres(root={str(self.root)!r}, port={self.port})"


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _cmd_up(args: argparse.Namespace) -> int:
    # SIGTERM stops it as Ctrl-C does (a supervisor, or a shell that ignores SIGINT in
    # background jobs): the cluster is stopped, not left running without its owner.
    signal.signal(signal.SIGTERM, _interrupt)
    root = Path(args.dir)
    with LocalPostgres(root) as pg:
        url = pg.create_database(args.database) if args.database else pg.url
        print(url, flush=True)
        _log(f"running on 127.0.0.1:{pg.port}; Ctrl-C stops it")
        try:
            while pg.is_running():
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a private cluster in the foreground")
    up.add_argument("--dir", required=True)
    up.add_argument("--database", default="presence")
    up.add_argument("--keep", action="store_true", help="keep the folder afterwards")
    up.set_defaults(fn=_cmd_up)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
