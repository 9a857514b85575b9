#!/usr/bin/env python3
"""Benchmark of the presence-consent service on the real stack (issue #5).

    python benchmarks/run.py            # full run (several minutes), exit 1 if a target is missed
    python benchmarks/run.py --quick    # smoke run (tiny sizes, well under a minute), never fails on targets

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
ROSTER_CONCURRENCY = 20  # the service's default max_concurrent_iqs
PRESENCES = "/api/rainbow/enduser/v1.0/users/{}/presences"
LOGIN = "/api/rainbow/authentication/v1.0/login"

SIZES: dict[str, dict[str, int]] = {
    # connected: users with a live XMPP client (storm and accept figures);
    # rest_only: users that only use REST (REST pairs figure; offline for XMPP).
    "full": dict(connected=96, rest_only=160, rest_pairs=1000, storm=1000, accepts=300, reads=6000,
                 small_rows=10_000, large_rows=1_000_000, latency_requests=300, warmup=32),
    "quick": dict(connected=16, rest_only=20, rest_pairs=60, storm=40, accepts=20, reads=200,
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


async def create_accept(http: aiohttp.ClientSession, base: str, sessions: dict[str, Session],
                        pairs: list[tuple[str, str]]) -> LoadResult:
    """Figure 1's load: per pair, POST create (as the sender) then POST accept (as the receiver)."""

    async def work(pair: tuple[str, str]) -> None:
        sender, receiver = sessions[pair[0]], sessions[pair[1]]
        created = await _call(http, "POST", base + sender.presences, sender.headers,
                              {"toUserId": receiver.user_id})
        await _call(http, "POST", f"{base}{receiver.presences}/{created['data']['id']}/accept",
                    receiver.headers)

    return LoadResult(await run_workers(pairs, work), 2 * len(pairs))


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


async def list_latencies(base: str, user_id: str, token: str, n: int, warmup: int) -> list[float]:
    """`n` sequential GET .../presences/received (first page); latencies in ms."""
    url = base + PRESENCES.format(user_id) + "/received"
    headers = {"Authorization": f"Bearer {token}"}
    out = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        for i in range(warmup + n):
            started = time.perf_counter()
            async with http.get(url, headers=headers) as resp:
                raw = await resp.read()
            took = (time.perf_counter() - started) * 1000
            if resp.status != 200:
                raise BenchError(f"list received -> {resp.status} {raw[:200]!r}")
            body = json.loads(raw)
            if body["total"] != 200 or len(body["data"]) != 100:
                raise BenchError(f"list received: total {body['total']}, page {len(body['data'])}; expected 200, 100")
            if i >= warmup:
                out.append(took)
    return out


# ---- profiling (optional) --------------------------------------------------------------


@contextlib.asynccontextmanager
async def profiled(pid: int, out_dir: Path | None, name: str):
    """With --profile DIR: py-spy records the service process while the block runs."""
    local = Path(sys.executable).parent / "py-spy"
    exe = str(local) if local.exists() else shutil.which("py-spy")
    if out_dir is None or exe is None:
        yield
        return
    out = out_dir / f"{name}.txt"
    proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", "250", "--nonblocking", "--threads", "--idle",
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
              "info" if r.ok is None else "PASS" if r.ok else "FAIL") for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
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
    reps = args.repeats
    py = sys.executable
    notes: list[str] = []
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
        notes.append(f"profiled run (py-spy on the service, raw stacks in {profile_dir}): figures are skewed")

    connected = [f"c{i:03d}" for i in range(size["connected"])]
    rest_only = [f"r{i:03d}" for i in range(size["rest_only"])]
    names = connected + rest_only

    # -- Prosody, accounts written directly into its storage
    prosody = BenchProsody(workdir / "prosody", domain=DOMAIN, component_jid=SERVICE_JID, component_secret=SECRET)
    started = time.monotonic()
    write_accounts(prosody, {n: password(n) for n in names})
    prosody.start()
    say(f"prosody up (c2s {prosody.c2s_port}, component {prosody.component_port}); "
        f"{len(names)} accounts written in {time.monotonic() - started:.1f}s")
    # -- a private PostgreSQL cluster (fsync on, as a deployment's): figure 1b
    postgres = LocalPostgres(workdir / "postgres")
    try:
        await asyncio.to_thread(postgres.start)
        pg_url = postgres.create_database("presence")
        say(f"postgresql up (127.0.0.1:{postgres.port})")
        return await _bench_with_prosody(args, workdir, size, reps, py, notes, profile_dir, prosody,
                                         connected, rest_only, pg_url)
    finally:
        postgres.stop()
        prosody.stop()


async def _bench_with_prosody(args, workdir, size, reps, py, notes, profile_dir, prosody,
                              connected, rest_only, pg_url) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    # -- the service (empty database), its idle memory first
    service = ServiceProcess(workdir, "service", workdir / "service.sqlite3", prosody)
    service.start()
    # The same service on PostgreSQL (one instance), for figure 1b.
    pg_service = ServiceProcess(workdir, "service-pg", workdir / "unused.sqlite3", prosody,
                                component_jid="pg.example.test", storage_url=pg_url)
    pg_service.start()
    await pg_service.wait_healthy()
    await service.wait_healthy()
    await asyncio.sleep(2)
    idle_mem = service.memory()
    say(f"service up (pid {service.pid}, http {service.port}); idle RSS {idle_mem['VmRSS'] / 1024:.1f} MB")

    base_port = free_port()
    bare = stack.spawn([py, str(HERE / "baseline_http.py"), str(base_port)], workdir / "baseline_http.log")
    await wait_port(base_port)
    baseline_url = f"http://127.0.0.1:{base_port}"

    clients = LineProcess([py, str(HERE / "clients.py"), "--port", str(prosody.c2s_port), "--domain", DOMAIN,
                           *itertools.chain.from_iterable(("--user", f"{n}:{password(n)}") for n in connected)],
                          workdir / "clients.log")
    ready = await clients.read(180)
    bcomp = LineProcess([py, str(HERE / "baseline_component.py"), "--jid", BASELINE_JID, "--secret", SECRET,
                         "--port", str(prosody.component_port), "--domain", DOMAIN], workdir / "baseline_component.log")
    await bcomp.read(60)
    say(f"{ready['ready']} XMPP clients connected; baseline component and baseline HTTP server up")

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=WORKERS), timeout=timeout) as http:
        started = time.monotonic()
        sessions = await login_all(http, service.base_url, connected + rest_only)
        say(f"{len(sessions)} REST logins in {time.monotonic() - started:.1f}s")
        rest_pool = PairPool(rest_only, seed=1)
        xmpp_pool = PairPool(connected, seed=2)

        # ---- figure 1: REST create+accept pairs vs a bare aiohttp handler
        warm = rest_pool.take(size["warmup"])
        await create_accept(http, service.base_url, sessions, warm)
        await create_accept(http, baseline_url, sessions, warm)
        await wait_outbox_empty(service.db_path)
        svc_rps, base_rps = [], []
        loadgen = os.getpid()
        cpu_pids = {"service": service.pid, "prosody": prosody.pid, "clients": clients.proc.pid,
                    "load generator": loadgen}
        base_pids = {"baseline component": bcomp.proc.pid, "prosody": prosody.pid, "clients": clients.proc.pid}
        fig1_cpu = CpuMeter(cpu_pids)
        fig1_base_cpu = CpuMeter({"bare aiohttp": bare.pid, "load generator": loadgen})
        for rep in range(reps):
            pairs = rest_pool.take(size["rest_pairs"])
            order = ("baseline", "service") if rep % 2 == 0 else ("service", "baseline")
            for who in order:
                if who == "service":
                    fig1_cpu.start()
                    async with profiled(service.pid, profile_dir, f"fig1-rest-{rep}"):
                        res = await create_accept(http, service.base_url, sessions, pairs)
                    svc_rps.append(res.requests / res.elapsed)
                    await wait_outbox_empty(service.db_path, timeout=900)
                    fig1_cpu.stop()
                else:
                    fig1_base_cpu.start()
                    res = await create_accept(http, baseline_url, sessions, pairs)
                    fig1_base_cpu.stop()
                    base_rps.append(res.requests / res.elapsed)
            say(f"fig1 round {rep + 1}/{reps}: service {svc_rps[-1]:.0f} req/s, bare aiohttp {base_rps[-1]:.0f} req/s")
        s, b = med(svc_rps), med(base_rps)
        sqlite_cycles = s
        rows.append(Row(f"REST create+accept, {WORKERS} clients", f"{s:.0f} req/s ({s / 2:.0f} pairs/s)",
                        f"{b:.0f} req/s bare aiohttp", f"{s / b:.2f}", ">= 0.50", s / b >= 0.5,
                        f"service req/s {fmt_list(svc_rps)}, baseline {fmt_list(base_rps)}; "
                        f"{fig1_cpu.per(reps * 2 * size['rest_pairs'], 'request, delivery included')}; "
                        f"baseline {fig1_base_cpu.per(reps * 2 * size['rest_pairs'], 'request')}"))

        # ---- figure 1b: the same sustained create+accept cycles, the service on PostgreSQL
        # (one instance, pool of 10) beside the same service on SQLite, alternating first
        # place; the outbox is delivered within each round, as in figure 1.
        pg_sessions = await login_all(http, pg_service.base_url, rest_only)
        await create_accept(http, pg_service.base_url, pg_sessions, warm)  # its own database: same pairs
        await wait_outbox_empty(pg_service.db_path)
        pg_rps, sq_rps = [], []
        # PostgreSQL's own backends are not counted (separate processes of its server).
        fig1b_cpu = CpuMeter({"service": pg_service.pid, "prosody": prosody.pid})
        for rep in range(reps):
            pairs = rest_pool.take(size["rest_pairs"])  # new for SQLite; the PostgreSQL db never saw them
            order = ("postgresql", "sqlite") if rep % 2 == 0 else ("sqlite", "postgresql")
            for who in order:
                target, who_sessions = (pg_service, pg_sessions) if who == "postgresql" else (service, sessions)
                if who == "postgresql":
                    fig1b_cpu.start()
                res = await create_accept(http, target.base_url, who_sessions, pairs)
                await wait_outbox_empty(target.db_path, timeout=900)
                if who == "postgresql":
                    fig1b_cpu.stop()
                    pg_rps.append(res.requests / res.elapsed)
                else:
                    sq_rps.append(res.requests / res.elapsed)
            say(f"fig1b round {rep + 1}/{reps}: PostgreSQL {pg_rps[-1]:.0f} req/s, SQLite {sq_rps[-1]:.0f} req/s")
        p, q = med(pg_rps), med(sq_rps)
        rows.append(Row(f"REST create+accept on PostgreSQL, {WORKERS} clients", f"{p:.0f} req/s ({p / 2:.0f} pairs/s)",
                        f"{q:.0f} req/s on SQLite", f"{p / q:.2f}", "-", None,
                        f"PostgreSQL (1 instance, serializable, fsync on) {fmt_list(pg_rps)}, SQLite {fmt_list(sq_rps)} "
                        f"(figure 1's SQLite median {sqlite_cycles:.0f}); "
                        f"{fig1b_cpu.per(reps * 2 * size['rest_pairs'], 'request, delivery included')}"))

        # ---- REST reads (issue #14): get one request and list the first page, alternating,
        # 32 workers, vs the bare aiohttp JSON handler with the same load generator and paths.
        read_pairs = rest_pool.take(8)  # 8 requests, read in turn by their senders
        made = await creates(http, service.base_url, sessions, read_pairs)
        await wait_outbox_empty(service.db_path)
        readers = [(sessions[sender], rid) for (sender, _), rid in zip(read_pairs, made.ids)]
        read_jobs = [(readers[i % len(readers)], i % 2) for i in range(size["reads"])]

        async def reads(base: str) -> float:
            async def work(job: tuple[tuple[Session, str], int]) -> None:
                (who, rid), kind = job
                url = f"{base}{who.presences}/{rid}" if kind == 0 else f"{base}{who.presences}/sent"
                await _call(http, "GET", url, who.headers)

            return await run_workers(read_jobs, work)

        await reads(service.base_url)  # warm-up (not counted)
        await reads(baseline_url)
        svc_reads, base_reads = [], []
        reads_cpu = CpuMeter({"service": service.pid, "load generator": loadgen})
        reads_base_cpu = CpuMeter({"bare aiohttp": bare.pid, "load generator": loadgen})
        for rep in range(reps):
            order = ("baseline", "service") if rep % 2 == 0 else ("service", "baseline")
            for who in order:
                meter, base, out = ((reads_cpu, service.base_url, svc_reads) if who == "service"
                                    else (reads_base_cpu, baseline_url, base_reads))
                meter.start()
                elapsed = await reads(base)
                meter.stop()
                out.append(len(read_jobs) / elapsed)
            say(f"reads round {rep + 1}/{reps}: service {svc_reads[-1]:.0f} req/s, bare aiohttp {base_reads[-1]:.0f} req/s")
        s, b = med(svc_reads), med(base_reads)
        rows.append(Row(f"REST reads (get one, list first page), {WORKERS} clients", f"{s:.0f} req/s",
                        f"{b:.0f} req/s bare aiohttp", f"{s / b:.2f}", ">= 0.50", s / b >= 0.5,
                        f"service req/s {fmt_list(svc_reads)}, baseline {fmt_list(base_reads)}; "
                        f"{reads_cpu.per(reps * len(read_jobs), 'read')}; "
                        f"baseline {reads_base_cpu.per(reps * len(read_jobs), 'read')}"))

        # ---- figure 2: management messages during a handshake storm vs plain component messages
        svc_mps, base_mps, storm_rest = [], [], []
        fig2_cpu = CpuMeter(cpu_pids)
        fig2_base_cpu = CpuMeter(base_pids)
        for rep in range(reps):
            pairs = xmpp_pool.take(size["storm"])
            expected = 2 * len(pairs)
            recipients = [f"{n}@{DOMAIN}" for pair in pairs for n in pair]
            order = ("baseline", "service") if rep % 2 == 0 else ("service", "baseline")
            for who in order:
                await clients.call({"cmd": "reset"})
                if who == "service":
                    t0 = time.monotonic()
                    fig2_cpu.start()
                    async with profiled(service.pid, profile_dir, f"fig2-storm-{rep}"):
                        res = await creates(http, service.base_url, sessions, pairs)
                        got = await clients.call({"cmd": "wait", "kind": "management", "count": expected, "timeout": 300})
                    if got["count"] < expected:
                        raise BenchError(f"storm: {got['count']} of {expected} management messages arrived")
                    svc_mps.append(expected / (got["last"] - t0))
                    storm_rest.append(res.requests / res.elapsed)
                    await wait_outbox_empty(service.db_path)
                    fig2_cpu.stop()
                else:
                    t0 = time.monotonic()
                    fig2_base_cpu.start()
                    await bcomp.call({"cmd": "messages", "to": recipients})
                    got = await clients.call({"cmd": "wait", "kind": "chat", "count": expected, "timeout": 300})
                    fig2_base_cpu.stop()
                    if got["count"] < expected:
                        raise BenchError(f"baseline: {got['count']} of {expected} chat messages arrived")
                    base_mps.append(expected / (got["last"] - t0))
            say(f"fig2 round {rep + 1}/{reps}: service {svc_mps[-1]:.0f} msg/s (creates {storm_rest[-1]:.0f}/s), "
                f"plain component {base_mps[-1]:.0f} msg/s")
        s, b = med(svc_mps), med(base_mps)
        rows.append(Row(f"mgmt messages/s, storm of {size['storm']} creates, {len(connected)} clients",
                        f"{s:.0f} msg/s", f"{b:.0f} msg/s plain component", f"{s / b:.2f}", ">= 0.70", s / b >= 0.7,
                        f"service {fmt_list(svc_mps)} (REST creates/s during the storm {fmt_list(storm_rest)}), "
                        f"baseline {fmt_list(base_mps)}; {fig2_cpu.per(reps * 2 * size['storm'], 'message')}; "
                        f"baseline {fig2_base_cpu.per(reps * 2 * size['storm'], 'message')}"))

        # ---- figure 3: accepts/s including the XEP-0356 roster sets vs the same roster sets alone
        svc_aps, base_aps, traffic_aps, accept_rest = [], [], [], []
        fig3_cpu = CpuMeter(cpu_pids)
        fig3_base_cpu = CpuMeter(base_pids)
        fig3_traffic_cpu = CpuMeter(base_pids)
        for rep in range(reps):
            pairs = xmpp_pool.take(size["accepts"])
            made = await creates(http, service.base_url, sessions, pairs)  # pending requests (not measured)
            await wait_outbox_empty(service.db_path)
            items = [item for s_, r_ in pairs for item in
                     ([f"{s_}@{DOMAIN}", f"{r_}@{DOMAIN}", "to"], [f"{r_}@{DOMAIN}", f"{s_}@{DOMAIN}", "from"])]
            # Baseline first: it adds the items; the service then sets the same items again
            # (Prosody rewrites the whole roster either way, so both see the same roster sizes).
            t0 = time.monotonic()
            fig3_base_cpu.start()
            got = await bcomp.call({"cmd": "roster", "items": items, "concurrency": ROSTER_CONCURRENCY})
            fig3_base_cpu.stop()
            if got["errors"]:
                raise BenchError(f"baseline roster sets: {got['errors']} errors")
            base_aps.append(len(pairs) / (time.monotonic() - t0))
            # The same XMPP traffic as the service's accepts (the roster sets and the two
            # messages per accept), from the plain component: what is left is the service's.
            messages = [f"{n}@{DOMAIN}" for pair in pairs for n in pair]
            t0 = time.monotonic()
            fig3_traffic_cpu.start()
            got = await bcomp.call({"cmd": "roster", "items": items, "concurrency": ROSTER_CONCURRENCY,
                                    "messages": messages})
            fig3_traffic_cpu.stop()
            if got["errors"]:
                raise BenchError(f"baseline roster sets with messages: {got['errors']} errors")
            traffic_aps.append(len(pairs) / (time.monotonic() - t0))
            t0 = time.monotonic()
            fig3_cpu.start()
            async with profiled(service.pid, profile_dir, f"fig3-accepts-{rep}"):
                res = await accepts(http, service.base_url, sessions, pairs, made.ids)
                done = await wait_outbox_empty(service.db_path, timeout=900, poll=0.01)
            fig3_cpu.stop()
            svc_aps.append(len(pairs) / (done - t0))
            accept_rest.append(len(pairs) / res.elapsed)
            say(f"fig3 round {rep + 1}/{reps}: service {svc_aps[-1]:.0f} accepts/s, "
                f"plain roster sets {base_aps[-1]:.0f} pairs/s, with the messages {traffic_aps[-1]:.0f} pairs/s")
        s, b = med(svc_aps), med(base_aps)
        rows.append(Row(f"accepts/s incl. XEP-0356 rosters ({size['accepts']} accepts)", f"{s:.0f} accepts/s",
                        f"{b:.0f} pairs/s plain roster sets", f"{s / b:.2f}", ">= 0.80", s / b >= 0.8,
                        f"service {fmt_list(svc_aps)} (REST accept answers alone: {fmt_list(accept_rest)}/s), "
                        f"baseline {fmt_list(base_aps)} (2 roster sets per accept, {ROSTER_CONCURRENCY} in flight); "
                        f"{fig3_cpu.per(reps * size['accepts'], 'accept')}; baseline "
                        f"{fig3_base_cpu.per(reps * size['accepts'], 'pair of roster sets')}"))
        t = med(traffic_aps)
        rows.append(Row("accepts/s vs the same XMPP traffic from a plain component", f"{s:.0f} accepts/s",
                        f"{t:.0f} pairs/s sets + 2 msgs", f"{s / t:.2f}", "-", None,
                        f"plain component {fmt_list(traffic_aps)} (the roster sets above plus the two "
                        f"messages per accept); "
                        f"{fig3_traffic_cpu.per(reps * size['accepts'], 'pair of roster sets and 2 messages')}"))

    # ---- phase B: stored requests. Stop phase A's processes first (CPU for the rest).
    service.stop()
    pg_service.stop()
    clients.quit()
    bcomp.quit()
    outbox_jids = [f"{n}@{DOMAIN}" for n in rest_only]
    small_n, large_n = size["small_rows"], size["large_rows"]
    dbs = {}
    for label, n in (("small", small_n), ("large", large_n)):
        started = time.monotonic()
        dbs[label] = await asyncio.to_thread(populate_db, workdir / f"store-{label}.sqlite3", n, outbox_jids)
        say(f"database with {n} requests + 1000 outbox rows written in {time.monotonic() - started:.1f}s")
    # The populated users have no XMPP account: the account checks would revoke the
    # measured user's token (as they should for a real deployment).
    services = {label: ServiceProcess(workdir, f"store-{label}", dbs[label].path, prosody,
                                      component_jid=f"store-{label}.{DOMAIN}",
                                      auth={"account_check_s": 0}) for label in dbs}
    for svc in services.values():
        svc.start()
    for label, svc in services.items():
        await svc.wait_healthy()
        await wait_outbox_empty(svc.db_path, timeout=600)  # the 1000 outbox rows delivered
    say("stored-request services up, their outbox rows delivered")
    p50s: dict[str, list[float]] = {"small": [], "large": []}
    p99s: dict[str, list[float]] = {"small": [], "large": []}
    for rep in range(reps):
        for label in (("small", "large") if rep % 2 == 0 else ("large", "small")):
            db = dbs[label]
            lat = await list_latencies(services[label].base_url, db.measured_user_id, db.measured_token,
                                       size["latency_requests"], warmup=20)
            p50s[label].append(percentile(lat, 0.50))
            p99s[label].append(percentile(lat, 0.99))
        say(f"fig4 round {rep + 1}/{reps}: {rows_label(small_n)} p50 {p50s['small'][-1]:.2f} p99 {p99s['small'][-1]:.2f} ms; "
            f"{rows_label(large_n)} p50 {p50s['large'][-1]:.2f} p99 {p99s['large'][-1]:.2f} ms")
    mem = {label: svc.memory() for label, svc in services.items()}
    for svc in services.values():
        svc.stop()

    S, L = rows_label(small_n), rows_label(large_n)
    p50_s, p50_l, p99_s, p99_l = med(p50s["small"]), med(p50s["large"]), med(p99s["small"]), med(p99s["large"])
    rows.append(Row(f"list received p50 (first page of 200), {L} rows", f"{p50_l:.2f} ms", f"{p50_s:.2f} ms at {S}",
                    f"{p50_l / p50_s:.2f}", "-", None,
                    f"{L}: {fmt_list(p50s['large'], 2)}; {S}: {fmt_list(p50s['small'], 2)} "
                    f"({size['latency_requests']} sequential requests per round)"))
    rows.append(Row(f"list received p99 (first page of 200), {L} rows", f"{p99_l:.2f} ms", f"{p99_s:.2f} ms at {S}",
                    f"{p99_l / p99_s:.2f}", "<= 1.5x and < 10 ms", p99_l <= 1.5 * p99_s and p99_l < 10,
                    f"{L}: {fmt_list(p99s['large'], 2)}; {S}: {fmt_list(p99s['small'], 2)}"))
    hwm_l, hwm_s, idle = mem["large"]["VmHWM"] / 1024, mem["small"]["VmHWM"] / 1024, idle_mem["VmHWM"] / 1024
    growth = hwm_l - hwm_s
    rows.append(Row(f"service peak RSS, {L} rows + 1k outbox rows", f"{hwm_l:.1f} MB", f"{idle:.1f} MB idle, empty db",
                    f"{hwm_l / idle:.2f}", f"< 150 MB; +{L} vs {S} <= 10 MB", hwm_l < 150 and growth <= 10,
                    f"VmHWM {S}: {hwm_s:.1f} MB, {L}: {hwm_l:.1f} MB (growth {growth:+.1f} MB); VmRSS now "
                    f"{S}: {mem['small']['VmRSS'] / 1024:.1f} MB, {L}: {mem['large']['VmRSS'] / 1024:.1f} MB; "
                    f"empty db idle VmRSS {idle_mem['VmRSS'] / 1024:.1f} MB"))
    notes.append(f"{reps} rounds per figure, medians shown; baseline and service alternate first place each round")
    notes.append("the load generator, the XMPP clients, Prosody and the service share this machine's CPUs")
    return rows, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a CI smoke run; never fails on targets")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per figure (medians reported), default 3")
    parser.add_argument("--profile", metavar="DIR", help="record the service with py-spy during its rounds")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, databases)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

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
