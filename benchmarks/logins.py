#!/usr/bin/env python3
"""Login checks on the real stack: memory and rate of `GET .../login` (issue #10).

    python benchmarks/logins.py                       # 2000 logins, half with wrong passwords
    python benchmarks/logins.py --logins 500 --auth login_failures_per_jid=1000

Prosody runs on loopback with `--users` accounts, the service runs as
`python -m component --config FILE` in its own process, and `--workers` concurrent
clients (one aiohttp session) log in `--logins` times: login k is user (k // 2) mod
users, with the right password when k is even and a wrong one when k is odd. The
service's RSS is read from /proc after the first 100 logins, after all of them, and
again after 5 s idle; logins/s (and the CPU each process used per login) is over the
logins after the first 100. The service's
log is searched for tracebacks. With `--burst N`, instead: N concurrent wrong logins
from 127.0.0.1 and, meanwhile, the latency of one correct login of another account from
127.0.0.2. `--auth KEY=VALUE` adds [auth] keys to the service's
config (integers, numbers, true/false, else strings), e.g. to lift the login rate
limits so that every wrong password reaches the XMPP server.

Exit status: 0 measured, 2 the benchmark itself failed (a process died, an answer
other than 200/401/429).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack  # noqa: E402
from stack import DOMAIN, SECRET, SERVICE_JID, BenchProsody, CpuMeter, ServiceProcess, write_accounts  # noqa: E402

LOGIN = "/api/rainbow/authentication/v1.0/login"
FIRST = 100  # RSS is read after this many logins, and the rate is taken over the rest


def say(text: str) -> None:
    print(f"[logins {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def config_value(text: str) -> Any:
    try:
        return json.loads(text)  # 5, 2.5, true, false
    except ValueError:
        return text


def basic(name: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{name}@{DOMAIN}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


async def log_in(http: aiohttp.ClientSession, base: str, jobs: list[tuple[str, str]], workers: int,
                 statuses: collections.Counter) -> float:
    """`workers` coroutines share `jobs` (name, password); returns the elapsed seconds."""
    it = iter(jobs)

    async def worker() -> None:
        for name, password in it:
            async with http.get(base + LOGIN, headers=basic(name, password)) as resp:
                await resp.read()
                statuses[resp.status] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(workers, len(jobs)))))
    return time.perf_counter() - started


async def burst(base: str, names: list[str], size: int) -> tuple[float, int, collections.Counter]:
    """`size` concurrent wrong logins from 127.0.0.1 (one per account in turn), and
    during them one correct login of another account from 127.0.0.2: its latency."""
    statuses: collections.Counter = collections.Counter()
    guessed, user = names[:-1], names[-1]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as attacker, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as own:

        async def guess(k: int) -> None:
            async with attacker.get(base + LOGIN, headers=basic(guessed[k % len(guessed)], f"wrong-{k}")) as resp:
                await resp.read()
                statuses[resp.status] += 1

        guesses = [asyncio.create_task(guess(k)) for k in range(size)]
        await asyncio.sleep(0.2)  # the guesses are in
        started = time.perf_counter()
        async with own.get(base + LOGIN, headers=basic(user, f"pw-{user}")) as resp:
            await resp.read()
            status = resp.status
        latency = time.perf_counter() - started
        await asyncio.gather(*guesses)
    return latency, status, statuses


def mb(kb: int) -> str:
    return f"{kb / 1024:.1f} MB"


async def bench(args: argparse.Namespace, workdir: Path) -> int:
    names = [f"u{i:04d}" for i in range(args.users)]
    prosody = BenchProsody(workdir / "prosody", domain=DOMAIN, component_jid=SERVICE_JID, component_secret=SECRET)
    write_accounts(prosody, {n: f"pw-{n}" for n in names})
    prosody.start()
    try:
        service = ServiceProcess(workdir, "service", workdir / "service.sqlite3", prosody, auth=args.auth)
        service.start()
        await service.wait_healthy()
        await asyncio.sleep(2)
        if args.burst:
            latency, status, statuses = await burst(service.base_url, names, args.burst)
            service.stop()
            print(f"{args.burst} concurrent wrong logins from 127.0.0.1 (one per account in turn), answered "
                  f"{dict(sorted(statuses.items()))}; meanwhile a correct login of another account from "
                  f"127.0.0.2: {status} in {1000 * latency:.0f} ms; [auth] extra: {args.auth or '-'}")
            return 0 if status == 200 else 2
        idle = service.memory()["VmRSS"]
        jobs = []
        for k in range(args.logins):
            name = names[(k // 2) % len(names)]
            jobs.append((name, f"pw-{name}" if k % 2 == 0 else f"wrong-{k}"))
        statuses: collections.Counter = collections.Counter()
        connector = aiohttp.TCPConnector(limit=args.workers)
        async with aiohttp.ClientSession(connector=connector) as http:
            await log_in(http, service.base_url, jobs[:FIRST], args.workers, statuses)
            after_first = service.memory()["VmRSS"]
            cpu = CpuMeter({"service": service.pid, "prosody": prosody.pid, "load generator": os.getpid()})
            cpu.start()
            elapsed = await log_in(http, service.base_url, jobs[FIRST:], args.workers, statuses)
            cpu.stop()
            after_all = service.memory()["VmRSS"]
        await asyncio.sleep(5)
        settled = service.memory()
        log_text = service.log_path.read_text(errors="replace")
        service.stop()
    finally:
        prosody.stop()
    rest = len(jobs) - FIRST
    print(f"logins: {len(jobs)} ({args.workers} concurrent, {args.users} accounts, half wrong passwords); "
          f"[auth] extra: {args.auth or '-'}")
    print(f"answers: {dict(sorted(statuses.items()))}")
    print(f"service RSS: idle {mb(idle)}, after {FIRST} logins {mb(after_first)}, "
          f"after {len(jobs)} {mb(after_all)}, 5 s later {mb(settled['VmRSS'])} (peak {mb(settled['VmHWM'])})")
    print(f"rate over logins {FIRST + 1}..{len(jobs)}: {rest / elapsed:.0f} logins/s ({elapsed:.1f} s); "
          + cpu.per(rest, "login"))
    print(f"service log: {log_text.count('Traceback')} tracebacks, {log_text.count('IqTimeout')} IqTimeout, "
          f"{len(log_text.splitlines())} lines")
    unexpected = set(statuses) - {200, 401, 429}
    if unexpected:
        say(f"unexpected answers {sorted(unexpected)}; see {service.log_path}")
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--auth", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra [auth] key for the service (repeatable)")
    parser.add_argument("--burst", type=int, default=0, metavar="N",
                        help="instead: N concurrent wrong logins, and one correct login from another address")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, database)")
    args = parser.parse_args(argv)
    if args.logins <= FIRST:
        parser.error(f"--logins must be more than {FIRST}")
    auth = {}
    for item in args.auth:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--auth {item!r}: expected KEY=VALUE")
        auth[key] = config_value(value)
    args.auth = auth
    workdir = Path(tempfile.mkdtemp(prefix="presence-logins-"))
    os.chmod(workdir, 0o755)  # prosody may need to traverse it
    say(f"work folder {workdir}")
    try:
        stack.ensure_prosody_installed()
        return asyncio.run(bench(args, workdir))
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, OSError, aiohttp.ClientError, TimeoutError) as exc:
        say(f"benchmark error: {exc!r} (logs in {workdir})")
        args.keep = True
        return 2
    finally:
        stack.kill_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"kept {workdir}")


if __name__ == "__main__":
    sys.exit(main())
