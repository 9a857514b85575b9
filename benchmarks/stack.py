"""The real stack for the benchmark: Prosody on loopback, the service and helper
processes, Prosody accounts written directly, and pre-populated databases.

Every process started here is registered in `PROCS` and killed (its whole process
group) by `kill_all()`, which run.py calls on every exit path, Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import random
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from local_prosody import LocalProsody, _lua_str, ensure_prosody_installed, free_port  # noqa: E402,F401

from component.model import BareJid, PresenceRequest, RequestId, RequestStatus, User, UserId  # noqa: E402
from component.actions import roster_changes  # noqa: E402
from component.notifications import handshake_messages, roster_grant  # noqa: E402
from storage import Database  # noqa: E402

DOMAIN = "example.test"
SERVICE_JID = "presence.example.test"
BASELINE_JID = "baseline.example.test"
# benchmarks/reference_service.py's JID: the reference minimal component (issue #14).
REFERENCE_JID = "reference.example.test"
SECRET = "bench-component-secret"
# The service of another checkout (run.py --against), measured beside this one's.
AGAINST_JID = "against.example.test"
# pg.example.test: the service on PostgreSQL, measured beside the SQLite one (figure 1b).
EXTRA_COMPONENTS = (BASELINE_JID, REFERENCE_JID, "store-small.example.test", "store-large.example.test",
                    "pg.example.test", AGAINST_JID)

PROCS: list[subprocess.Popen] = []


def kill_all() -> None:
    """SIGTERM every process group we started, SIGKILL the ones still there after 5 s."""
    for proc in PROCS:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    for proc in PROCS:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)
    PROCS.clear()


def stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM `proc`'s process group, SIGKILL it after 10 s."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def spawn(argv: list[str], log_path: Path, stdin_pipe: bool = False, cwd: Path = ROOT) -> subprocess.Popen:
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        argv,
        cwd=str(cwd),
        stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdin_pipe else log,
        stderr=log,
        start_new_session=True,  # own process group, so kill_all() reaches its children
    )
    log.close()
    PROCS.append(proc)
    return proc


# ---- Prosody -----------------------------------------------------------------------


class BenchProsody(LocalProsody):
    """LocalProsody with extra components (all privileged) and logging at info, not debug.

    Debug logging writes every stanza to the log file: that would measure the disk,
    not the routing.
    """

    def config_text(self) -> str:
        text = super().config_text()
        grant = '] = { roster = "both"; message = "outgoing"; presence = "managed_entity" };\n'
        line = f"    [{_lua_str(self.component_jid)}{grant}"
        if line not in text or "    debug = " not in text:
            raise RuntimeError("scripts/local_prosody.py config layout changed; update benchmarks/stack.py")
        text = text.replace(line, "".join(f"    [{_lua_str(j)}{grant}" for j in (self.component_jid, *EXTRA_COMPONENTS)))
        text = text.replace("    debug = ", "    info = ")
        for jid in EXTRA_COMPONENTS:
            text += (
                f"\nComponent {_lua_str(jid)}\n"
                f"    component_secret = {_lua_str(self.component_secret)}\n"
                '    modules_enabled = { "privilege" }\n'
            )
        return text


def write_accounts(server: LocalProsody, users: dict[str, str]) -> None:
    """Create Prosody accounts by writing its internal storage directly, exactly as
    `prosodyctl register` does (internal_hashed: SCRAM-SHA-1, 10000 iterations).
    Call before Prosody starts. ~1000x faster than prosodyctl (0.3 s per user)."""
    server.write_config()
    host = "".join(c if c.isalnum() else f"%{ord(c):02x}" for c in server.domain)
    folder = server.data_path / host / "accounts"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder.parent, 0o777)
    os.chmod(folder, 0o777)
    for name, password in users.items():
        salt = str(uuid.uuid4())
        iterations = 10000
        salted = hashlib.pbkdf2_hmac("sha1", password.encode(), salt.encode(), iterations)
        stored_key = hashlib.sha1(hmac.new(salted, b"Client Key", "sha1").digest()).hexdigest()
        server_key = hmac.new(salted, b"Server Key", "sha1").hexdigest()
        (folder / f"{name}.dat").write_text(
            "return {\n"
            f'\t["salt"] = "{salt}";\n'
            f'\t["iteration_count"] = {iterations};\n'
            f'\t["stored_key"] = "{stored_key}";\n'
            f'\t["server_key"] = "{server_key}";\n'
            "};\n"
        )


def write_rosters(server: LocalProsody, rosters: dict[str, list[tuple[str, str, str | None, tuple[str, ...]]]]) -> None:
    """Give accounts rosters by writing Prosody's internal storage directly (the Lua
    tables `core.rostermanager` saves: data/HOST/roster/USER.dat, one entry per contact
    plus the `[false]` metadata with the roster version and pending requests).
    `rosters` maps an account name to (contact JID, subscription, name or None, groups).
    Call before Prosody starts, after write_accounts."""
    server.write_config()
    host = "".join(c if c.isalnum() else f"%{ord(c):02x}" for c in server.domain)
    folder = server.data_path / host / "roster"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o777)
    for owner, items in rosters.items():
        lines = ["return {", '\t[false] = {', '\t\t["version"] = 1;', '\t\t["pending"] = {};', "\t};"]
        for contact, sub, name, groups in items:
            lines.append(f"\t[{_lua_str(contact)}] = {{")
            lines.append(f'\t\t["subscription"] = {_lua_str(sub)};')
            if name is not None:
                lines.append(f'\t\t["name"] = {_lua_str(name)};')
            lines.append('\t\t["groups"] = {' + "".join(f" [{_lua_str(g)}] = true;" for g in groups) + " };")
            lines.append("\t};")
        lines.append("};")
        (folder / f"{owner}.dat").write_text("\n".join(lines) + "\n")


# ---- the service -------------------------------------------------------------------


def read_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (kB) of a process, from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds used so far by a process (all its threads)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by named processes between start() and stop(), summed over rounds.

    With the wall time of those rounds it also says how busy the machine's CPUs were:
    near 100% means the figure is bound by CPU shared among the processes, not by
    one process's latency.
    """

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.used = {name: 0.0 for name in pids}
        self.wall = 0.0
        self._at: dict[str, float] = {}
        self._started = 0.0

    def start(self) -> None:
        self._at = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._started = time.monotonic()

    def stop(self) -> None:
        self.wall += time.monotonic() - self._started
        for name, pid in self.pids.items():
            self.used[name] += cpu_seconds(pid) - self._at[name]

    def per(self, count: int, unit: str) -> str:
        """e.g. 'CPU per request: service 310 us, prosody 120 us (all 430 us; 2 CPUs 81% busy)'."""
        parts = ", ".join(f"{name} {1e6 * used / max(count, 1):.0f} us" for name, used in self.used.items())
        total = sum(self.used.values())
        busy = total / (self.wall * (os.cpu_count() or 1)) if self.wall else 0.0
        return (f"CPU per {unit}: {parts} (all {1e6 * total / max(count, 1):.0f} us; "
                f"{os.cpu_count()} CPUs {100 * busy:.0f}% busy with these)")


class ServiceProcess:
    """`python -m component --config FILE` in its own process."""

    def __init__(self, workdir: Path, name: str, db_path: Path, server: LocalProsody,
                 component_jid: str = SERVICE_JID, admin_token: str = "bench-admin",
                 auth: dict[str, Any] | None = None, storage_url: str | None = None,
                 component_port: int | None = None, checkout: Path = ROOT) -> None:
        """`auth` adds [auth] keys (numbers, booleans, strings) to the service's config;
        `storage_url` (postgresql://) stores in PostgreSQL instead of the file `db_path`;
        `component_port` replaces Prosody's component port (a closed port: no XMPP
        session, nothing delivered, while REST and logins over c2s still work);
        `checkout` is the source tree whose service runs (another one: run.py --against),
        with this interpreter and its packages."""
        self.workdir = workdir
        self.checkout = checkout
        self.name = name
        # Where wait_outbox_empty() looks: the SQLite file, or the PostgreSQL URL.
        self.db_path: Path | str = storage_url or db_path
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / f"{name}.toml"
        self.log_path = workdir / f"{name}.log"
        self.config_path.write_text(
            "[component]\n"
            f'jid = "{component_jid}"\n'
            f'secret = "{server.component_secret}"\n'
            'server_host = "127.0.0.1"\n'
            f"server_port = {component_port or server.component_port}\n"
            "[http]\n"
            'host = "127.0.0.1"\n'
            f"port = {self.port}\n"
            "[storage]\n"
            + (f'url = "{storage_url}"\n' if storage_url else f'path = "{db_path}"\n')
            + "[auth]\n"
            f'admin_token = "{admin_token}"\n'
            'c2s_host = "127.0.0.1"\n'
            f"c2s_port = {server.c2s_port}\n"
            "c2s_allow_plaintext = true\n"
            + "".join(f"{key} = {json.dumps(value)}\n" for key, value in (auth or {}).items())
        )
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.proc = spawn([sys.executable, "-m", "component", "--config", str(self.config_path)], self.log_path,
                          cwd=self.checkout)

    async def wait_healthy(self, timeout: float = 60, want: dict[str, str] | None = None) -> None:
        """Until /healthz answers 200 with `want` (default: connected, storage ok, roster granted)."""
        deadline = time.monotonic() + timeout
        want = want or {"xmpp": "connected", "storage": "ok", "roster": "granted"}
        last: Any = None
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"service {self.name} exited ({self.proc.returncode}); see {self.log_path}")
                try:
                    async with http.get(f"{self.base_url}/healthz") as resp:
                        last = (resp.status, await resp.json())
                        if resp.status == 200 and {k: last[1].get(k) for k in want} == want:
                            return
                except (aiohttp.ClientError, ValueError):
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"service {self.name} not healthy within {timeout}s (last {last}); see {self.log_path}")

    def memory(self) -> dict[str, int]:
        return read_status(self.pid)

    def stop(self) -> None:
        stop(self.proc)


class ReferenceProcess:
    """benchmarks/reference_service.py in its own process, with the users and tokens of
    `sessions` ((token, user id, bare JID) each); with `server`, its component connects
    there as REFERENCE_JID, without it it runs `--no-xmpp`."""

    def __init__(self, workdir: Path, name: str, sessions: list[tuple[str, str, str]],
                 server: LocalProsody | None = None, domain: str = DOMAIN) -> None:
        self.name = name
        self.db_path = workdir / f"{name}.sqlite3"  # wait_outbox_empty() works on it
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}.log"
        tokens = workdir / f"{name}-tokens.json"
        tokens.write_text(json.dumps([{"token": t, "userId": u, "jid": j} for t, u, j in sessions]))
        self.argv = [sys.executable, str(HERE / "reference_service.py"), "--db", str(self.db_path),
                     "--port", str(self.port), "--tokens", str(tokens)]
        if server is None:
            self.argv.append("--no-xmpp")
        else:
            self.argv += ["--jid", REFERENCE_JID, "--secret", server.component_secret,
                          "--xmpp-port", str(server.component_port), "--domain", domain]
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 60) -> None:
        """Start it and wait until `GET /pending` answers."""
        self.proc = spawn(self.argv, self.log_path)
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log_path}")
                try:
                    async with http.get(f"{self.base_url}/pending") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} not up within {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        stop(self.proc)


def outbox_count(db_path: Path) -> int:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    finally:
        conn.close()


async def wait_outbox_empty(db_path: Path | str, timeout: float = 300, poll: float = 0.02) -> float:
    """Poll the service's database until its outbox is empty; returns time.monotonic() then."""
    if isinstance(db_path, str) and db_path.startswith("postgresql://"):
        return await _wait_outbox_empty_pg(db_path, timeout, poll)
    deadline = time.monotonic() + timeout
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        while True:
            if conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise RuntimeError(f"outbox of {db_path} not empty after {timeout}s")
            await asyncio.sleep(poll)
    finally:
        conn.close()


async def _wait_outbox_empty_pg(url: str, timeout: float, poll: float) -> float:
    import asyncpg

    deadline = time.monotonic() + timeout
    conn = await asyncpg.connect(url)
    try:
        while True:
            if await conn.fetchval("SELECT count(*) FROM outbox") == 0:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise RuntimeError(f"outbox of the PostgreSQL database not empty after {timeout}s")
            await asyncio.sleep(poll)
    finally:
        await conn.close()


# ---- helper processes with a JSON-lines protocol -----------------------------------


class LineProcess:
    """A helper subprocess driven by JSON lines (benchmarks/clients.py, baseline_component.py)."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.proc = spawn(argv, log_path, stdin_pipe=True)

    async def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout)
        if not line:
            raise RuntimeError(f"helper {self.proc.args[1]} exited ({self.proc.poll()})")
        return json.loads(line)

    async def call(self, cmd: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        return await self.read(timeout)

    def quit(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b'{"cmd": "quit"}\n')
            self.proc.stdin.flush()
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - kill_all() finishes the job
            pass


# ---- pre-populated databases -------------------------------------------------------


@dataclass
class PopulatedDb:
    path: Path
    rows: int
    measured_user_id: str
    measured_token: str
    outbox_rows: int
    seconds: float


def populate_db(path: Path, rows: int, outbox_jids: list[str], outbox_rows: int = 1000,
                measured_received: int = 200, seed: int = 5) -> PopulatedDb:
    """A database with the project's own schema (migrations run by storage.Database) and
    `rows` presence requests: one measured user who received `measured_received`
    requests, the rest spread over many users (about 50 per user), 70% accepted;
    plus a token for the measured user and `outbox_rows` undelivered outbox rows
    (what accepts leave: two management messages and two roster items each)
    addressed to `outbox_jids` (real accounts)."""
    started = time.monotonic()

    async def migrate() -> None:
        db = Database(path)
        await db.open()
        await db.close()

    asyncio.run(migrate())
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    year = 365 * 86400 * 1000
    n_users = max(measured_received + 50, rows // 50)
    user_ids = [secrets.token_hex(12) for _ in range(n_users)]
    measured_id = secrets.token_hex(12)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = DELETE")  # bulk load without a WAL the size of the table
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -400000")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO users (id, jid, created_at) VALUES (?, ?, ?)",
        [(uid, f"user{i}@{DOMAIN}", now - year) for i, uid in enumerate(user_ids)]
        + [(measured_id, f"measured@{DOMAIN}", now - year)],
    )

    def request_rows():
        for k in range(measured_received):
            yield _request_row(rng, user_ids[k], measured_id, now, year)
        spread = rows - measured_received
        for k in range(spread):
            a, d = k % n_users, 1 + k // n_users
            yield _request_row(rng, user_ids[a], user_ids[(a + d) % n_users], now, year)

    conn.executemany(
        "INSERT INTO presence_requests (id, from_user_id, to_user_id, status, request_date, acceptation_date)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        request_rows(),
    )
    token = secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO tokens (hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
        (hashlib.sha256(token.encode()).digest(), measured_id, now, now + year),
    )
    outbox = []
    k = 0
    while len(outbox) < outbox_rows:
        a, b = outbox_jids[k % len(outbox_jids)], outbox_jids[(k + 1) % len(outbox_jids)]
        k += 1
        request = PresenceRequest(RequestId(secrets.token_hex(12)), User(UserId("0" * 24), BareJid(a)),
                                  User(UserId("1" * 24), BareJid(b)), RequestStatus.ACCEPTED, now, now)
        notes = handshake_messages(request, "update", "accepted") + [
            roster_grant(BareJid(a), BareJid(b), "to"), roster_grant(BareJid(b), BareJid(a), "from")]
        for n in notes:
            outbox.append((n.kind, n.recipient, json.dumps(n.payload, separators=(",", ":")), now))
    conn.executemany("INSERT INTO outbox (kind, recipient, payload, created_at) VALUES (?, ?, ?, ?)",
                     outbox[:outbox_rows])
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode = WAL")  # as the service leaves it
    conn.close()
    return PopulatedDb(path, rows, measured_id, token, outbox_rows, time.monotonic() - started)


def cycle_rows(pairs: list[tuple[str, str]]) -> list[tuple[str, str, dict[str, Any]]]:
    """The outbox rows (kind, recipient, payload) that a create, an accept and an
    interrupt of a request from a to b write, for each (a, b) of `pairs` (bare JIDs),
    built as the service builds them: 2 management messages for each transition, plus
    the two roster grants of the accept and the two revokes of the interrupt (10 rows)."""
    out = []
    for a, b in pairs:
        request = PresenceRequest(RequestId(secrets.token_hex(12)), User(UserId("0" * 24), BareJid(a)),
                                  User(UserId("1" * 24), BareJid(b)), RequestStatus.PENDING, 0, None)
        notes = (handshake_messages(request, "create", "pending")
                 + handshake_messages(request, "update", "accepted") + roster_changes(request, granted=True)
                 + handshake_messages(request, "delete", "interrupted") + roster_changes(request, granted=False))
        out += [(n.kind, n.recipient, n.payload) for n in notes]
    return out


def insert_outbox(db_path: Path, rows: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Commit `rows` to a (running) service's SQLite outbox in one transaction, as
    another process (`python -m component resync`) would."""
    now = int(time.time() * 1000)
    conn = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO outbox (kind, recipient, payload, created_at) VALUES (?, ?, ?, ?)",
                         [(k, r, json.dumps(p, separators=(",", ":")), now) for k, r, p in rows])
        conn.execute("COMMIT")
    finally:
        conn.close()


def _request_row(rng: random.Random, from_id: str, to_id: str, now: int, year: int) -> tuple:
    date = now - rng.randrange(year)
    if rng.random() < 0.7:
        return (secrets.token_hex(12), from_id, to_id, "accepted", date, date + rng.randrange(86400 * 1000))
    return (secrets.token_hex(12), from_id, to_id, "pending", date, None)
