"""`python -m component --config FILE`: the composition root.

Builds storage, actions, the XMPP component and the REST bridge, and runs them
on one event loop until SIGINT/SIGTERM. This is the one module that imports
both the component and the HTTP bridge.

`python -m component resync --config FILE` queues, for every consent in the
database, the roster directions it grants (and the removal of those it no longer
grants); the running service, or the next one started, applies them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

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
from component.xmpp import PresenceComponent
from http_bridge import HttpListener, Services, build_app
from storage import Database, SchemaTooNew

log = logging.getLogger("component")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # slixmpp logs every stanza at DEBUG, including the SASL exchange of login
    # checks (the password, base64-encoded), and narrates each login check at
    # INFO: keep it to warnings. A refused login is logged by us, once, without
    # slixmpp's misleading "No appropriate login method" error.
    logging.getLogger("slixmpp").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("slixmpp.features.feature_mechanisms").setLevel(logging.CRITICAL)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class Service:
    """Everything the process runs, wired together."""

    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.db = Database(config.storage.path)
        served = config.component.served_domains()
        verifier = XmppPasswordVerifier(
            config.auth.c2s_host,
            config.auth.c2s_port,
            config.auth.c2s_allow_plaintext,
            config.auth.login_timeout_s,
            config.auth.max_concurrent_logins,
        )
        self.identity = Identity(
            self.db, self.clock, served, verifier, config.auth.token_ttl_s, config.auth.admin_token
        )
        self.sharing = PresenceSharing(
            self.db, self.clock, served, self._outbox_written, config.limits.max_pending_sent
        )
        component_jid = config.component.jid
        self.provisioning = Provisioning(self.db, self.clock, served, component_jid, self._outbox_written)
        self.states = PresenceStates(
            self.db, self.clock, served, self.provisioning, self._outbox_written, component_jid
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
        )
        self.dispatcher = OutboxDispatcher(
            self.db, self.xmpp, clock=self.clock, poll_s=config.component.outbox_poll_s
        )
        self.xmpp.dispatcher = self.dispatcher
        self.xmpp.rosters = self.rosters
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
            ),
            config.http,
        )
        self._http = HttpListener(self.app)

    def _outbox_written(self) -> None:
        self.dispatcher.wake()

    async def health(self) -> tuple[bool, dict[str, str]]:
        storage_ok = await self.db.ping()
        status = self.xmpp.status()
        body = {"xmpp": status["xmpp"], "storage": "ok" if storage_ok else "error", "roster": status["roster"]}
        return storage_ok and status["xmpp"] == "connected", body

    async def start(self) -> None:
        await self.db.open()
        self.dispatcher.start()
        if self.config.smtp.host:
            self.mail.start()
        self._sweeper = asyncio.create_task(
            self.device_sharing.run_sweeper(self.config.sharing.sweep_interval_s),
            name="device-share-sweeper",
        )
        await self._http.start()
        log.info("http bridge listening on http://%s:%d", self.config.http.host, self.config.http.port)
        self.xmpp.start()

    async def stop(self) -> None:
        await self.xmpp.close()
        await self._http.stop()
        await self.dispatcher.stop()
        await self.mail.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
        await self.db.close()
        log.info("stopped")


async def run(config: Config) -> None:
    service = Service(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    await stop.wait()
    log.info("shutting down")
    await service.stop()


async def resync(config: Config) -> None:
    """Queue every granted roster direction (and the removal of stale ones) in the
    database's outbox; the service delivers them (a running one within
    `outbox_poll_s`)."""
    db = Database(config.storage.path)
    await db.open()
    try:
        report = await Rosters(db, Clock(), config.component.jid).resync()
    finally:
        await db.close()
    print(
        f"resync: queued {report.grants} roster grant(s) and {report.removals} removal(s)"
        f" for {report.owners} user(s) in {config.storage.path}; the service applies them"
        f" (a running one within {config.component.outbox_poll_s:g} s, else at its next start)"
    )


COMMANDS = {"run": run, "resync": resync}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m component",
        description="Presence-consent service for XMPP: the component and its REST bridge.",
    )
    parser.add_argument(
        "command", nargs="?", default="run", choices=sorted(COMMANDS),
        help="run: the service (default); resync: re-derive every granted roster item"
        " from the database and queue it for the service to apply",
    )
    parser.add_argument("--config", required=True, help="path to the TOML configuration file")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.logging.level)
    try:
        asyncio.run(COMMANDS[args.command](config))
    except SchemaTooNew as exc:
        log.error("%s; refusing to start", exc)
        return 1
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
