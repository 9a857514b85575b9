#!/usr/bin/env python3
"""Benchmark of the presence-consent service on the real stack (issue #5).

    python benchmarks/run.py            # full run (several minutes), exit 1 if a target is missed
    python benchmarks/run.py --quick    # smoke run (tiny sizes, well under a minute), never fails on targets
    python benchmarks/run.py --only reads,stored   # some figures (names: --help)

Prosody runs on loopback, the service runs as `python -m component --config FILE`
in its own process, real slixmpp clients run in a helper process, and the load
generator (aiohttp client, 32 concurrent workers) runs here. Every figure is
measured beside its own baseline in the same run, `--repeats` times (medians
reported), so the ratio holds on a noisy machine. See benchmarks/README.md.

Exit status: 0 all targets met (or --quick), 1 a target missed (full run only),
2 the benchmark itself failed (an error answer, a lost message, a process died).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import stack  # noqa: E402
from local_postgres import LocalPostgres  # noqa: E402
from stack import (  # noqa: E402
    BASELINE_JID,
    DOMAIN,
    HERE,
    SECRET,
    SERVICE_JID,
    BenchProsody,
    CpuMeter,
    LineProcess,
    ServiceProcess,
    free_port,
    populate_db,
    wait_outbox_empty,
    write_accounts,
)

WORKERS = 32  # concurrent REST clients
READERS = range(8)  # the first 8 REST-only users make the reads figures' requests
ROSTER_CONCURRENCY = 20  # the service's default max_concurrent_iqs
PRESENCES = "/api/rainbow/enduser/v1.0/users/{}/presences"
LOGIN = "/api/rainbow/authentication/v1.0/login"

SIZES: dict[str, dict[str, int]] = {
    # connected: users with a live XMPP client; rest_only: users that only use REST
    # (offline for XMPP); cycles: create+accept+interrupt cycles per round.
    "full": dict(connected=96, rest_only=160, cycles=1000, reads=6000, read_page=20,
                 small_rows=10_000, large_rows=1_000_000, latency_requests=1000, warmup=32),
    "quick": dict(connected=16, rest_only=40, cycles=60, reads=200, read_page=20,
                  small_rows=1_000, large_rows=10_000, latency_requests=40, warmup=8),
}


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """The benchmark could not measure (not a missed target)."""


# ---- users and pairs -----------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    name: str
    token: str
    user_id: str

    @property
    def jid(self) -> str:
        return f"{self.name}@{DOMAIN}"

    @property
    def presences(self) -> str:
        return PRESENCES.format(self.user_id)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class PairPool:
    """Distinct directed (sender, receiver) pairs, each used once in the whole run
    (a live request blocks its pair: 409)."""

    def __init__(self, names: list[str], seed: int) -> None:
        pairs = [(a, b) for a in names for b in names if a != b]
        random.Random(seed).shuffle(pairs)
        self._it = iter(pairs)
        self.size = len(pairs)

    def take(self, n: int) -> list[tuple[str, str]]:
        out = list(itertools.islice(self._it, n))
        if len(out) < n:
            raise BenchError(f"pair pool exhausted (size {self.size}); register more users")
        return out


def password(name: str) -> str:
    return f"pw-{name}"


async def login_all(http: aiohttp.ClientSession, base: str, names: list[str]) -> dict[str, Session]:
    sem = asyncio.Semaphore(8)  # the service's default max_concurrent_logins

    async def one(name: str) -> Session:
        creds = base64.b64encode(f"{name}@{DOMAIN}:{password(name)}".encode()).decode()
        async with sem, http.get(base + LOGIN, headers={"Authorization": f"Basic {creds}"}) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise BenchError(f"login of {name} failed: {resp.status} {body}")
        return Session(name, body["token"], body["loggedInUser"]["id"])

    return {s.name: s for s in await asyncio.gather(*(one(n) for n in names))}


# ---- the load generator --------------------------------------------------------------


@dataclass
class LoadResult:
    elapsed: float
    requests: int
    ids: list[str] = field(default_factory=list)


async def _call(http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str],
                body: dict[str, Any] | None = None) -> dict[str, Any]:
    async with http.request(method, url, json=body, headers=headers) as resp:
        data = await resp.json(content_type=None)
        if resp.status != 200:
            raise BenchError(f"{method} {url} -> {resp.status} {data}")
        return data


async def run_workers(jobs: list[Any], work, workers: int = WORKERS) -> float:
    """`workers` coroutines take jobs from one queue; returns the elapsed seconds."""
    it = iter(jobs)

    async def worker() -> None:
        for job in it:
            await work(job)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(workers, len(jobs)))))
    return time.perf_counter() - started


async def cycles(http: aiohttp.ClientSession, bases: list[str], sessions: list[dict[str, Session]],
                 pairs: list[tuple[str, str]]) -> LoadResult:
    """One full consent cycle per pair: POST create (as the sender), POST accept and POST
    interrupt (as the receiver). With several `bases` (instances behind a load balancer),
    job i goes to instance i mod n, with that instance's sessions."""

    async def work(job: tuple[int, tuple[str, str]]) -> None:
        i, (a, b) = job
        base, who = bases[i % len(bases)], sessions[i % len(bases)]
        sender, receiver = who[a], who[b]
        created = await _call(http, "POST", base + sender.presences, sender.headers, {"toUserId": receiver.user_id})
        url = f"{base}{receiver.presences}/{created['data']['id']}"
        await _call(http, "POST", url + "/accept", receiver.headers)
        await _call(http, "POST", url + "/interrupt", receiver.headers)

    return LoadResult(await run_workers(list(enumerate(pairs)), work), 3 * len(pairs))


async def creates(http: aiohttp.ClientSession, base: str, sessions: dict[str, Session],
                  pairs: list[tuple[str, str]]) -> LoadResult:
    ids: dict[tuple[str, str], str] = {}

    async def work(pair: tuple[str, str]) -> None:
        sender, receiver = sessions[pair[0]], sessions[pair[1]]
        created = await _call(http, "POST", base + sender.presences, sender.headers,
                              {"toUserId": receiver.user_id})
        ids[pair] = created["data"]["id"]

    elapsed = await run_workers(pairs, work)
    return LoadResult(elapsed, len(pairs), [ids[p] for p in pairs])


async def accepts(http: aiohttp.ClientSession, base: str, sessions: dict[str, Session],
                  pairs: list[tuple[str, str]], ids: list[str]) -> LoadResult:
    async def work(job: tuple[tuple[str, str], str]) -> None:
        receiver = sessions[job[0][1]]
        await _call(http, "POST", f"{base}{receiver.presences}/{job[1]}/accept", receiver.headers)

    return LoadResult(await run_workers(list(zip(pairs, ids)), work), len(pairs))


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def list_latencies(targets: dict[str, tuple[str, str, str]], n: int, warmup: int,
                         limit: int = 100) -> dict[str, list[float]]:
    """`n` GET .../presences/received per target (label: base URL, user id, token), the
    first page of `limit` (100 being the API's default) of the 200 the measured user
    received, one request at a time, the targets taking turns request by request (which
    one goes first alternating), so that a slow spell of the machine falls on each alike;
    latencies in ms per label."""
    query = "" if limit == 100 else f"?limit={limit}"
    urls = {label: base + PRESENCES.format(user_id) + "/received" + query
            for label, (base, user_id, _token) in targets.items()}
    headers = {label: {"Authorization": f"Bearer {token}"} for label, (_b, _u, token) in targets.items()}
    out: dict[str, list[float]] = {label: [] for label in targets}
    labels = list(targets)
    page = min(limit, 200)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=len(labels))) as http:
        for i in range(warmup + n):
            for label in labels if i % 2 == 0 else labels[::-1]:
                started = time.perf_counter()
                async with http.get(urls[label], headers=headers[label]) as resp:
                    raw = await resp.read()
                took = (time.perf_counter() - started) * 1000
                if resp.status != 200:
                    raise BenchError(f"list received ({label}) -> {resp.status} {raw[:200]!r}")
                body = json.loads(raw)
                if body["total"] != 200 or len(body["data"]) != page:
                    raise BenchError(f"list received ({label}): total {body['total']}, page {len(body['data'])};"
                                     f" expected 200, {page}")
                if i >= warmup:
                    out[label].append(took)
    return out


# ---- profiling (optional) --------------------------------------------------------------


# py-spy's sampling (--profile-gil: only the samples holding the GIL, the interpreter
# time a GIL-bound process spends on each frame).
PY_SPY_SAMPLES = ["--idle"]


PY_SPY_MISSING = "--profile needs py-spy: .venv/bin/pip install py-spy"


def py_spy() -> str | None:
    """py-spy from the venv, else from PATH; None when neither has it."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


@contextlib.asynccontextmanager
async def profiled(pid: int, out_dir: Path | None, name: str):
    """With --profile DIR: py-spy records the process `pid` while the block runs (every
    sample, idle ones included; with --profile-gil only those holding the GIL)."""
    exe = py_spy()
    if out_dir is None or exe is None:
        yield
        return
    out = out_dir / f"{name}.txt"
    proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", "250", "--nonblocking", "--threads", *PY_SPY_SAMPLES,
                             "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=open(out_dir / f"{name}.log", "ab"),
                            start_new_session=True)
    stack.PROCS.append(proc)
    await asyncio.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.to_thread(proc.wait, 30)


# ---- results -------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    value: str
    baseline: str
    ratio: str
    target: str
    ok: bool | None  # None: informational
    detail: str = ""


def med(values: list[float]) -> float:
    return statistics.median(values)


def ratio(value: float, baseline: float) -> float | None:
    """value / baseline, or None when the baseline measured 0: CPU under /proc's 10 ms
    tick in most rounds (seen in --quick runs, whose rounds are tiny), so there is no
    ratio to print or to judge."""
    return value / baseline if baseline else None


def fmt_ratio(r: float | None, unit: str = "") -> str:
    return "n/a (baseline 0)" if r is None else f"{r:.2f}{unit}"


def meets(r: float | None, target: Callable[[float], bool]) -> bool | None:
    """The target's verdict on a ratio; None (not judged) when there is no ratio."""
    return None if r is None else target(r)


def rows_label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def fmt_list(values: list[float], digits: int = 0) -> str:
    return "[" + ", ".join(f"{v:.{digits}f}" for v in values) + "]"


def machine_info() -> list[str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    # `prosody --version` hangs without a terminal: read the version file Debian installs.
    prosody = "unknown"
    with contextlib.suppress(OSError):
        prosody = "Prosody " + Path("/usr/lib/prosody/prosody.version").read_text().strip()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        deb = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "prosody"], capture_output=True,
                             text=True, timeout=10, stdin=subprocess.DEVNULL).stdout.strip()
        if deb:
            prosody += f" (Debian package {deb})"
    import aiosqlite
    import slixmpp
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"nproc: {os.cpu_count()} (usable: {len(os.sched_getaffinity(0))}); load average at start: {load}",
        f"CPU: {model}",
        f"memory: {mem}",
        f"Python: {platform.python_version()} ({sys.executable}); aiohttp {aiohttp.__version__}, "
        f"slixmpp {slixmpp.__version__}, aiosqlite {aiosqlite.__version__}, SQLite {__import__('sqlite3').sqlite_version}",
        f"Prosody: {prosody or 'unknown'}",
        f"kernel: {platform.platform()}",
    ]


def print_table(rows: list[Row], info: list[str], mode: str, notes: list[str]) -> None:
    headers = ("figure", "value", "baseline (same run)", "ratio", "target", "result")
    cells = [(r.figure, r.value, r.baseline, r.ratio, r.target,
              "PASS" if r.ok else "FAIL" if r.ok is False else "info" if r.target == "-" else "n/a")
             for r in rows]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    print()
    print(f"presence-consent benchmark ({mode} run)")
    for item in info:
        print(f"  {item}")
    print()
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(c, widths)) + " |")
    print()
    for r in rows:
        if r.detail:
            print(f"  {r.figure}: {r.detail}")
    for n in notes:
        print(f"  note: {n}")
    for r in rows:
        if r.ok is False:
            print(f"FAIL: {r.figure}: {r.value} vs target {r.target}")
    print(flush=True)


# ---- the run -------------------------------------------------------------------------


async def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        await asyncio.sleep(0.05)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived."""


@dataclass
class Bench:
    """What the figures share: sizes, the processes of the live stack, the rows so far.

    The live stack (phase "live"): Prosody with every account, the service on SQLite
    (`service`), the bare aiohttp server (`bare_url`), the clients process (`clients`: the
    `connected` users logged in over XMPP), the plain component (`bcomp`), one aiohttp
    client session for the load generator (`http`) and every user's REST session
    (`sessions`). `pg_url` is a database on a private PostgreSQL cluster, set when a
    selected figure needs PostgreSQL. Phase "stored" figures run after the live stack's
    processes are stopped, with only Prosody left.
    """

    args: argparse.Namespace
    size: dict[str, int]
    reps: int
    workdir: Path
    notes: list[str]
    profile_dir: Path | None
    prosody: BenchProsody
    connected: list[str]
    rest_only: list[str]
    pg_url: str | None = None
    rows: list[Row] = field(default_factory=list)
    service: ServiceProcess | None = None
    idle_mem: dict[str, int] = field(default_factory=dict)
    bare_url: str = ""
    bare_pid: int | None = None
    clients: LineProcess | None = None
    bcomp: LineProcess | None = None
    http: aiohttp.ClientSession | None = None
    sessions: dict[str, Session] = field(default_factory=dict)
    rest_pool: PairPool | None = None  # pairs of REST-only users, the readers left out
    readers: dict[str, list[tuple[Session, str]]] = field(default_factory=dict)  # by service name
    xmpp_pool: PairPool | None = None
    loadgen: int = field(default_factory=os.getpid)

    @staticmethod
    def order(rep: int, *sides: str) -> tuple[str, ...]:
        """The sides' order in round `rep`: rotated each round, so each goes first in turn
        (two sides alternate first place)."""
        k = rep % len(sides)
        return sides[k:] + sides[:k]


@dataclass(frozen=True)
class Figure:
    name: str
    phase: str  # "live" or "stored"
    run: Any  # async (Bench) -> None; appends its rows to bench.rows
    postgres: bool = False  # needs bench.pg_url


FIGURES: dict[str, Figure] = {}


def figure(name: str, phase: str = "live", postgres: bool = False):
    """Register a figure; they run in registration order (`--only` picks some)."""

    def register(fn):
        FIGURES[name] = Figure(name, phase, fn, postgres)
        return fn

    return register


async def sustained_cycles(b: Bench, services: list[ServiceProcess], sessions: list[dict[str, Session]],
                           pairs: list[tuple[str, str]]) -> tuple[float, LoadResult]:
    """Cycles/s for `pairs` on `services` (one, or several instances of one deployment),
    counted until the deployment's outbox is empty (delivery complete)."""
    assert b.http is not None
    t0 = time.monotonic()
    res = await cycles(b.http, [s.base_url for s in services], sessions, pairs)
    done = await wait_outbox_empty(services[0].db_path, timeout=900)
    return len(pairs) / (done - t0), res


def read_jobs(b: Bench, readers: list[tuple[Session, str]]) -> list[tuple[tuple[Session, str], int]]:
    """The REST reads load: alternately GET one request and the first page of sent requests,
    each as the request's sender."""
    return [(readers[i % len(readers)], i % 2) for i in range(b.size["reads"])]


async def make_readers(b: Bench, service: Any, sessions: dict[str, Session],
                       delivered: bool = True) -> list[tuple[Session, str]]:
    """The readers (REST-only users kept out of the pair pool) each send `read_page`
    pending requests on `service` (a ServiceProcess, or a ReferenceProcess: `delivered`
    False when it has no XMPP side), once; each reads one of them and its page of sent
    requests."""
    assert b.http is not None
    if service.name not in b.readers:
        receivers = b.rest_only[len(READERS):][:b.size["read_page"]]
        pairs = [(s, r) for s in b.rest_only[:len(READERS)] for r in receivers]
        made = await creates(b.http, service.base_url, sessions, pairs)
        if delivered:
            await wait_outbox_empty(service.db_path)
        first: dict[str, str] = {}
        for (sender, _), rid in zip(pairs, made.ids):
            first.setdefault(sender, rid)
        b.readers[service.name] = [(sessions[s], rid) for s, rid in first.items()]
    return b.readers[service.name]


async def reads(b: Bench, base: str, jobs: list[tuple[tuple[Session, str], int]]) -> float:
    """Reads/s of `jobs` against `base`, `WORKERS` concurrent."""
    assert b.http is not None
    http = b.http

    async def work(job: tuple[tuple[Session, str], int]) -> None:
        (who, rid), kind = job
        url = f"{base}{who.presences}/{rid}" if kind == 0 else f"{base}{who.presences}/sent"
        await _call(http, "GET", url, who.headers)

    return len(jobs) / await run_workers(jobs, work)


# ---- figures ---------------------------------------------------------------------------


def distinct_pairs(names: list[str], n: int, seed: int) -> list[tuple[str, str]]:
    """`n` pairs of `names`, no two on the same two users (either direction), each in a
    random direction: within a round no roster item is changed by two requests at once
    (which the reference component with `--blind-rosters` would need)."""
    rng = random.Random(seed)
    combos = list(itertools.combinations(names, 2))
    if len(combos) < n:
        raise BenchError(f"{len(names)} users make only {len(combos)} distinct pairs; {n} needed")
    rng.shuffle(combos)
    return [(a, b) if rng.random() < 0.5 else (b, a) for a, b in combos[:n]]


def token_entries(sessions: dict[str, Session], names: list[str]) -> list[tuple[str, str, str]]:
    return [(sessions[n].token, sessions[n].user_id, sessions[n].jid) for n in names]


@figure("cycles")
async def fig_cycles(b: Bench) -> None:
    """Sustained create+accept+interrupt cycles/s, 32 workers, counted until the outbox is
    empty, between connected users (the stanzas go to live sessions), vs the reference
    minimal component (`reference_service.py`: the same durable writes and stanzas through
    the same Prosody, each roster change a read then a merged set as the service's) with
    the same users, tokens and pairs."""
    assert b.service is not None and b.clients is not None
    ref = stack.ReferenceProcess(b.workdir, "reference", token_entries(b.sessions, b.connected), b.prosody)
    await ref.start()
    try:
        sides = {"service": b.service, "reference": ref}
        warm = distinct_pairs(b.connected, b.size["warmup"], seed=20)
        for side in sides.values():
            await sustained_cycles(b, [side], [b.sessions], warm)
        rates: dict[str, list[float]] = {"service": [], "reference": []}
        rest: dict[str, list[float]] = {"service": [], "reference": []}
        meters = {who: CpuMeter({who: side.pid, "prosody": b.prosody.pid, "clients": b.clients.proc.pid,
                                 "load generator": b.loadgen}) for who, side in sides.items()}
        for rep in range(b.reps):
            # Each cycle ends deleted, its roster items removed: the rounds may reuse pairs.
            pairs = distinct_pairs(b.connected, b.size["cycles"], seed=21 + rep)
            expected = 6 * len(pairs)  # create, accept, interrupt: a message to each party
            for who in b.order(rep, "reference", "service"):
                await b.clients.call({"cmd": "reset"})
                meters[who].start()
                async with profiled(b.service.pid, b.profile_dir if who == "service" else None, f"cycles-{rep}"):
                    rate, res = await sustained_cycles(b, [sides[who]], [b.sessions], pairs)
                meters[who].stop()
                got = await b.clients.call({"cmd": "wait", "kind": "management", "count": expected, "timeout": 60})
                if got["count"] != expected:
                    raise BenchError(f"cycles, {who}: {got['count']} of {expected} management messages arrived")
                rates[who].append(rate)
                rest[who].append(len(pairs) / res.elapsed)
            say(f"cycles round {rep + 1}/{b.reps}: service {rates['service'][-1]:.0f}/s, "
                f"reference {rates['reference'][-1]:.0f}/s")
    finally:
        ref.stop()
    s, r = med(rates["service"]), med(rates["reference"])
    n = b.reps * b.size["cycles"]
    b.rows.append(Row(f"cycles/s (create+accept+interrupt, delivery complete), {WORKERS} clients",
                      f"{s:.0f} cycles/s", f"{r:.0f} cycles/s reference component", f"{s / r:.2f}", ">= 0.90",
                      s / r >= 0.9,
                      f"service {fmt_list(rates['service'])} (REST answers alone {fmt_list(rest['service'])}/s), "
                      f"reference {fmt_list(rates['reference'])} (REST alone {fmt_list(rest['reference'])}/s); "
                      f"{meters['service'].per(n, 'cycle')}; reference {meters['reference'].per(n, 'cycle')}"))


@figure("writes")
async def fig_writes(b: Bench) -> None:
    """Service CPU per REST write (create, accept) with delivery excluded: a second
    service on its own database with its XMPP side pointed at a closed port (REST and
    logins work, nothing is delivered), vs the reference `--no-xmpp` (token checked by
    hash, the same rows committed with group commit); the same pairs, 32 workers."""
    assert b.http is not None and b.rest_pool is not None
    svc = ServiceProcess(b.workdir, "service-undelivered", b.workdir / "service-undelivered.sqlite3", b.prosody,
                         component_port=free_port())
    ref: stack.ReferenceProcess | None = None
    svc.start()
    try:
        await wait_port(svc.port, timeout=60)
        sessions = await login_all(b.http, svc.base_url, b.rest_only)
        ref = stack.ReferenceProcess(b.workdir, "reference-undelivered", token_entries(sessions, b.rest_only))
        await ref.start()
        sides: dict[str, Any] = {"service": svc, "reference": ref}

        async def writes(side: Any, pairs: list[tuple[str, str]]) -> float:
            made = await creates(b.http, side.base_url, sessions, pairs)
            done = await accepts(b.http, side.base_url, sessions, pairs, made.ids)
            return made.elapsed + done.elapsed

        warm = b.rest_pool.take(b.size["warmup"])
        for side in sides.values():
            await writes(side, warm)
        per_write: dict[str, list[float]] = {"service": [], "reference": []}
        rates: dict[str, list[float]] = {"service": [], "reference": []}
        meters = {who: CpuMeter({who: side.pid, "load generator": b.loadgen}) for who, side in sides.items()}
        for rep in range(b.reps):
            pairs = b.rest_pool.take(b.size["cycles"])  # left accepted: new pairs every round
            for who in b.order(rep, "reference", "service"):
                before = meters[who].used[who]
                meters[who].start()
                async with profiled(svc.pid, b.profile_dir if who == "service" else None, f"writes-{rep}"):
                    elapsed = await writes(sides[who], pairs)
                meters[who].stop()
                per_write[who].append(1e6 * (meters[who].used[who] - before) / (2 * len(pairs)))
                rates[who].append(2 * len(pairs) / elapsed)
            say(f"writes round {rep + 1}/{b.reps}: service {per_write['service'][-1]:.0f} us/write, "
                f"reference {per_write['reference'][-1]:.0f} us/write")
    finally:
        svc.stop()
        if ref is not None:
            ref.stop()
    s, r = med(per_write["service"]), med(per_write["reference"])
    n = b.reps * 2 * b.size["cycles"]
    q = ratio(s, r)
    b.rows.append(Row("service CPU per REST write (create, accept), delivery excluded", f"{s:.0f} us",
                      f"{r:.0f} us reference handler", fmt_ratio(q, "x"), "<= 1.5x", meets(q, lambda x: x <= 1.5),
                      f"per round: service {fmt_list(per_write['service'])} us, reference "
                      f"{fmt_list(per_write['reference'])} us; writes/s service {fmt_list(rates['service'])}, "
                      f"reference {fmt_list(rates['reference'])} (creates, then accepts, {WORKERS} workers); "
                      f"{meters['service'].per(n, 'write')}; reference {meters['reference'].per(n, 'write')}"))


@figure("reads")
async def fig_reads(b: Bench) -> None:
    """REST reads (get one, list first page), 32 workers, vs the bare aiohttp JSON handler
    with the same load generator and paths (the issue's baseline); beside it (info) the
    reference component's read handlers (`reference_service.py --no-xmpp`: the token by
    hash, the same rows read on a reader thread, the same JSON), with the same readers'
    requests made on it."""
    assert b.service is not None
    jobs = read_jobs(b, await make_readers(b, b.service, b.sessions))
    ref = stack.ReferenceProcess(b.workdir, "reference-reads", token_entries(b.sessions, b.rest_only))
    await ref.start()
    against: ServiceProcess | None = None
    try:
        ref_jobs = read_jobs(b, await make_readers(b, ref, b.sessions, delivered=False))
        sides = {"service": (b.service.base_url, jobs, b.service.pid), "baseline": (b.bare_url, jobs, b.bare_pid),
                 "reference": (ref.base_url, ref_jobs, ref.pid)}
        if b.args.against:
            against, against_sessions = await start_against(b)
            sides["against"] = (against.base_url, read_jobs(b, await make_readers(b, against, against_sessions)),
                                against.pid)
        for url, side_jobs, _pid in sides.values():
            await reads(b, url, side_jobs)  # warm-up (not counted)
        rates: dict[str, list[float]] = {who: [] for who in sides}
        meters = {who: CpuMeter({who: pid, "load generator": b.loadgen}) for who, (_u, _j, pid) in sides.items()}
        for rep in range(b.reps):
            for who in b.order(rep, "baseline", "service", *(["against"] if against else []), "reference"):
                url, side_jobs, _pid = sides[who]
                meters[who].start()
                # The reference is profiled too: its stacks show what the service does more.
                async with profiled(_pid, b.profile_dir if who != "baseline" else None, f"reads-{who}-{rep}"):
                    rates[who].append(await reads(b, url, side_jobs))
                meters[who].stop()
            say(f"reads round {rep + 1}/{b.reps}: service {rates['service'][-1]:.0f} req/s, bare aiohttp "
                f"{rates['baseline'][-1]:.0f} req/s, reference {rates['reference'][-1]:.0f} req/s"
                + (f", --against {rates['against'][-1]:.0f} req/s" if against else ""))
    finally:
        ref.stop()
        if against is not None:
            against.stop()
    s, r, ref_rate = med(rates["service"]), med(rates["baseline"]), med(rates["reference"])
    n = b.reps * len(jobs)
    b.rows.append(Row(f"REST reads (get one, list first page), {WORKERS} clients", f"{s:.0f} req/s",
                      f"{r:.0f} req/s bare aiohttp", f"{s / r:.2f}", ">= 0.50", s / r >= 0.5,
                      f"service req/s {fmt_list(rates['service'])}, baseline {fmt_list(rates['baseline'])}; "
                      f"{meters['service'].per(n, 'read')}; baseline {meters['baseline'].per(n, 'read')}"))
    b.rows.append(Row("(info) REST reads vs the reference read handlers", f"{s:.0f} req/s",
                      f"{ref_rate:.0f} req/s reference component", f"{s / ref_rate:.2f}", "-", None,
                      f"reference req/s {fmt_list(rates['reference'])}; reference {meters['reference'].per(n, 'read')}"))
    if against is not None:
        a = med(rates["against"])
        b.rows.append(Row("(info) REST reads vs the --against checkout", f"{s:.0f} req/s",
                          f"{a:.0f} req/s {b.args.against}", f"{s / a:.2f}", "-", None,
                          f"service/--against per round {fmt_list([x / y for x, y in zip(rates['service'], rates['against'])], 2)}; "
                          f"--against req/s {fmt_list(rates['against'])}; "
                          f"service {meters['service'].per(n, 'read')}; --against {meters['against'].per(n, 'read')}"))


async def start_against(b: Bench) -> tuple[ServiceProcess, dict[str, Session]]:
    """The --against checkout's service: its own database, its own component JID on the
    same Prosody, the same interpreter; the REST-only users logged in on it."""
    assert b.http is not None
    process = ServiceProcess(b.workdir, "service-against", b.workdir / "against.sqlite3", b.prosody,
                             component_jid=stack.AGAINST_JID, checkout=Path(b.args.against))
    process.start()
    try:
        await process.wait_healthy()
        sessions = await login_all(b.http, process.base_url, b.rest_only)
    except BaseException:
        process.stop()
        raise
    say(f"--against service up (pid {process.pid}, http {process.port}, source {b.args.against})")
    return process, sessions


@figure("postgresql", postgres=True)
async def fig_postgresql(b: Bench) -> None:
    """The sustained cycles and the REST reads on PostgreSQL, one instance, then two
    instances of one deployment (REST spread over both, one delivers), beside the same
    figures on SQLite (one instance) in the same rounds."""
    assert b.service is not None and b.http is not None and b.rest_pool is not None and b.pg_url
    pg = [ServiceProcess(b.workdir, f"service-pg{i}", b.workdir / "unused.sqlite3", b.prosody,
                         component_jid="pg.example.test", storage_url=b.pg_url) for i in (1, 2)]
    pg[0].start()
    try:
        await pg[0].wait_healthy()
        pg_sessions = await login_all(b.http, pg[0].base_url, b.rest_only)
        warm = b.rest_pool.take(b.size["warmup"])
        await sustained_cycles(b, [pg[0]], [pg_sessions], warm)
        await sustained_cycles(b, [b.service], [b.sessions], warm)
        one, sq = [], []
        pg_cpu = CpuMeter({"service": pg[0].pid, "prosody": b.prosody.pid, "load generator": b.loadgen})
        sq_cpu = CpuMeter({"service": b.service.pid, "prosody": b.prosody.pid, "load generator": b.loadgen})
        for rep in range(b.reps):
            pairs = b.rest_pool.take(b.size["cycles"])  # each cycle ends deleted: both databases see them fresh
            for who in b.order(rep, "postgresql", "sqlite"):
                if who == "postgresql":
                    pg_cpu.start()
                    one.append((await sustained_cycles(b, [pg[0]], [pg_sessions], pairs))[0])
                    pg_cpu.stop()
                else:
                    sq_cpu.start()
                    sq.append((await sustained_cycles(b, [b.service], [b.sessions], pairs))[0])
                    sq_cpu.stop()
            say(f"postgresql cycles round {rep + 1}/{b.reps}: PostgreSQL {one[-1]:.0f}/s, SQLite {sq[-1]:.0f}/s")
        p, sq_cycles = med(one), med(sq)
        n = b.reps * b.size["cycles"]
        b.rows.append(Row(f"cycles/s on PostgreSQL, 1 instance, {WORKERS} clients", f"{p:.0f} cycles/s",
                          f"{sq_cycles:.0f} cycles/s on SQLite", f"{p / sq_cycles:.2f}", ">= 0.70", p / sq_cycles >= 0.7,
                          f"PostgreSQL (serializable, fsync on, pool of 10) {fmt_list(one)}, SQLite {fmt_list(sq)}; "
                          f"PostgreSQL {pg_cpu.per(n, 'cycle')} (its server's own backends not counted); "
                          f"SQLite {sq_cpu.per(n, 'cycle')}"))

        pg_readers = await make_readers(b, pg[0], pg_sessions)
        sq_readers = await make_readers(b, b.service, b.sessions)
        pg_jobs, sq_jobs = read_jobs(b, pg_readers), read_jobs(b, sq_readers)
        await reads(b, pg[0].base_url, pg_jobs)  # warm-up
        pg_reads, sq_reads = [], []
        for rep in range(b.reps):
            for who in b.order(rep, "postgresql", "sqlite"):
                if who == "postgresql":
                    pg_reads.append(await reads(b, pg[0].base_url, pg_jobs))
                else:
                    sq_reads.append(await reads(b, b.service.base_url, sq_jobs))
            say(f"postgresql reads round {rep + 1}/{b.reps}: PostgreSQL {pg_reads[-1]:.0f}/s, SQLite {sq_reads[-1]:.0f}/s")
        p, q = med(pg_reads), med(sq_reads)
        b.rows.append(Row(f"REST reads/s on PostgreSQL, 1 instance, {WORKERS} clients", f"{p:.0f} req/s",
                          f"{q:.0f} req/s on SQLite", f"{p / q:.2f}", "-", None,
                          f"PostgreSQL {fmt_list(pg_reads)}, SQLite {fmt_list(sq_reads)}"))

        # Two instances of the same deployment: the second is a standby (the first holds
        # the delivery lock); REST goes to both, job by job, as a load balancer spreads it.
        pg[1].start()
        await pg[1].wait_healthy(want={"xmpp": "standby", "storage": "ok"})
        pg2_sessions = await login_all(b.http, pg[1].base_url, b.rest_only)
        both = [pg_sessions, pg2_sessions]
        await sustained_cycles(b, pg, both, b.rest_pool.take(b.size["warmup"]))
        two, one_again = [], []
        for rep in range(b.reps):
            pairs = b.rest_pool.take(b.size["cycles"])
            for who in b.order(rep, "two", "one"):
                if who == "two":
                    two.append((await sustained_cycles(b, pg, both, pairs))[0])
                else:
                    one_again.append((await sustained_cycles(b, [pg[0]], [pg_sessions], pairs))[0])
            say(f"postgresql two instances round {rep + 1}/{b.reps}: two {two[-1]:.0f}/s, one {one_again[-1]:.0f}/s")
        t, o = med(two), med(one_again)
        b.rows.append(Row(f"cycles/s on PostgreSQL, 2 instances, {WORKERS} clients", f"{t:.0f} cycles/s",
                          f"{o:.0f} cycles/s, 1 instance", f"{t / o:.2f}", "-", None,
                          f"two instances {fmt_list(two)}, one {fmt_list(one_again)} (same machine: the "
                          f"instances share its 2 CPUs with PostgreSQL, Prosody and the load generator); "
                          f"SQLite, 1 instance, above: {sq_cycles:.0f}"))
    finally:
        for svc in pg:
            svc.stop()


DRAIN_ROWS = {"full": 10_000, "quick": 200}  # outbox rows per round of the drain figure


@figure("drain")
async def fig_drain(b: Bench) -> None:
    """Service CPU per delivered stanza, draining committed outbox rows (what create,
    accept and interrupt write: 6 management messages and 4 roster changes per cycle,
    to connected users), vs the plain component sending the same stanzas."""
    assert b.service is not None and b.bcomp is not None
    n_rows = DRAIN_ROWS["quick" if b.args.quick else "full"]
    jids = [f"{n}@{DOMAIN}" for n in b.connected]
    rows = stack.cycle_rows(PairPool(jids, seed=3).take(n_rows // 10))
    await wait_outbox_empty(b.service.db_path)
    stack.insert_outbox(b.service.db_path, rows[:200])  # warm-up (not counted)
    await wait_outbox_empty(b.service.db_path)
    await b.bcomp.call({"cmd": "replay", "rows": [list(r) for r in rows[:200]], "concurrency": ROSTER_CONCURRENCY})

    async def rounds(rows: list[tuple[str, str, dict[str, Any]]], label: str):
        assert b.service is not None and b.bcomp is not None
        replay = {"cmd": "replay", "rows": [list(r) for r in rows], "concurrency": ROSTER_CONCURRENCY}
        svc_cpu = CpuMeter({"service": b.service.pid, "prosody": b.prosody.pid})
        base_cpu = CpuMeter({"baseline component": b.bcomp.proc.pid, "prosody": b.prosody.pid})
        svc: list[float] = []
        base: list[float] = []
        for rep in range(b.reps):
            for who in b.order(rep, "baseline", "service"):
                meter, out, name = ((svc_cpu, svc, "service") if who == "service"
                                    else (base_cpu, base, "baseline component"))
                before = meter.used[name]
                meter.start()
                if who == "service":
                    # Committed as another process would (`resync`): the dispatcher finds the
                    # rows at its next poll (outbox_poll_s); the service is idle until then.
                    stack.insert_outbox(b.service.db_path, rows)
                    await wait_outbox_empty(b.service.db_path, timeout=900, poll=0.01)
                else:
                    got = await b.bcomp.call(replay, timeout=900)
                    if got["errors"]:
                        raise BenchError(f"baseline replay: {got['errors']} IQ errors")
                meter.stop()
                out.append(1e6 * (meter.used[name] - before) / len(rows))
            say(f"drain ({label}) round {rep + 1}/{b.reps}: service {svc[-1]:.0f} us/stanza, "
                f"plain component {base[-1]:.0f} us/stanza")
        n = b.reps * len(rows)
        return med(svc), med(base), (f"service us/stanza {fmt_list(svc)}, plain component {fmt_list(base)}; "
                                     f"{svc_cpu.per(n, 'stanza')}; baseline {base_cpu.per(n, 'stanza')}")

    s, r, detail = await rounds(rows, "mix")
    kinds = {k: sum(row[0] == k for row in rows) for k in ("message", "roster")}
    q = ratio(s, r)
    b.rows.append(Row(f"service CPU per delivered stanza, draining {rows_label(len(rows))} outbox rows",
                      f"{s:.0f} us", f"{r:.0f} us plain component", fmt_ratio(q), "<= 1.5x", meets(q, lambda x: x <= 1.5),
                      f"{kinds['message']} management messages + {kinds['roster']} roster changes (privileged get "
                      f"then set, both sides) per round to {len(jids)} connected users; {detail}"))
    messages = [row for row in rows if row[0] == "message"]
    s, r, detail = await rounds(messages, "messages")
    b.rows.append(Row(f"(info) the same, management messages only ({rows_label(len(messages))})",
                      f"{s:.0f} us", f"{r:.0f} us plain component", fmt_ratio(ratio(s, r)), "-", None, detail))


# The roster figure's users (their own accounts, offline), accepts per round, roster sizes.
ROSTER_SIZES = {"full": dict(users=32, accepts=200), "quick": dict(users=8, accepts=10)}
LARGE_ROSTER, SMALL_ROSTER = 1000, 10


def roster_parse_us(items: int, repeats: int = 21) -> float:
    """Median wall time (us, in this process) to parse one roster answer of `items`
    items as Prosody sends it (the rosters this figure writes), the way the service
    does: xml.etree's XMLPullParser fed in 4 KB reads with slixmpp's depth tracking of
    the stream, then the service's RosterView index and one item looked up. The part of
    an accept's cost no component that reads whole rosters can avoid."""
    from xml.etree import ElementTree

    from component.xmpp.rosters import RosterView

    body = "".join(
        f"<item subscription='both' jid='contact{i}.big000@{DOMAIN}' name='Contact {i}'><group>Friends</group></item>"
        for i in range(items))
    data = (f"<iq type='result' to='{SERVICE_JID}' from='big000@{DOMAIN}' id='r1'>"
            f"<query xmlns='jabber:iq:roster'>{body}</query></iq>").encode()
    times = []
    for _ in range(repeats):
        parser = ElementTree.XMLPullParser(("start", "end"))
        parser.feed(b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>")
        list(parser.read_events())
        start, depth, stanza = time.perf_counter(), 1, None
        for offset in range(0, len(data), 4096):
            parser.feed(data[offset:offset + 4096])
            for event, element in parser.read_events():
                depth += 1 if event == "start" else -1
                if event == "end" and depth == 1:
                    stanza = element
        assert stanza is not None
        RosterView(stanza.find("{jabber:iq:roster}query")).get(f"contact{items // 2}.big000@{DOMAIN}")
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


@figure("rosters")
async def fig_rosters(b: Bench) -> None:
    """Service CPU per accept (REST accept, then the roster merge and messages until the
    outbox is empty) between users whose rosters hold 1,000 items, vs the same between
    users with 10-item rosters; Prosody's own CPU per accept beside it, and (info) the
    reference component's growth for the same accepts between other users with the same
    rosters (its read of the owner's roster, merge and set: what any component that keeps
    users' own items must do with Prosody 0.12)."""
    assert b.service is not None and b.http is not None
    size = ROSTER_SIZES["quick" if b.args.quick else "full"]
    users = {("service", "large"): "big", ("service", "small"): "few",
             ("reference", "large"): "rbig", ("reference", "small"): "rfew"}
    groups = {key: [f"{prefix}{i:03d}" for i in range(size["users"])] for key, prefix in users.items()}
    # Offline users, accounts and rosters written into Prosody's storage (read from disk
    # by Prosody for users without a session); contacts on the local domain (no s2s).
    stack.write_accounts(b.prosody, {n: password(n) for names in groups.values() for n in names})
    stack.write_rosters(b.prosody, {
        n: [(f"contact{i}.{n}@{DOMAIN}", "both", f"Contact {i}", ("Friends",))
            for i in range(LARGE_ROSTER if label == "large" else SMALL_ROSTER)]
        for (_who, label), names in groups.items() for n in names})
    sessions = await login_all(b.http, b.service.base_url, [n for names in groups.values() for n in names])
    ref = stack.ReferenceProcess(b.workdir, "reference-rosters", token_entries(
        sessions, [n for (who, _label), names in groups.items() if who == "reference" for n in names]), b.prosody)
    await ref.start()
    try:
        sides: dict[str, Any] = {"service": b.service, "reference": ref}
        pools = {key: PairPool(names, seed=4) for key, names in groups.items()}
        meters = {key: CpuMeter({key[0]: sides[key[0]].pid, "prosody": b.prosody.pid}) for key in groups}
        per: dict[tuple[str, str], dict[str, list[float]]] = {key: {key[0]: [], "prosody": []} for key in groups}
        rates: dict[tuple[str, str], list[float]] = {key: [] for key in groups}
        for (who, _label), pool in pools.items():  # warm-up (not counted)
            side = sides[who]
            pairs = pool.take(min(8, size["accepts"]))
            made = await creates(b.http, side.base_url, sessions, pairs)
            await accepts(b.http, side.base_url, sessions, pairs, made.ids)
            await wait_outbox_empty(side.db_path)
        # The service's CPU while idle (timers, polls): the slower rounds count more of it.
        idle = CpuMeter({"service": b.service.pid})
        idle.start()
        await asyncio.sleep(1 if b.args.quick else 5)
        idle.stop()
        idle_rate = idle.used["service"] / idle.wall
        for rep in range(b.reps):
            for who in b.order(rep, "service", "reference"):
                side = sides[who]
                for label in b.order(rep, "large", "small"):
                    key = (who, label)
                    pairs = pools[key].take(size["accepts"])
                    made = await creates(b.http, side.base_url, sessions, pairs)  # pending (not measured)
                    await wait_outbox_empty(side.db_path)
                    meter = meters[key]
                    before = dict(meter.used)
                    t0 = time.monotonic()
                    meter.start()
                    async with profiled(b.service.pid, b.profile_dir if who == "service" else None,
                                        f"rosters-{label}-{rep}"):
                        await accepts(b.http, side.base_url, sessions, pairs, made.ids)
                        done = await wait_outbox_empty(side.db_path, timeout=900, poll=0.01)
                    meter.stop()
                    rates[key].append(len(pairs) / (done - t0))
                    for name in (who, "prosody"):
                        per[key][name].append(1e6 * (meter.used[name] - before[name]) / len(pairs))
            say(f"rosters round {rep + 1}/{b.reps}: service {per['service', 'large']['service'][-1]:.0f} us/accept "
                f"with {LARGE_ROSTER}-item rosters, {per['service', 'small']['service'][-1]:.0f} us with "
                f"{SMALL_ROSTER}; reference {per['reference', 'large']['reference'][-1]:.0f} us vs "
                f"{per['reference', 'small']['reference'][-1]:.0f} us")
    finally:
        ref.stop()
    sl, ss = med(per["service", "large"]["service"]), med(per["service", "small"]["service"])
    pl, ps = med(per["service", "large"]["prosody"]), med(per["service", "small"]["prosody"])
    rl, rs = med(per["reference", "large"]["reference"]), med(per["reference", "small"]["reference"])
    n = b.reps * size["accepts"]
    # What the growth is made of: with Prosody 0.12 each roster read is the whole roster
    # (README "Consent rules"), whose XML parse grows with it.
    parse_large, parse_small = roster_parse_us(LARGE_ROSTER), roster_parse_us(SMALL_ROSTER)
    idle_text = (f"{1e3 * idle_rate:.1f} ms/s" if idle.used["service"] else
                 f"under {10 / idle.wall:.1f} ms/s (no /proc tick in {idle.wall:.0f} s)")
    growth = ratio(sl, ss)
    b.rows.append(Row(f"service CPU per accept, {LARGE_ROSTER}-item rosters (merge included)", f"{sl:.0f} us",
                      f"{ss:.0f} us with {SMALL_ROSTER}-item rosters", fmt_ratio(growth), "<= 1.2x",
                      meets(growth, lambda x: x <= 1.2),
                      f"Prosody per accept {pl:.0f} us vs {ps:.0f} us ({fmt_ratio(ratio(pl, ps), 'x')}); service idle "
                      f"{idle_text} (at the accepts/s below: "
                      f"{1e6 * idle_rate / med(rates['service', 'large']):.0f} vs "
                      f"{1e6 * idle_rate / med(rates['service', 'small']):.0f} us per accept); {size['users']} users "
                      f"per side, {size['accepts']} accepts per round, {WORKERS} workers, until the outbox is empty; "
                      f"service us/accept {fmt_list(per['service', 'large']['service'])} vs "
                      f"{fmt_list(per['service', 'small']['service'])}, accepts/s "
                      f"{fmt_list(rates['service', 'large'])} vs {fmt_list(rates['service', 'small'])}; "
                      f"{LARGE_ROSTER} items: {meters['service', 'large'].per(n, 'accept')}; "
                      f"{SMALL_ROSTER} items: {meters['service', 'small'].per(n, 'accept')}"))
    b.rows.append(Row(f"(info) XML parse of one {LARGE_ROSTER}-item roster answer, as the service parses it",
                      f"{parse_large:.0f} us", f"{parse_small:.0f} us with {SMALL_ROSTER} items",
                      f"{parse_large / parse_small:.2f}", "-", None,
                      f"in this process (roster_parse_us); the service's growth per accept ({sl - ss:.0f} us) is "
                      f"{(sl - ss) / (parse_large - parse_small):.2f} such parses: an accept changes two rosters, "
                      f"and one read serves every change of that roster queued behind it; the 1.2x target leaves "
                      f"{0.2 * ss:.0f} us per accept for all of the growth"))
    b.rows.append(Row(f"(info) reference component CPU per accept, {LARGE_ROSTER}-item rosters", f"{rl:.0f} us",
                      f"{rs:.0f} us with {SMALL_ROSTER}-item rosters", fmt_ratio(ratio(rl, rs)), "-", None,
                      f"the same accepts between other users with the same rosters; reference us/accept "
                      f"{fmt_list(per['reference', 'large']['reference'])} vs "
                      f"{fmt_list(per['reference', 'small']['reference'])}, accepts/s "
                      f"{fmt_list(rates['reference', 'large'])} vs {fmt_list(rates['reference', 'small'])}; "
                      f"{LARGE_ROSTER} items: {meters['reference', 'large'].per(n, 'accept')}; "
                      f"{SMALL_ROSTER} items: {meters['reference', 'small'].per(n, 'accept')}"))


@figure("stored", phase="stored")
async def fig_stored(b: Bench) -> None:
    """List received p50/p99 on a database of `large_rows` stored requests vs
    `small_rows` (the first page of the API's default 100; and, info, the p50 of one
    page holding all 200, whose rows outgrew SQLite's default 2 MB page cache), and the
    service's peak memory on them."""
    outbox_jids = [f"{n}@{DOMAIN}" for n in b.rest_only]
    small_n, large_n = b.size["small_rows"], b.size["large_rows"]
    dbs = {}
    for label, n in (("small", small_n), ("large", large_n)):
        started = time.monotonic()
        dbs[label] = await asyncio.to_thread(populate_db, b.workdir / f"store-{label}.sqlite3", n, outbox_jids)
        say(f"database with {n} requests + 1000 outbox rows written in {time.monotonic() - started:.1f}s")
    # The populated users have no XMPP account: the account checks would revoke the
    # measured user's token (as they should for a real deployment).
    services = {label: ServiceProcess(b.workdir, f"store-{label}", dbs[label].path, b.prosody,
                                      component_jid=f"store-{label}.{DOMAIN}",
                                      auth={"account_check_s": 0}) for label in dbs}
    try:
        for svc in services.values():
            svc.start()
        for svc in services.values():
            await svc.wait_healthy()
            await wait_outbox_empty(svc.db_path, timeout=600)  # the 1000 outbox rows delivered
        say("stored-request services up, their outbox rows delivered")
        p50s: dict[str, list[float]] = {"small": [], "large": []}
        p99s: dict[str, list[float]] = {"small": [], "large": []}
        whole: dict[str, list[float]] = {"small": [], "large": []}  # p50 of a page of 200
        targets = {label: (services[label].base_url, dbs[label].measured_user_id, dbs[label].measured_token)
                   for label in dbs}
        for rep in range(b.reps):
            lat = await list_latencies(targets, b.size["latency_requests"], warmup=20)
            for label, samples in lat.items():
                p50s[label].append(percentile(samples, 0.50))
                p99s[label].append(percentile(samples, 0.99))
            lat = await list_latencies(targets, b.size["latency_requests"], warmup=20, limit=200)
            for label, samples in lat.items():
                whole[label].append(percentile(samples, 0.50))
            say(f"list round {rep + 1}/{b.reps}: {rows_label(small_n)} p50 {p50s['small'][-1]:.2f} "
                f"p99 {p99s['small'][-1]:.2f} ms; {rows_label(large_n)} p50 {p50s['large'][-1]:.2f} "
                f"p99 {p99s['large'][-1]:.2f} ms; a page of 200: p50 {whole['small'][-1]:.2f} ms at "
                f"{rows_label(small_n)}, {whole['large'][-1]:.2f} ms at {rows_label(large_n)}")
        mem = {label: svc.memory() for label, svc in services.items()}
    finally:
        for svc in services.values():
            svc.stop()

    S, L = rows_label(small_n), rows_label(large_n)
    p50_s, p50_l, p99_s, p99_l = med(p50s["small"]), med(p50s["large"]), med(p99s["small"]), med(p99s["large"])
    b.rows.append(Row(f"list received p50 (first page, 100 of 200), {L} rows", f"{p50_l:.2f} ms", f"{p50_s:.2f} ms at {S}",
                      f"{p50_l / p50_s:.2f}", "-", None,
                      f"{L}: {fmt_list(p50s['large'], 2)}; {S}: {fmt_list(p50s['small'], 2)} "
                      f"({b.size['latency_requests']} requests per database and round, one at a time, the two "
                      f"databases taking turns request by request)"))
    b.rows.append(Row(f"list received p99 (first page, 100 of 200), {L} rows", f"{p99_l:.2f} ms", f"{p99_s:.2f} ms at {S}",
                      f"{p99_l / p99_s:.2f}", "<= 1.2x and < 5 ms", p99_l <= 1.2 * p99_s and p99_l < 5,
                      f"{L}: {fmt_list(p99s['large'], 2)}; {S}: {fmt_list(p99s['small'], 2)}"))
    w_s, w_l = med(whole["small"]), med(whole["large"])
    b.rows.append(Row(f"(info) list received p50, one page of all 200, {L} rows", f"{w_l:.2f} ms", f"{w_s:.2f} ms at {S}",
                      f"{w_l / w_s:.2f}", "-", None,
                      f"{L}: {fmt_list(whole['large'], 2)}; {S}: {fmt_list(whole['small'], 2)} (?limit=200, "
                      f"{b.size['latency_requests']} requests per database and round, as above; [storage] read_cache_mb "
                      f"holds the pages such a read walks, SQLite's default 2 MB did not)"))
    hwm_l, hwm_s = mem["large"]["VmHWM"] / 1024, mem["small"]["VmHWM"] / 1024
    growth = hwm_l - hwm_s
    idle = f"{b.idle_mem['VmHWM'] / 1024:.1f} MB idle, empty db" if b.idle_mem else f"{hwm_s:.1f} MB at {S}"
    b.rows.append(Row(f"service peak RSS, {L} rows + 1k outbox rows", f"{hwm_l:.1f} MB", idle,
                      f"{growth:+.1f} MB vs {S}", f"< 150 MB; +{L} vs {S} <= 10 MB", hwm_l < 150 and growth <= 10,
                      f"VmHWM {S}: {hwm_s:.1f} MB, {L}: {hwm_l:.1f} MB (growth {growth:+.1f} MB); VmRSS now "
                      f"{S}: {mem['small']['VmRSS'] / 1024:.1f} MB, {L}: {mem['large']['VmRSS'] / 1024:.1f} MB"))


# ---- the stack -------------------------------------------------------------------------


async def bench(args: argparse.Namespace, workdir: Path) -> tuple[list[Row], list[str]]:
    # Ctrl-C / SIGTERM cancel the run; the finally blocks (here and in main) stop every process.
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    interrupted = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: (interrupted.append(True), task.cancel()))
    try:
        return await _bench(args, workdir)
    except asyncio.CancelledError:
        if interrupted:
            raise Interrupted() from None
        raise


async def _bench(args: argparse.Namespace, workdir: Path) -> tuple[list[Row], list[str]]:
    size = SIZES["quick" if args.quick else "full"]
    selected = [FIGURES[name] for name in FIGURES if name in args.only]
    notes: list[str] = []
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
        PY_SPY_SAMPLES[:] = ["--gil"] if args.profile_gil else ["--idle"]
        notes.append(f"profiled run (py-spy on the service, raw stacks in {profile_dir}): figures are skewed")

    connected = [f"c{i:03d}" for i in range(size["connected"])]
    rest_only = [f"r{i:03d}" for i in range(size["rest_only"])]
    # -- Prosody, accounts written directly into its storage
    prosody = BenchProsody(workdir / "prosody", domain=DOMAIN, component_jid=SERVICE_JID, component_secret=SECRET)
    started = time.monotonic()
    write_accounts(prosody, {n: password(n) for n in connected + rest_only})
    prosody.start()
    say(f"prosody up (c2s {prosody.c2s_port}, component {prosody.component_port}); "
        f"{len(connected) + len(rest_only)} accounts written in {time.monotonic() - started:.1f}s")
    b = Bench(args, size, args.repeats, workdir, notes, profile_dir, prosody, connected, rest_only)
    postgres = LocalPostgres(workdir / "postgres") if any(f.postgres for f in selected) else None
    try:
        if postgres is not None:  # a private cluster, fsync on, as a deployment's
            await asyncio.to_thread(postgres.start)
            b.pg_url = postgres.create_database("presence")
            say(f"postgresql up (127.0.0.1:{postgres.port})")
        live = [f for f in selected if f.phase == "live"]
        if live:
            await run_live(b, live)
        for fig in selected:
            if fig.phase == "stored":
                say(f"figure {fig.name}")
                await fig.run(b)
    finally:
        if postgres is not None:
            postgres.stop()
        prosody.stop()
    notes.append(f"{b.reps} rounds per figure, medians shown; the sides take turns at going first, round by round")
    notes.append("the load generator, the XMPP clients, Prosody and the service share this machine's CPUs")
    return b.rows, notes


async def run_live(b: Bench, figures: list[Figure]) -> None:
    """Start the live stack, run `figures` on it, stop its processes (CPU for what follows)."""
    py = sys.executable
    b.service = service = ServiceProcess(b.workdir, "service", b.workdir / "service.sqlite3", b.prosody)
    service.start()
    clients = bcomp = bare = None
    try:
        await service.wait_healthy()
        await asyncio.sleep(2)
        b.idle_mem = service.memory()
        say(f"service up (pid {service.pid}, http {service.port}); idle RSS {b.idle_mem['VmRSS'] / 1024:.1f} MB")
        base_port = free_port()
        bare = stack.spawn([py, str(HERE / "baseline_http.py"), str(base_port)], b.workdir / "baseline_http.log")
        b.bare_pid = bare.pid
        await wait_port(base_port)
        b.bare_url = f"http://127.0.0.1:{base_port}"
        b.clients = clients = LineProcess(
            [py, str(HERE / "clients.py"), "--port", str(b.prosody.c2s_port), "--domain", DOMAIN,
             *itertools.chain.from_iterable(("--user", f"{n}:{password(n)}") for n in b.connected)],
            b.workdir / "clients.log")
        ready = await clients.read(180)
        b.bcomp = bcomp = LineProcess(
            [py, str(HERE / "baseline_component.py"), "--jid", BASELINE_JID, "--secret", SECRET,
             "--port", str(b.prosody.component_port), "--domain", DOMAIN], b.workdir / "baseline_component.log")
        await bcomp.read(60)
        say(f"{ready['ready']} XMPP clients connected; baseline component and baseline HTTP server up")
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=WORKERS), timeout=timeout) as http:
            b.http = http
            started = time.monotonic()
            b.sessions = await login_all(http, service.base_url, b.connected + b.rest_only)
            say(f"{len(b.sessions)} REST logins in {time.monotonic() - started:.1f}s")
            b.rest_pool = PairPool(b.rest_only[len(READERS):], seed=1)
            b.xmpp_pool = PairPool(b.connected, seed=2)
            for fig in figures:
                say(f"figure {fig.name}")
                await fig.run(b)
    finally:
        b.http = None
        service.stop()
        if clients is not None:
            clients.quit()
        if bcomp is not None:
            bcomp.quit()
        if bare is not None:
            stack.stop(bare)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a CI smoke run; never fails on targets")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per figure (medians reported), default 3")
    parser.add_argument("--profile", metavar="DIR", help="record the service with py-spy during its rounds"
                        " (and the reference during its reads rounds)")
    parser.add_argument("--profile-gil", action="store_true",
                        help="with --profile: only the samples holding the GIL (py-spy --gil)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, databases)")
    parser.add_argument("--against", metavar="CHECKOUT",
                        help="another source tree of the service (say `git worktree add ../before main~1`), run"
                             " with this interpreter: the reads figure also measures it, in the same rounds, and"
                             " says how this tree compares (an info row)")
    parser.add_argument("--only", metavar="NAMES", default=",".join(FIGURES),
                        help=f"comma-separated figures to run, in this order: {','.join(FIGURES)} (default: all)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.profile and py_spy() is None:
        parser.error(PY_SPY_MISSING)  # else the run would say "profiled" and record nothing
    args.only = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = args.only - FIGURES.keys()
    if unknown or not args.only:
        parser.error(f"--only: unknown figure(s) {', '.join(sorted(unknown)) or '(none given)'}; "
                     f"known: {', '.join(FIGURES)}")
    if args.against:
        if "reads" not in args.only:
            parser.error("--against measures the other checkout in the reads figure only: add reads to --only")
        args.against = str(Path(args.against).resolve())
        if not (Path(args.against) / "component" / "__main__.py").is_file():
            parser.error(f"--against {args.against}: not a checkout of the service (no component/__main__.py)")

    def on_term(_signum, _frame):  # outside the event loop (setup); inside it, bench() handles signals
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="presence-bench-"))
    os.chmod(workdir, 0o755)  # prosodyctl/prosody may need to traverse it
    info = machine_info()
    say(f"work folder {workdir}")
    started = time.monotonic()
    try:
        stack.ensure_prosody_installed()
        rows, notes = asyncio.run(bench(args, workdir))
    except (KeyboardInterrupt, Interrupted):
        say("interrupted; stopping every process")
        return 130
    except (BenchError, RuntimeError, OSError, aiohttp.ClientError, TimeoutError) as exc:
        say(f"benchmark error: {exc!r} (logs in {workdir})")
        args.keep = True
        return 2
    finally:
        stack.kill_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif workdir.exists():
            say(f"kept {workdir}")
    notes.append(f"total time {time.monotonic() - started:.0f}s")
    print_table(rows, info, "quick" if args.quick else "full", notes)
    missed = [r for r in rows if r.ok is False]
    if args.quick:
        return 0
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
