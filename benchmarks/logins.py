#!/usr/bin/env python3
"""Login checks on the real stack: rate and memory of `GET .../login` (issues #10, #14).

    python benchmarks/logins.py                       # both figures below
    python benchmarks/logins.py --rounds 5 --logins 0 # logins/s only
    python benchmarks/logins.py --burst 150           # instead: a correct login during a burst

Prosody runs on loopback with `--users` accounts; services run as
`python -m component --config FILE` in their own processes.

1. logins/s with valid passwords, `--workers` (32) at once: the service (configured
   with max_concurrent_logins = --workers) against the baseline, a minimal SASL client
   (component/login.py's XmppPasswordVerifier called directly in this process: the
   service's per-login exchange without HTTP, token, storage and rate limiter), and for
   information the service with every default (the login rate limits too: from the load
   generator's one address, at most 20 checks run at once and the rest wait for their
   verdicts, as a morning rush behind one office address would); `--rounds` rounds of
   `--rate-logins` logins per side, the order rotating; medians, ratios, CPU per login.
2. RSS of a fresh service over `--logins` (10,000) logins, half of them wrong
   passwords: after the first 100, after each fifth of the rest and 5 s later.

Both lift the login rate limits (printed) unless `--auth KEY=VALUE` sets them; it adds
any [auth] key to the services' config (integers, numbers, true/false, else strings).
With `--burst N`, instead: N concurrent wrong logins from 127.0.0.1 and, meanwhile, the
latency of one correct login of another account from 127.0.0.2.

Exit status: 0 measured (targets are printed, never fail the run), 2 the benchmark
itself failed (a process died, an unexpected answer).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack  # noqa: E402
from run import PY_SPY_MISSING, machine_info, profiled, py_spy  # noqa: E402
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


# Both figures lift the login rate limits unless --auth sets them: every wrong password
# then reaches the XMPP server (with the defaults, 5 per JID and 20 per address a minute,
# nearly all wrong logins from the one address would be 429 without a check).
LIFTED = {"login_failures_per_jid": 1_000_000, "login_failures_per_address": 1_000_000}
DEFAULT_LIMITS = {"login_failures_per_jid": 5, "login_failures_per_address": 20, "max_concurrent_logins": 32}


def limits_text(auth: dict[str, Any]) -> str:
    """The service's login limits (its defaults unless set), then any other [auth] key."""
    limit = lambda key: key in DEFAULT_LIMITS or key.startswith("login_")  # noqa: E731
    shown = {**DEFAULT_LIMITS, **{k: v for k, v in auth.items() if limit(k)}}
    extra = {k: v for k, v in auth.items() if not limit(k)}
    text = ", ".join(f"{k}={v}" for k, v in shown.items())
    return text + (f"; other [auth] keys {extra}" if extra else "")


async def baseline_logins(prosody: BenchProsody, jobs: list[tuple[str, str]], workers: int,
                          statuses: collections.Counter) -> float:
    """The minimal SASL client: component/login.py's XmppPasswordVerifier, used directly in
    this process (no HTTP, no token, no storage, no rate limiter), `workers` checks at once."""
    from component.login import XmppPasswordVerifier
    from component.model import BareJid

    verifier = XmppPasswordVerifier("127.0.0.1", prosody.c2s_port, allow_plaintext=True,
                                    timeout_s=30, max_concurrent=workers)
    it = iter(jobs)

    async def worker() -> None:
        for name, password in it:
            ok = await verifier.verify(BareJid(f"{name}@{DOMAIN}"), password)
            statuses[200 if ok else 401] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(workers, len(jobs)))))
    return time.perf_counter() - started


def median(values: list[float]) -> float:
    return statistics.median(values)


async def rate_figure(args: argparse.Namespace, workdir: Path, prosody: BenchProsody, names: list[str]) -> bool:
    """logins/s with valid passwords: the service against the minimal SASL client, and
    (for information) the service with every default; the order of the three rotates
    from round to round. Returns False on an unexpected answer (valid passwords: 200 only,
    on every side)."""
    # The measured service: the login rate limits lifted and `--workers` checks at once,
    # the baseline's concurrency (a check still running counts against the budgets, so
    # with the default 20 per address at most 20 of the load generator's run at once).
    auth = {**LIFTED, "max_concurrent_logins": args.workers, **args.auth}
    auth_default = dict(args.auth)
    service = ServiceProcess(workdir, "service-rate", workdir / "service-rate.sqlite3", prosody, auth=auth)
    default = ServiceProcess(workdir, "service-default", workdir / "service-default.sqlite3", prosody,
                             component_jid=stack.EXTRA_COMPONENTS[1], auth=auth_default)
    for proc in (service, default):
        proc.start()
    for proc in (service, default):
        await proc.wait_healthy()
    await asyncio.sleep(1)
    me = os.getpid()
    sides = {
        "service": service,
        "baseline": None,
        "service, defaults": default,
    }
    meters = {
        "service": CpuMeter({"service": service.pid, "prosody": prosody.pid, "load generator": me}),
        "baseline": CpuMeter({"prosody": prosody.pid, "SASL client (this process)": me}),
        "service, defaults": CpuMeter({"service": default.pid, "prosody": prosody.pid, "load generator": me}),
    }
    rates: dict[str, list[float]] = {side: [] for side in sides}
    statuses = {side: collections.Counter() for side in sides}
    offset = 0

    def valid_jobs() -> list[tuple[str, str]]:
        nonlocal offset
        chosen = [names[(offset + k) % len(names)] for k in range(args.rate_logins)]
        offset += args.rate_logins
        return [(n, f"pw-{n}") for n in chosen]

    async def one(http: aiohttp.ClientSession, side: str, jobs: list[tuple[str, str]],
                  counted: collections.Counter) -> float:
        target = sides[side]
        if target is None:
            return await baseline_logins(prosody, jobs, args.workers, counted)
        return await log_in(http, target.base_url, jobs, args.workers, counted)

    connector = aiohttp.TCPConnector(limit=args.workers)
    names_order = list(sides)
    async with aiohttp.ClientSession(connector=connector) as http:
        # Warm-up (not measured): each path once over every account.
        for side in names_order:
            await one(http, side, [(n, f"pw-{n}") for n in names], collections.Counter())
        for r in range(args.rounds):
            order = names_order[r % 3:] + names_order[:r % 3]
            line = []
            for side in order:
                jobs = valid_jobs()
                pid = sides[side].pid if sides[side] is not None else None
                async with profiled(pid, args.profile if pid else None, f"logins-{side.split(',')[0]}-{r + 1}"
                                    + ("-default" if "default" in side else "")):
                    meters[side].start()  # py-spy's attach time is not counted
                    elapsed = await one(http, side, jobs, statuses[side])
                    meters[side].stop()
                rates[side].append(len(jobs) / elapsed)
                line.append(f"{side} {len(jobs) / elapsed:.0f}/s")
            say(f"round {r + 1}/{args.rounds}: " + ", ".join(line))
    logs = [proc.log_path.read_text(errors="replace") for proc in (service, default)]
    for proc in (service, default):
        proc.stop()
    count = args.rounds * args.rate_logins

    def rounds_of(side: str) -> str:
        return (f"median {median(rates[side]):.0f}/s, rounds " + ", ".join(f"{x:.0f}" for x in rates[side])
                + f"; answers {dict(sorted(statuses[side].items()))}")

    print(f"logins/s, {args.workers} concurrent, valid passwords ({args.rounds} rounds x {args.rate_logins} "
          f"logins per side, {len(names)} accounts, the order of the sides rotating):")
    print(f"  service (GET {LOGIN}; [auth] {limits_text(auth)}): {rounds_of('service')}")
    print(f"    {meters['service'].per(count, 'login')}")
    print(f"  baseline (minimal SASL client: component/login.py's XmppPasswordVerifier in the load generator, "
          f"{args.workers} checks at once): {rounds_of('baseline')}")
    print(f"    {meters['baseline'].per(count, 'login')}")
    ratio = median(rates["service"]) / median(rates["baseline"])
    per_round = ", ".join(f"{a / b:.2f}" for a, b in zip(rates["service"], rates["baseline"]))
    print(f"  ratio service/baseline (medians): {ratio:.2f} (per round {per_round}); target >= 0.8: "
          f"{'PASS' if ratio >= 0.8 else 'FAIL'}")
    side = "service, defaults"
    info = median(rates[side]) / median(rates["baseline"])
    per_round = ", ".join(f"{a / b:.2f}" for a, b in zip(rates[side], rates["baseline"]))
    print(f"  (info) service with [auth] {limits_text(auth_default)}: {rounds_of(side)}; "
          f"ratio to the baseline {info:.2f} (per round {per_round})")
    print(f"    {meters[side].per(count, 'login')}")
    print("  service logs: " + ", ".join(f"{t.count('Traceback')} tracebacks in {len(t.splitlines())} lines"
                                          for t in logs))
    ok = all(set(c) <= {200} for c in statuses.values())
    if not ok:
        say(f"unexpected answers with valid passwords; see {workdir}")
    return ok


async def growth_figure(args: argparse.Namespace, workdir: Path, prosody: BenchProsody, names: list[str]) -> bool:
    """RSS of a fresh service over `--logins` logins, half of them wrong passwords."""
    auth = {**LIFTED, **args.auth}
    service = ServiceProcess(workdir, "service-growth", workdir / "service-growth.sqlite3", prosody, auth=auth)
    service.start()
    await service.wait_healthy()
    await asyncio.sleep(2)
    idle = service.memory()["VmRSS"]
    jobs = []
    for k in range(args.logins):
        name = names[(k // 2) % len(names)]
        jobs.append((name, f"pw-{name}" if k % 2 == 0 else f"wrong-{k}"))
    statuses: collections.Counter = collections.Counter()
    checkpoints: list[tuple[int, int]] = []
    connector = aiohttp.TCPConnector(limit=args.workers)
    async with aiohttp.ClientSession(connector=connector) as http:
        await log_in(http, service.base_url, jobs[:FIRST], args.workers, statuses)
        after_first = service.memory()["VmRSS"]
        cpu = CpuMeter({"service": service.pid, "prosody": prosody.pid, "load generator": os.getpid()})
        step = max(1, (len(jobs) - FIRST) // 5)
        elapsed = 0.0
        done = FIRST
        while done < len(jobs):
            chunk = jobs[done:done + step]
            cpu.start()
            elapsed += await log_in(http, service.base_url, chunk, args.workers, statuses)
            cpu.stop()
            done += len(chunk)
            checkpoints.append((done, service.memory()["VmRSS"]))
        after_all = checkpoints[-1][1]
    await asyncio.sleep(5)
    settled = service.memory()
    log_text = service.log_path.read_text(errors="replace")
    service.stop()
    rest = len(jobs) - FIRST
    growth = (after_all - after_first) / 1024
    print(f"service RSS over {len(jobs)} logins ({args.workers} concurrent, {len(names)} accounts, half wrong "
          f"passwords; [auth]: {limits_text(auth)}):")
    print(f"  answers: {dict(sorted(statuses.items()))}")
    print(f"  RSS: idle {mb(idle)}, after {FIRST} logins {mb(after_first)}, "
          + ", ".join(f"after {n} {mb(kb)}" for n, kb in checkpoints)
          + f", 5 s later {mb(settled['VmRSS'])} (peak {mb(settled['VmHWM'])})")
    print(f"  growth after {FIRST} -> after {len(jobs)}: {growth:+.1f} MB; target <= 10 MB: "
          f"{'PASS' if growth <= 10 else 'FAIL'}")
    print(f"  rate over logins {FIRST + 1}..{len(jobs)}: {rest / elapsed:.0f} logins/s ({elapsed:.1f} s); "
          + cpu.per(rest, "login"))
    print(f"  service log: {log_text.count('Traceback')} tracebacks, {log_text.count('IqTimeout')} IqTimeout, "
          f"{len(log_text.splitlines())} lines")
    unexpected = set(statuses) - {200, 401, 429}
    if unexpected:
        say(f"unexpected answers {sorted(unexpected)}; see {service.log_path}")
    return not unexpected


async def bench(args: argparse.Namespace, workdir: Path) -> int:
    names = [f"u{i:04d}" for i in range(args.users)]
    prosody = BenchProsody(workdir / "prosody", domain=DOMAIN, component_jid=SERVICE_JID, component_secret=SECRET)
    write_accounts(prosody, {n: f"pw-{n}" for n in names})
    prosody.start()
    try:
        if args.burst:
            service = ServiceProcess(workdir, "service", workdir / "service.sqlite3", prosody, auth=args.auth)
            service.start()
            await service.wait_healthy()
            await asyncio.sleep(2)
            latency, status, statuses = await burst(service.base_url, names, args.burst)
            service.stop()
            print(f"{args.burst} concurrent wrong logins from 127.0.0.1 (one per account in turn), answered "
                  f"{dict(sorted(statuses.items()))}; meanwhile a correct login of another account from "
                  f"127.0.0.2: {status} in {1000 * latency:.0f} ms; [auth] extra: {args.auth or '-'}")
            return 0 if status == 200 else 2

        for line in machine_info():
            print(line)
        ok = True
        if args.rounds:
            ok = await rate_figure(args, workdir, prosody, names) and ok
        if args.logins:
            ok = await growth_figure(args, workdir, prosody, names) and ok
    finally:
        prosody.stop()
    return 0 if ok else 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=10_000,
                        help="logins of the RSS figure, half wrong passwords (0: skip it)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the logins/s figure, service and baseline alternating first (0: skip it)")
    parser.add_argument("--rate-logins", type=int, default=1000, help="valid logins per side per round")
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--auth", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra [auth] key for the service (repeatable)")
    parser.add_argument("--burst", type=int, default=0, metavar="N",
                        help="instead: N concurrent wrong logins, and one correct login from another address")
    parser.add_argument("--profile", metavar="DIR", type=Path,
                        help="py-spy records the service during its logins/s rounds (skews them)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, database)")
    args = parser.parse_args(argv)
    if args.logins and args.logins <= FIRST:
        parser.error(f"--logins must be 0 or more than {FIRST}")
    auth = {}
    for item in args.auth:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--auth {item!r}: expected KEY=VALUE")
        auth[key] = config_value(value)
    args.auth = auth
    if args.profile:
        if py_spy() is None:
            parser.error(PY_SPY_MISSING)
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
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
