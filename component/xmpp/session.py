"""The component's XEP-0114 session: connection life cycle, XEP-0356 privileges,
status, the IQ error boundary, and what the outbox dispatcher sends through it
(management messages, presence, the delivery barrier).

The families' stanza handlers are in the modules beside this one; PresenceComponent
(component.xmpp) puts them together.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from slixmpp import JID, ComponentXMPP, Iq, Message, Presence
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback

from component.actions import Identity, PresenceSharing
from component.config import ComponentConfig, RosterConfig
from component.delivery import OutboxDispatcher, TransportGone
from component.device_sharing import DeviceSharing
from component.errors import INTERNAL, INTERNAL_TEXT, DomainError, Forbidden, WireError
from component.logfields import untrusted
from component.model import User, parse_bare_jid
from component.rosters import OFF, UNAVAILABLE, NoRosters, RosterBackend
from component.subscriptions import PresenceStates
from component.xmpp import stanzas
from component.xmpp.notices import management_body
from component.xmpp.slixfix import (
    NS_PRIVILEGE_1,
    PrivilegeAdvertisement,
    PrivilegeGrants,
    answer_unserved_iqs,
    detach_roster,
    management_message,
)
from component.xmpp.stanzas import NS_CONFIGURATION, NS_SHARE
from storage.outbox import OutboxRow

if TYPE_CHECKING:
    from component.rosters import Rosters

log = logging.getLogger(__name__)

NS_PING = "urn:xmpp:ping"
NS_HINTS = "urn:xmpp:hints"
IQ_TIMEOUT_S = 15

IqHandler = Callable[[Any, Iq], Awaitable[Iq]]

SOFTWARE_NAME = "presence-consent"
SERVICE_STATUS = "Presence consent: ad-hoc commands for presence requests and device shares"


def software_version() -> str:
    try:
        return importlib.metadata.version(SOFTWARE_NAME)
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


def answers_errors(handler: IqHandler) -> Callable[[Any, Iq], Awaitable[None]]:
    """The one error boundary for IQ handlers (the slidge pattern).

    Domain errors become their XMPP condition from the error table with their
    (caller-safe) text; anything else is logged with its traceback and answered
    `internal-server-error` with fixed text.
    """

    @functools.wraps(handler)
    async def wrapper(self: Session, iq: Iq) -> None:
        if iq["type"] not in ("get", "set"):
            return  # results/errors addressed to us that no pending IQ claimed
        try:
            reply = await handler(self, iq)
        except DomainError as exc:
            log.info(
                "iq %s from %s refused: %s (%s)",
                untrusted(iq["id"]), iq["from"], exc.wire.xmpp_condition, untrusted(exc.detail),
            )
            self._send_error(iq, exc.wire, exc.detail)
        except Exception:
            log.exception("iq %s from %s: unexpected error", untrusted(iq["id"]), iq["from"])
            self._send_error(iq, INTERNAL, INTERNAL_TEXT)
        else:
            reply.send()

    return wrapper


class Session(ComponentXMPP):
    def __init__(
        self,
        config: ComponentConfig,
        identity: Identity,
        sharing: PresenceSharing,
        states: PresenceStates,
        device_sharing: DeviceSharing,
        max_page_size: int = 1000,
        admins: frozenset[str] = frozenset(),
        account_check_s: float = 3600.0,
        roster_config: RosterConfig | None = None,
    ) -> None:
        # fix_error_ns: without it slixmpp looks for <error/> in jabber:client and
        # reports every error from the server as feature-not-implemented.
        super().__init__(
            config.jid, config.secret, config.server_host, config.server_port, fix_error_ns=True
        )
        self.config = config
        self.identity = identity
        self.sharing = sharing
        self.states = states
        self.device_sharing = device_sharing
        self.admins = admins
        self.max_page_size = max_page_size
        self.served_domains = config.served_domains()
        self.dispatcher: OutboxDispatcher | None = None
        # Set by the composition root: ends consents whose direction a user removed.
        self.rosters: Rosters | None = None
        self.grants = PrivilegeGrants()
        self.roster_config = roster_config or RosterConfig()
        self.roster_backend: RosterBackend = self._roster_backend(self.roster_config)
        # Users' online resources, from the presence the server forwards (XEP-0356
        # presence permission): a resource appearing, or the last one leaving, is when
        # the user's roster is compared with what the service granted.
        self._online: dict[str, set[str]] = {}
        self._checks: dict[str, asyncio.Task[None]] = {}
        self._check_again: set[str] = set()
        # Tokens act for accounts: whether each token holder's account still exists is
        # asked every `account_check_s` (0: never).
        self.account_check_s = account_check_s
        self._account_checker: asyncio.Task[None] | None = None
        self.session_up = False
        # Moves with every session: the dispatcher's barrier proves delivery only on the
        # stream the rows were sent on.
        self.generation = 0
        self.privileges_known = False
        self.roster_status = "unavailable"
        self._closing = False
        self._failed_attempts = 0
        self._backoff = config.reconnect_min_s
        self._iq_slots = asyncio.Semaphore(config.max_concurrent_iqs)
        self._privileges_complete = asyncio.Event()
        self._roster_warning_logged = False
        self._legacy_warning_logged = False
        self._presence_warning_logged = False

        PrivilegeGrants.register_stanzas()
        stanzas.register()
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0059")
        self.plugin["xep_0030"].add_identity(category="component", itype="presence", name="Presence consent")
        # The basics every XMPP entity answers: XEP-0199 ping, XEP-0092 version (no OS).
        self.register_plugin("xep_0199", {"keepalive": False})
        self.register_plugin("xep_0092", {"software_name": SOFTWARE_NAME, "version": software_version()})
        answer_unserved_iqs(self)

        # Subscriptions and probes are answered from the database, not from
        # slixmpp's in-memory roster (see slixfix.detach_roster).
        detach_roster(self)
        # Registered before connect(): the advertisement follows the handshake at once.
        # Both namespaces: urn:xmpp:privilege:2 (Prosody) and :1 (ejabberd before 23.10).
        self.register_handler(Callback("xep-0356 privileges", PrivilegeAdvertisement(), self.on_privileges))
        self.add_event_handler("session_start", self.on_session_start)
        self.add_event_handler("disconnected", self.on_disconnected)
        self.add_event_handler("connection_failed", self.on_connection_failed)
        self.add_event_handler("stream_error", self.on_stream_error)
        self.register_families()

    def register_families(self) -> None:
        """Each family's stanza handlers and disco features (see PresenceComponent)."""

    def _roster_backend(self, config: RosterConfig) -> RosterBackend:
        """`[roster] backend`: the one the outbox dispatcher's roster changes go through."""
        if config.backend == "ejabberd_api":
            from component.xmpp.ejabberd_api import EjabberdApiRosters

            return EjabberdApiRosters(config, self.served_domains, self.boundjid.bare, self._roster_backend_granted)
        if config.backend == "none":
            return NoRosters()
        from component.xmpp.rosters import Xep0356Rosters

        return Xep0356Rosters(self)

    def _roster_backend_granted(self) -> None:
        """The roster backend works (again): rows that waited for it go now."""
        if self.dispatcher is not None:
            self.dispatcher.wake()

    def on_user_presence(self, presence: Presence) -> None:
        """A user's own availability forwarded to the component (see RosterAccess)."""

    def on_service_presence(self, presence: Presence) -> None:
        """A subscription to, or a probe of, the component's own JID (RFC 6121 section 3):
        a user who adds the service as a contact gets `subscribed` and the service's
        availability, and sees it online from then on; `unsubscribe` gets `unsubscribed`."""
        kind = presence.xml.get("type")
        sender = presence["from"]
        if not sender.user:
            return
        if kind == "unsubscribe":
            self.make_presence(pto=sender.bare, pfrom=self.boundjid.bare, ptype="unsubscribed").send()
            return
        if kind == "subscribe":
            self.make_presence(pto=sender.bare, pfrom=self.boundjid.bare, ptype="subscribed").send()
        self.make_presence(pto=sender.bare, pfrom=self.boundjid.bare, pstatus=SERVICE_STATUS).send()

    def feature(self, namespace: str) -> None:
        self.plugin["xep_0030"].add_feature(namespace)

    # ---- connection lifecycle -------------------------------------------------

    def start(self) -> None:
        log.info(
            "xmpp: connecting to %s:%d as %s",
            self.config.server_host, self.config.server_port, self.boundjid.bare,
        )
        self.connect(self.config.server_host, self.config.server_port)

    async def close(self) -> None:
        self._closing = True
        for task in [self._account_checker, *self._checks.values()]:
            if task is not None:
                task.cancel()
        if self.transport is not None:
            await self.disconnect(wait=2)
        self.cancel_connection_attempt()
        await self.roster_backend.close()

    def reschedule_connection_attempt(self):  # type: ignore[override]
        # slixmpp lets its retry delay grow to 300 s; cap it at our configured maximum.
        attempt = super().reschedule_connection_attempt()
        self._connect_loop_wait = min(self._connect_loop_wait, self.config.reconnect_max_s)
        return attempt

    async def on_session_start(self, _event: object) -> None:
        log.info("xmpp: component session established as %s", self.boundjid.bare)
        self._failed_attempts = 0
        self.generation += 1
        self.session_up = True
        self._backoff = self.config.reconnect_min_s
        try:
            async with asyncio.timeout(self.config.privilege_wait_s):
                await self._privileges_complete.wait()
        except TimeoutError:
            pass
        if not self.session_up:
            return
        self.privileges_known = True
        self._update_roster_status()
        # Checked at start and after every reconnect (ejabberd's API: one call).
        await self.roster_backend.session_started()
        if not self.session_up:
            return
        if self.dispatcher is not None:
            self.dispatcher.wake()
        if self.account_check_s > 0 and (self._account_checker is None or self._account_checker.done()):
            self._account_checker = asyncio.create_task(self._check_accounts(), name="account-checks")

    def _update_roster_status(self) -> None:
        """Decide (again) whether rosters can be changed over XEP-0356, and say so once
        per change, with the fix for the server in use."""
        if self.roster_backend.name != "xep0356":
            if self.roster_backend.name != "none":
                self._warn_blind_presence()
            return
        granted = all(self.grants.can_change_roster(d) for d in self.served_domains)
        previous, self.roster_status = self.roster_status, "granted" if granted else "unavailable"
        if granted:
            if previous != "granted":
                log.info(
                    "xmpp: roster privilege (XEP-0356) granted for %s",
                    ", ".join(sorted(self.served_domains)),
                )
            self._warn_blind_presence()
            if self.grants.legacy() and not self._legacy_warning_logged:
                self._legacy_warning_logged = True
                log.warning(
                    "xmpp: the server advertises XEP-0356 as urn:xmpp:privilege:1 (ejabberd before"
                    " 23.10), whose privileged roster sets fail (ejabberd 23.01: internal-server-error);"
                    " set [roster] backend = \"ejabberd_api\" (README, \"ejabberd\")",
                )
        elif not self._roster_warning_logged:
            self._roster_warning_logged = True
            missing = sorted(d for d in self.served_domains if not self.grants.can_change_roster(d))
            log.warning(
                "xmpp: the server grants no XEP-0356 roster privilege (read and write) for %s;"
                " roster changes wait in the outbox until it does (%s)",
                ", ".join(missing), self._roster_fix(),
            )

    def _server_kind(self) -> str:
        """"ejabberd", "prosody" or "" (unknown), from how the server advertised XEP-0356:
        ejabberd before 23.10 in urn:xmpp:privilege:1, Prosody's mod_privilege in :2."""
        namespaces = set(self.grants.namespace.values())
        if NS_PRIVILEGE_1 in namespaces:
            return "ejabberd"
        if namespaces:
            return "prosody"
        return ""

    def _roster_fix(self) -> str:
        jid = self.boundjid.bare
        prosody = f'Prosody: grant roster = "both" to {jid} in the VirtualHost\'s privileged_entities'
        ejabberd = (
            f'ejabberd: set [roster] backend = "ejabberd_api" (23.01), or, from 23.10, mod_privilege'
            f" roster: both: an access rule (not an ACL) that allows {jid}"
        )
        return {"prosody": prosody, "ejabberd": ejabberd}.get(self._server_kind(), f"{prosody}; {ejabberd}")

    def _warn_blind_presence(self) -> None:
        if self._presence_warning_logged:
            return
        blind = sorted(d for d in self.served_domains if not self.grants.sees_presence(d))
        if not blind:
            return
        self._presence_warning_logged = True
        jid = self.boundjid.bare
        fix = {
            "prosody": f'grant presence = "managed_entity" to {jid} in privileged_entities',
            "ejabberd": f"mod_privilege presence: managed_entity: an access rule that allows {jid}",
        }.get(
            self._server_kind(),
            f'Prosody: presence = "managed_entity" in privileged_entities; ejabberd: mod_privilege'
            f" presence: managed_entity: an access rule that allows {jid}",
        )
        log.warning(
            "xmpp: the server forwards no presence of %s's users (XEP-0356 presence"
            " permission); a contact a user removes in a client is not noticed and its"
            " consent stays (%s)",
            ", ".join(blind), fix,
        )

    def on_privileges(self, msg: Message) -> None:
        sender = msg["from"]
        if sender.user or sender.resource:
            # XEP-0356 section 4.2: only the server (a served domain's own JID) advertises
            # privileges; a user could otherwise revoke our roster access by message.
            log.warning("xmpp: ignoring a privilege advertisement from %s", sender)
            return
        if sender.domain not in self.served_domains:
            log.info("xmpp: ignoring the privilege advertisement of %s (not a served domain)", sender)
            return
        domain = self.grants.update(msg)
        log.info(
            "xmpp: %s advertises roster privilege %r, presence privilege %r",
            domain, self.grants.roster.get(domain), self.grants.presence.get(domain),
        )
        if all(d in self.grants.roster for d in self.served_domains):
            self._privileges_complete.set()
        if self.privileges_known:
            # Came after the session was judged (late or re-sent): roster rows that
            # waited for it go now.
            self._update_roster_status()
            if self.dispatcher is not None:
                self.dispatcher.wake()

    def on_connection_failed(self, reason: object) -> None:
        """The server could not be reached (slixmpp retries by itself, see
        reschedule_connection_attempt): say so, once per attempt."""
        self._failed_attempts += 1
        log.warning(
            "xmpp: cannot reach the server at %s:%d (%s); attempt %d, retrying within %.0f s",
            self.config.server_host, self.config.server_port, reason or "no reason given",
            self._failed_attempts, self.config.reconnect_max_s,
        )

    def on_disconnected(self, reason: object) -> None:
        was_up = self.session_up
        self.session_up = False
        self.privileges_known = False
        self.grants.clear()
        self.roster_backend.session_ended()
        self._privileges_complete.clear()
        self._online.clear()  # the server sends every session's presence again on connect
        if self._closing:
            return
        delay = self._backoff * random.uniform(0.8, 1.2)
        self._backoff = min(self._backoff * 2, self.config.reconnect_max_s)
        log.warning(
            "xmpp: stream to %s:%d %s (%s); reconnecting in %.1f s",
            self.config.server_host, self.config.server_port,
            "lost" if was_up else "closed", reason or "no reason given", delay,
        )
        asyncio.get_running_loop().call_later(delay, self._reconnect)

    def _reconnect(self) -> None:
        if not self._closing and self.transport is None:
            self.connect(self.config.server_host, self.config.server_port)

    def on_stream_error(self, error: object) -> None:
        condition = error["condition"]  # type: ignore[index]
        if condition in ("conflict", "not-authorized", "host-unknown"):
            # Another instance holds our JID, or the secret/JID is wrong: retrying
            # quickly only fights the other instance or floods the server's log.
            self._backoff = self.config.reconnect_max_s
            log.error(
                "xmpp: server refused the component stream (%s); check that one instance runs"
                " and that [component] jid/secret match the server; retrying in about %.0f s",
                condition, self._backoff,
            )
        else:
            log.warning("xmpp: stream error from server: %s", condition)

    # ---- status -------------------------------------------------------------

    def status(self) -> dict[str, str]:
        backend = self.roster_backend
        if backend.status == OFF:
            roster = OFF
        else:
            roster = backend.status if self.privileges_known else UNAVAILABLE
        return {"xmpp": "connected" if self.session_up else "disconnected", "roster": roster}

    # ---- inbound stanzas: who calls, and how errors are answered --------------

    async def _caller(self, stanza: Iq) -> User:
        return await self._user_of(stanza["from"])

    async def _user_of(self, sender: JID) -> User:
        """The user behind a (server-stamped) sender; Forbidden for the server itself or
        a domain that is not served."""
        if not sender.user:
            raise Forbidden("only user accounts may use this service")
        return await self.identity.user_for_jid(parse_bare_jid(sender.bare, "from"))

    def _send_error(self, iq: Iq, wire: WireError, text: str) -> None:
        reply = iq.reply(clear=True)
        reply["type"] = "error"
        reply["error"]["type"] = wire.xmpp_type
        reply["error"]["condition"] = wire.xmpp_condition
        reply["error"]["text"] = text
        if iq.xml.find(f"{{{NS_SHARE}}}*") is not None and wire.xlink_code:
            # RFC 6120 section 8.3.4: an application-specific condition with Xlink's code.
            ET.SubElement(reply["error"].xml, f"{{{NS_SHARE}}}xlink-error", {"code": str(wire.xlink_code)})
        reply.send()

    # ---- Transport for the outbox dispatcher (messages, barrier) -------------

    @property
    def ready(self) -> bool:
        return self.session_up and self.privileges_known

    @property
    def roster_ready(self) -> bool:
        return self.ready and self.roster_backend.status == "granted"

    @property
    def rosters_off(self) -> bool:
        """`[roster] backend = "none"`: roster rows are dropped, not applied."""
        return self.roster_backend.status == OFF

    def roster_allowed(self, owner: str) -> bool:
        return self.roster_backend.allowed(owner)

    def send_management(self, row: OutboxRow) -> None:
        msg = management_message(
            self, row.recipient, self.boundjid.bare, f"ph-{row.id}", self.config.management_type
        )
        # Family 1 rows carry a presencehandshake, family 3 rows a devicesharing child.
        element, attrs = (
            ("presencehandshake", row.payload["handshake"])
            if "handshake" in row.payload
            else ("devicesharing", row.payload["devicesharing"])
        )
        ET.SubElement(msg.xml, f"{{{NS_CONFIGURATION}}}{element}", attrs)
        if self.config.readable_notifications:
            body = management_body(row.payload, self.boundjid.bare)
            if body:
                msg["body"] = body
            # XEP-0334: keep it (offline storage, MAM) although its type is not `chat`.
            ET.SubElement(msg.xml, f"{{{NS_HINTS}}}store")
        msg.send()

    async def barrier(self, generation: int) -> None:
        if not self.session_up or generation != self.generation:
            raise TransportGone()
        domain = min(self.served_domains)
        iq = self.make_iq_get(ito=domain, ifrom=self.boundjid.bare)
        ET.SubElement(iq.xml, f"{{{NS_PING}}}ping")
        try:
            await iq.send(timeout=IQ_TIMEOUT_S)
        except IqTimeout as exc:
            raise TransportGone() from exc
        except IqError:
            pass  # any answer proves the server processed what came before
        if generation != self.generation:
            raise TransportGone()  # answered on a later stream: proves nothing
