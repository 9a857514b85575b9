"""`python -m component --config FILE`: the composition root.

Builds storage, actions, the XMPP component and the REST bridge, and runs them
on one event loop until SIGINT/SIGTERM. This is the one module that imports
both the component and the HTTP bridge.

`python -m component resync --config FILE` queues, for every consent in the
database, the roster directions it grants (and the removal of those it no longer
grants); the running service, or the next one started, applies them.

`python -m component migrate-storage --from PATH --to URL` copies a SQLite database
into an empty PostgreSQL one (storage/transfer.py); then set `[storage] url`.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import errno
import gc
import logging
import logging.handlers
import queue
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from component.actions import Identity, PresenceSharing
from component.clock import Clock
from component.config import Config, ConfigError, load_config
from component.delivery import OutboxDispatcher
from component.device_sharing import DeviceSharing, SharingSettings
from component.login import XmppPasswordVerifier
from component.mail import MailDispatcher
from component.model import parse_bare_jid
from component.provisioning import Provisioning
from component.rosters import Rosters
from component.subscriptions import PresenceStates
from component.worker import stop_task
from component.xmpp import PresenceComponent
from http_bridge import HttpListener, Services, build_app
from http_bridge.context import REQUEST_LOGGER, log_request_line
from storage import Conn, SchemaTooNew, database_for, dead_letters, is_postgres_url, outbox
from storage import mail as mail_outbox
from storage.instance_lock import DatabaseInUse, InstanceLock

if TYPE_CHECKING:
    from component.leadership import Leadership

log = logging.getLogger("component")


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The thread that writes the log (setup_logging); None before, and after stop_logging().
_log_writer: _LineWriter | None = None

# How long the writer thread lets lines gather once it has written all it had.
LOG_LINGER_S = 0.02

# Lines the writer thread writes at most in one write() while lines keep coming.
LOG_BATCH_LINES = 256


class _LineFormat(logging.Formatter):
    """LOG_FORMAT, with each second's date and time made once: the stdlib's formatTime
    runs localtime() and strftime() for every record (about a fifth of the time a line
    took to format, issue #14). The same text: `2026-12-03 06:10:08,793`. Any thread
    may format: the second and its text are replaced together."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return self.stamp(record.created)

    def stamp(self, created: float) -> str:
        """`created` (time.time()) as %(asctime)s shows it; the milliseconds as a
        LogRecord counts them."""
        cached, text = self._second
        second = int(created)
        if second != cached:
            text = time.strftime(self.default_time_format, self.converter(second))
            self._second = (second, text)
        return self.default_msec_format % (text, int((created - second) * 1000))


# The one line format: the root logger's handler and write_request_line share its cache.
_LINE_FORMAT = _LineFormat()


class _QueueHandler(logging.handlers.QueueHandler):
    """The root logger's one handler: the record's line (LOG_FORMAT, any traceback
    appended) is made on the caller's side, with the values at log time (the arguments may
    change once the caller goes on), and put on the queue for `_LineWriter`.

    The line rather than the record, as the QueueHandler documentation suggests for a
    string: the stdlib copies each record here and formats it again on the writer thread,
    through a QueueListener and a handler. Made here, a line costs 7-8 us of CPU in all
    threads, against 10-12 us that way (issue #14); the writer only joins and writes."""

    def prepare(self, record: logging.LogRecord) -> str:  # type: ignore[override]
        return self.format(record)


class _LineWriter(threading.Thread):
    """Writes the queued lines to `stream`, several in one write(): a write and a flush
    per line cost a loaded service a system call and a turn of the GIL per request.

    A thread waiting on the queue is woken by every line put on it, and each wake-up
    costs the event loop a thread switch and a turn of the GIL. So once it has written
    what was queued, the thread sleeps `LOG_LINGER_S` before it waits again: lines put
    meanwhile are only appended (nobody waits to be woken) and written in one go. A line
    is written at most that much later; an idle service's thread just waits. None on the
    queue (stop()) ends the thread once what came before it is written."""

    def __init__(self, lines: queue.SimpleQueue[str | None], stream: Any) -> None:
        super().__init__(name="log writer", daemon=True)
        self.lines = lines
        self.stream = stream

    def run(self) -> None:
        while True:
            line = self.lines.get()
            batch: list[str] = []
            while line is not None:
                batch.append(line)
                if len(batch) == LOG_BATCH_LINES:
                    self._write(batch)
                    batch = []
                try:
                    line = self.lines.get_nowait()
                except queue.Empty:
                    break
            self._write(batch)
            if line is None:
                return
            self.linger()

    def _write(self, batch: list[str]) -> None:
        if not batch:
            return
        try:
            self.stream.write("\n".join(batch) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr closed or broken: there is nowhere left to say so

    def linger(self) -> None:
        time.sleep(LOG_LINGER_S)

    def stop(self) -> None:
        """Write every line queued so far, then end the thread."""
        self.lines.put(None)
        self.join()


def write_request_line(line: str) -> None:
    """The service's `Services.request_log`: the request line put on the writer's queue
    as the logging module would write it (LOG_FORMAT, logger `http_bridge`, INFO; not at
    a higher [logging] level), without a record, the handler chain and the formatting in
    between: under the benchmark's reads load that chain took 10-12% of the service's CPU
    per read, and the line costs almost nothing this way (issue #14). Before
    setup_logging() (tests that build a Service) it goes through the logging module."""
    writer = _log_writer
    if writer is None:
        log_request_line(line)
    elif REQUEST_LOGGER.isEnabledFor(logging.INFO):
        writer.lines.put(f"{_LINE_FORMAT.stamp(time.time())} INFO {REQUEST_LOGGER.name}: {line}")


def setup_logging(level: str) -> None:
    """One line per record on stderr, written by a thread (`_LineWriter`): the event loop
    only puts the line on a queue, so a slow or blocked stderr (a pipe nobody reads fast
    enough, a terminal) never stalls it. stop_logging() writes what is queued; it runs at
    exit too."""
    global _log_writer
    stop_logging()
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    handler = _QueueHandler(lines)
    handler.setFormatter(_LINE_FORMAT)
    # LOG_FORMAT names no thread, process or call site: the logging module's documented
    # switches leave those out of every record ("Optimization" in the logging HOWTO; the
    # call site is a frame walk per record).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # noqa: SLF001 - the HOWTO's own switch for the call site
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    _log_writer = _LineWriter(lines, sys.stderr)
    _log_writer.start()
    atexit.register(stop_logging)
    # slixmpp logs every stanza of the component session at DEBUG: keep it to
    # warnings. (Login checks do not go through slixmpp: component/login.py.)
    logging.getLogger("slixmpp").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def stop_logging() -> None:
    """Write every line queued so far, stop the writer thread and remove the queue's
    handler from the root logger. Idempotent."""
    global _log_writer
    writer, _log_writer = _log_writer, None
    if writer is None:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _QueueHandler) and handler.queue is writer.lines:
            root.removeHandler(handler)
    writer.stop()  # None goes after every line already queued


async def delivery_backlog(conn: Conn) -> dict[str, int | None]:
    """How much waits to be delivered, in one read."""
    pending, oldest = await outbox.depth(conn)
    return {
        "outbox_pending": pending,
        "outbox_oldest": oldest,
        "mail_pending": await mail_outbox.count(conn),
        "dead_letters": await dead_letters.count(conn),
    }


class Service:
    """Everything the process runs, wired together."""

    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.db = database_for(config.storage.target, config.storage.pool_size, config.storage.read_cache_mb)
        served = config.component.served_domains()
        verifier = XmppPasswordVerifier(
            config.auth.c2s_host,
            config.auth.c2s_port,
            config.auth.c2s_allow_plaintext,
            config.auth.login_timeout_s,
            config.auth.max_concurrent_logins,
            config.auth.c2s_tls_ca_file,
        )
        limits = config.limits
        self.identity = Identity(
            self.db,
            self.clock,
            served,
            verifier,
            config.auth.token_ttl_s,
            config.auth.admin_token,
            config.auth.login_limits(),
            limits.max_tokens_per_user,
            config.auth.token_cache_s,
        )
        self.sharing = PresenceSharing(
            self.db, self.clock, served, self._outbox_written, limits.max_pending_sent,
            limits.max_unseen_targets_per_user,
        )
        component_jid = config.component.jid
        self.provisioning = Provisioning(self.db, self.clock, served, component_jid, self._outbox_written)
        self.states = PresenceStates(
            self.db, self.clock, served, self.provisioning, self._outbox_written, component_jid,
            limits.max_subscriptions_per_user,
        )
        self.rosters = Rosters(self.db, self.clock, component_jid, self._outbox_written)
        self.mail = MailDispatcher(self.db, self.clock, config.smtp)
        self.device_sharing = DeviceSharing(
            self.db,
            self.clock,
            served,
            SharingSettings(
                component_jid=config.component.jid,
                max_expire_s=config.sharing.max_expire_s,
                max_pending_per_device=config.sharing.max_pending_per_device,
                email_enabled=bool(config.smtp.host),
                public_url=config.sharing.public_url,
                max_unseen_targets=limits.max_unseen_targets_per_user,
            ),
            self._outbox_written,
            self.mail.wake,
        )
        self._sweeper: asyncio.Task[None] | None = None
        self.xmpp = PresenceComponent(
            config.component,
            self.identity,
            self.sharing,
            self.states,
            self.device_sharing,
            config.limits.max_page_size,
            frozenset(parse_bare_jid(a) for a in config.auth.xmpp_admins),
            config.auth.account_check_s,
            config.roster,
        )
        self.dispatcher = OutboxDispatcher(
            self.db, self.xmpp, clock=self.clock, poll_s=config.component.outbox_poll_s,
            max_attempts=config.component.outbox_max_attempts,
        )
        self.xmpp.dispatcher = self.dispatcher
        self.xmpp.rosters = self.rosters
        # PostgreSQL: several instances may share the database; the one holding the lock
        # is the active one (component/leadership.py), the others stand by.
        self.leadership: Leadership | None = None
        if config.storage.shared:
            from component.leadership import Leadership, lock_key

            self.leadership = Leadership(
                config.storage.url, lock_key(config.component.jid), self._lead, self._leadership_lost,
            )
        self._listener = None
        self._leading = False
        self.lost = asyncio.Event()  # set when this instance can no longer know it leads
        self.app = build_app(
            Services(
                self.identity,
                self.sharing,
                self.health,
                config.limits.max_page_size,
                self.provisioning,
                self.states,
                config.component.jid,
                self.device_sharing,
                self.metrics,
                write_request_line,
            ),
            config.http,
        )
        self._http = HttpListener(self.app)

    def _outbox_written(self) -> None:
        self.dispatcher.wake()

    def _notified(self, channel: str) -> None:
        """A row was committed into `channel` (a table) by some instance (PostgreSQL)."""
        if channel == "outbox":
            self.dispatcher.wake()
        elif channel == "mail_outbox":
            self.mail.wake()

    def _leadership_lost(self) -> None:
        self.lost.set()

    @property
    def standby(self) -> bool:
        """Another instance on the same database is the active one."""
        return self.leadership is not None and not self._leading

    async def health(self) -> tuple[bool, dict[str, object]]:
        """GET /healthz: 200 while the XMPP session is up and storage works; the outbox's
        depth and age, the mail backlog and the dead letters say how far behind it is."""
        storage = await self.db.state()
        status = self.xmpp.status()
        standby = self.standby
        if standby:
            status = {"xmpp": "standby", "roster": "unavailable"}
        body: dict[str, object] = {"xmpp": status["xmpp"], "storage": storage, "roster": status["roster"]}
        try:
            backlog = await self.db.read(delivery_backlog)
        except Exception:  # noqa: BLE001 - storage's state already says why
            backlog = {}
        now = self.clock.now_ms()
        oldest = backlog.get("outbox_oldest")
        body["outbox_pending"] = backlog.get("outbox_pending", 0)
        body["outbox_oldest_age_s"] = round(max(0, now - oldest) / 1000, 1) if oldest else 0
        body["mail_pending"] = backlog.get("mail_pending", 0)
        body["dead_letters"] = backlog.get("dead_letters", 0)
        return storage == "ok" and (standby or status["xmpp"] == "connected"), body

    async def metrics(self) -> dict[str, object]:
        """GET /metrics: one reading of the service's figures (http_bridge/metrics.py
        names them); the backlog is read from storage, the rest are counters."""
        try:
            backlog = await self.db.read(delivery_backlog)
        except Exception:  # noqa: BLE001 - /healthz says why
            backlog = {}
        oldest = backlog.get("outbox_oldest")
        status = self.xmpp.status()
        return {
            "outbox_pending": backlog.get("outbox_pending", 0),
            "outbox_oldest_age_seconds": max(0, self.clock.now_ms() - oldest) / 1000 if oldest else 0,
            "mail_pending": backlog.get("mail_pending", 0),
            "dead_letters": backlog.get("dead_letters", 0),
            "xmpp_connected": int(status["xmpp"] == "connected"),
            "roster_granted": int(status["roster"] == "granted"),
            "delivered": self.dispatcher.delivered,
            "roster_errors": self.dispatcher.roster_errors,
            "consents_ended_from_clients": self.rosters.ended_from_clients,
            "dead_lettered": {"outbox": self.dispatcher.dead, "mail": self.mail.dead},
            "logins": dict(self.identity.logins),
        }

    async def start(self) -> None:
        await self.db.open()
        await self._http.start()
        log.info("http bridge listening on http://%s:%d", self.config.http.host, self.config.http.port)
        if self.leadership is None:
            await self._lead()  # SQLite: the only instance
        else:
            self.leadership.start()  # _lead() once this instance holds the lock

    async def _lead(self) -> None:
        """Become the active instance: deliver, sweep, connect to the XMPP server."""
        self._leading = True
        if self.leadership is not None:
            # Rows committed by any instance wake the dispatchers at once; the periodic
            # poll (outbox_poll_s) stays as the safety net.
            self._listener = await self.db.listen(("outbox", "mail_outbox"), self._notified)
        self.dispatcher.start()
        if self.config.smtp.host:
            self.mail.start()
        self._sweeper = asyncio.create_task(self._housekeeping(), name="housekeeping")
        self.xmpp.start()

    async def _housekeeping(self) -> None:
        """Every `[sharing] sweep_interval_s`: expired shares turn `overtime` (both parties
        told), expired tokens go, and users only ever named as targets that nothing
        refers to any more are forgotten."""
        while True:
            for chore in (self.device_sharing.sweep, self.identity.housekeeping):
                try:
                    await chore()
                except Exception:
                    log.exception("housekeeping: %s failed; retrying next round", chore.__qualname__)
            await asyncio.sleep(self.config.sharing.sweep_interval_s)

    async def stop(self) -> None:
        await self.xmpp.close()
        await self._http.stop()
        await self.dispatcher.stop()
        await self.mail.stop()
        sweeper, self._sweeper = self._sweeper, None
        await stop_task(sweeper)
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self.leadership is not None:
            # Last: the XMPP stream is closed, so a standby taking over now does not
            # meet this instance's stream on the server.
            await self.leadership.stop()
        self._leading = False
        await self.db.close()
        log.info("stopped")


async def run(config: Config) -> int:
    # SQLite: one service per database (storage/instance_lock.py), held until the process
    # ends. PostgreSQL: several instances share it; leadership says which one is active.
    if config.storage.shared:
        return await _serve(config)
    lock = InstanceLock(config.storage.path)
    lock.acquire()
    try:
        return await _serve(config)
    finally:
        lock.release()


async def _serve(config: Config) -> int:
    service = Service(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await service.start()
    except BaseException:
        # Whatever started must stop (aiosqlite's threads, the dispatchers): otherwise
        # the process logs the cause and then hangs instead of exiting.
        await service.stop()
        raise
    _freeze_startup_objects()
    stopping = asyncio.ensure_future(stop.wait())
    lost = asyncio.ensure_future(service.lost.wait())
    await asyncio.wait({stopping, lost}, return_when=asyncio.FIRST_COMPLETED)
    for waiter in (stopping, lost):
        waiter.cancel()
    if service.lost.is_set():
        # Fail-stop: the lock may already be another instance's; a supervisor restarts
        # this one, which then stands by.
        log.error("shutting down: leadership lost")
        await service.stop()
        return 1
    log.info("shutting down")
    await service.stop()
    return 0


def _freeze_startup_objects() -> None:
    """Leave what startup made (modules, slixmpp's plugins, the app: about 57,000
    objects) out of the cyclic GC's full collections from now on: each full collection
    walked them all, 38 ms of CPU with the loop stopped, a few times a minute under load;
    about 1 ms after this (benchmarks/run.py reads, issue #14). The garbage startup left is
    collected first, so that nothing that should be freed is kept."""
    gc.collect()
    gc.freeze()


async def resync(config: Config) -> int:
    """Queue every granted roster direction (and the removal of stale ones) in the
    database's outbox; the service delivers them (a running one within
    `outbox_poll_s`)."""
    db = database_for(config.storage.target, config.storage.pool_size, config.storage.read_cache_mb)
    await db.open()
    try:
        report = await Rosters(db, Clock(), config.component.jid).resync()
    finally:
        await db.close()
    print(
        f"resync: queued {report.grants} roster grant(s) and {report.removals} removal(s)"
        f" for {report.owners} user(s) in {db.path}; the service applies them"
        f" (a running one within {config.component.outbox_poll_s:g} s, else at its next start)"
    )
    return 0


def _postgres_errors() -> tuple[type[BaseException], ...]:
    """asyncpg's errors, once it is loaded (a SQLite-only service never loads it)."""
    asyncpg = sys.modules.get("asyncpg")
    return (asyncpg.PostgresError, asyncpg.InterfaceError) if asyncpg is not None else ()


async def migrate_storage(source: str, url: str) -> int:
    """Copy the SQLite file `source` into the empty PostgreSQL database at `url`."""
    from storage.postgres import redact
    from storage.transfer import TransferRefused, copy_sqlite_to_postgres

    try:
        copied = await copy_sqlite_to_postgres(source, url)
    except TransferRefused as exc:
        print(f"migrate-storage: {exc}", file=sys.stderr)
        return 1
    except (OSError, *_postgres_errors()) as exc:
        print(f"migrate-storage: cannot reach or write {redact(url)}: {exc}", file=sys.stderr)
        return 1
    total = sum(copied.values())
    print(f"migrate-storage: copied {total} row(s) from {source} to {redact(url)}:")
    for table, rows in copied.items():
        print(f"  {table}: {rows}")
    print("set [storage] url to it (and remove [storage] path) to run on PostgreSQL")
    return 0


COMMANDS = {"run": run, "resync": resync, "migrate-storage": migrate_storage}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m component",
        description="Presence-consent service for XMPP: the component and its REST bridge.",
    )
    parser.add_argument(
        "command", nargs="?", default="run", choices=sorted(COMMANDS),
        help="run: the service (default); resync: re-derive every granted roster item"
        " from the database and queue it for the service to apply; migrate-storage: copy"
        " a SQLite database (--from PATH) into an empty PostgreSQL one (--to URL)",
    )
    parser.add_argument("--config", help="path to the TOML configuration file (run, resync)")
    parser.add_argument("--from", dest="source", metavar="PATH", help="migrate-storage: the SQLite file")
    parser.add_argument("--to", dest="target", metavar="URL", help="migrate-storage: postgresql://...")
    args = parser.parse_args(argv)
    if args.command == "migrate-storage":
        if not args.source or not args.target:
            parser.error("migrate-storage needs --from PATH and --to URL")
        if not is_postgres_url(args.target):
            parser.error("--to must be a postgresql:// URL")
        setup_logging("WARNING")
        try:
            return asyncio.run(migrate_storage(args.source, args.target))
        finally:
            stop_logging()
    if not args.config:
        parser.error("--config is required")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.logging.level)
    try:
        return _run_logged(args.command, config)
    finally:
        stop_logging()  # every line logged so far is written before the process ends


def _run_logged(command: str, config: Config) -> int:
    try:
        status = asyncio.run(COMMANDS[command](config))
    except SchemaTooNew as exc:
        log.error("%s; refusing to start", exc)
        return 1
    except DatabaseInUse as exc:
        log.error(
            "cannot start: %s; one service per database (several connections of one component"
            " JID need the PostgreSQL setup, see README \"ejabberd\")", exc,
        )
        return 2
    except _postgres_errors() as exc:
        log.error("cannot start: PostgreSQL refused: %s", exc)
        return 1
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            log.error(
                "cannot start: %s:%d is already in use (another service or instance?);"
                " set [http] port to a free port", config.http.host, config.http.port,
            )
            return 2
        log.error("cannot start: %s", exc)
        return 1
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
