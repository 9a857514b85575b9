"""The XEP-0114 component: the XMPP adapter around the domain actions.

It parses stanzas into commands, calls the actions, and answers; it also
implements the outbox dispatcher's Transport (management messages, XEP-0356
roster sets, delivery barrier). It never touches SQL.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable

from slixmpp import ComponentXMPP, Iq, Message, Presence
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback, CoroutineCallback
from slixmpp.xmlstream.matcher import StanzaPath

from component import stanzas
from component.actions import Identity, PresenceSharing
from component.clock import iso_ms
from component.commands import (
    CreatePresenceRequest,
    ListPresenceRequests,
    ShareAnswer,
    ShareDevice,
    StateChange,
    Transition,
    TransitionPresenceRequest,
    parse_bounded_int,
    parse_statuses,
)
from component.config import ComponentConfig
from component.delivery import OutboxDispatcher, RosterFailed, RosterRefused, TransportGone
from component.errors import INTERNAL, INTERNAL_TEXT, BadRequest, DomainError, Forbidden, WireError
from component.logfields import untrusted
from component.model import (
    BareJid,
    PresenceRequest,
    User,
    jid_domain,
    parse_bare_jid,
    parse_extension,
    parse_invite_code,
    parse_request_id,
)
from component.rosters import RosterItem, Rosters
from component.slixfix import (
    NS_ROSTER,
    PrivilegeGrants,
    detach_roster,
    management_message,
    privileged_ping,
    privileged_roster_get,
    privileged_roster_set,
)
from component.device_sharing import DeviceSharing, share_fields
from component.stanzas import NS_CONFIGURATION, NS_PRESENCE_STATE, NS_SHARE
from component.subscriptions import PresenceStates
from storage.outbox import OutboxRow

log = logging.getLogger(__name__)

NS_PING = "urn:xmpp:ping"
# Dialog state -> (<show/>, <status/>): idle reads as available, ringing as away,
# busy as do-not-disturb (the colours a BLF lamp would show).
STATE_PRESENCE: dict[str, tuple[str | None, str]] = {
    "terminated": (None, "Idle"),
    "early": ("away", "Ringing"),
    "confirmed": ("dnd", "Busy"),
}
NS_RSM = "http://jabber.org/protocol/rsm"
IQ_TIMEOUT_S = 15
# A roster check that found changes in flight looks again, this often and this many times.
ROSTER_CHECK_RETRY_S = 1.0
ROSTER_CHECK_RETRIES = 5
DEFAULT_PAGE = 100
# RFC 7622 section 3.3: a localpart is at most 1023 bytes.
MAX_JID_PART = 1023
# Prosody's mod_privilege (0.12, prosody-modules 2023) answers a privileged IQ for an
# account that does not exist with this text, before it looks at permissions; an account
# that exists gets a result, or (IQ permission not granted) another `forbidden`. It is the
# one way a component can ask Prosody whether an account still exists: disco#info to a
# bare JID is `service-unavailable` for both. Remove when servers offer a standard way.
PROSODY_NO_SUCH_ACCOUNT = "wrapping <IQ> stanza recipient must be a bare JID of a local user"

IqHandler = Callable[["PresenceComponent", Iq], Awaitable[Iq]]


def answers_errors(handler: IqHandler) -> Callable[["PresenceComponent", Iq], Awaitable[None]]:
    """The one error boundary for IQ handlers (the slidge pattern).

    Domain errors become their XMPP condition from the error table with their
    (caller-safe) text; anything else is logged with its traceback and answered
    `internal-server-error` with fixed text.
    """

    @functools.wraps(handler)
    async def wrapper(self: PresenceComponent, iq: Iq) -> None:
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


class PresenceComponent(ComponentXMPP):
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
        self._backoff = config.reconnect_min_s
        self._iq_slots = asyncio.Semaphore(config.max_concurrent_iqs)
        self._privileges_complete = asyncio.Event()
        self._roster_warning_logged = False
        self._presence_warning_logged = False

        PrivilegeGrants.register_stanzas()
        stanzas.register()
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0059")
        self.plugin["xep_0030"].add_identity(category="component", itype="presence", name="Presence consent")
        self.plugin["xep_0030"].add_feature(NS_CONFIGURATION)
        self.plugin["xep_0030"].add_feature(NS_RSM)  # list IQs page with XEP-0059
        self.plugin["xep_0030"].add_feature(NS_PRESENCE_STATE)
        self.plugin["xep_0030"].add_feature(NS_SHARE)

        # Subscriptions and probes are answered from the database, not from
        # slixmpp's in-memory roster (see slixfix.detach_roster).
        detach_roster(self)
        self.register_handler(
            CoroutineCallback("extension presence", StanzaPath("presence"), self.on_presence)
        )
        self.register_handler(
            CoroutineCallback(
                "presencestate iq", StanzaPath("iq/presencestate"), self.on_state_iq
            )
        )
        self.register_handler(
            CoroutineCallback("deviceshare iq", StanzaPath("iq/deviceshare"), self.on_share_iq)
        )
        self.register_handler(
            CoroutineCallback("deviceshares iq", StanzaPath("iq/deviceshares"), self.on_shares_iq)
        )

        # Registered before connect(): the advertisement follows the handshake at once.
        self.register_handler(
            Callback("xep-0356 privileges", StanzaPath("message/privilege"), self.on_privileges)
        )
        self.register_handler(
            CoroutineCallback(
                "presencehandshake iq", StanzaPath("iq/presencehandshake"), self.on_handshake_iq
            )
        )
        self.register_handler(
            CoroutineCallback(
                "presencehandshakes iq", StanzaPath("iq/presencehandshakes"), self.on_list_iq
            )
        )
        self.add_event_handler("session_start", self.on_session_start)
        self.add_event_handler("disconnected", self.on_disconnected)
        self.add_event_handler("stream_error", self.on_stream_error)

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

    def reschedule_connection_attempt(self):  # type: ignore[override]
        # slixmpp lets its retry delay grow to 300 s; cap it at our configured maximum.
        attempt = super().reschedule_connection_attempt()
        self._connect_loop_wait = min(self._connect_loop_wait, self.config.reconnect_max_s)
        return attempt

    async def on_session_start(self, _event: object) -> None:
        log.info("xmpp: component session established as %s", self.boundjid.bare)
        self.generation += 1
        self.session_up = True
        self._backoff = self.config.reconnect_min_s
        try:
            await asyncio.wait_for(self._privileges_complete.wait(), self.config.privilege_wait_s)
        except TimeoutError:
            pass
        if not self.session_up:
            return
        self.privileges_known = True
        self._update_roster_status()
        if self.dispatcher is not None:
            self.dispatcher.wake()
        if self.account_check_s > 0 and (self._account_checker is None or self._account_checker.done()):
            self._account_checker = asyncio.create_task(self._check_accounts(), name="account-checks")

    def _update_roster_status(self) -> None:
        """Decide (again) whether rosters can be changed, and say so once per change."""
        granted = all(self.grants.can_change_roster(d) for d in self.served_domains)
        previous, self.roster_status = self.roster_status, "granted" if granted else "unavailable"
        if granted:
            if previous != "granted":
                log.info(
                    "xmpp: roster privilege (XEP-0356) granted for %s",
                    ", ".join(sorted(self.served_domains)),
                )
            blind = sorted(d for d in self.served_domains if not self.grants.sees_presence(d))
            if blind and not self._presence_warning_logged:
                self._presence_warning_logged = True
                log.warning(
                    "xmpp: the server forwards no presence of %s's users (XEP-0356 presence"
                    " permission); a contact a user removes in a client is not noticed and its"
                    " consent stays (grant presence = \"managed_entity\" to the component)",
                    ", ".join(blind),
                )
        elif not self._roster_warning_logged:
            self._roster_warning_logged = True
            missing = sorted(d for d in self.served_domains if not self.grants.can_change_roster(d))
            log.warning(
                "xmpp: the server grants no XEP-0356 roster privilege (read and write) for %s;"
                " roster changes wait in the outbox until it does (grant roster = \"both\" to"
                " %s in the server's privileged_entities)",
                ", ".join(missing), self.boundjid.bare,
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

    def on_disconnected(self, reason: object) -> None:
        was_up = self.session_up
        self.session_up = False
        self.privileges_known = False
        self.grants.clear()
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
        return {
            "xmpp": "connected" if self.session_up else "disconnected",
            "roster": self.roster_status if self.privileges_known else "unavailable",
        }

    # ---- inbound IQs --------------------------------------------------------

    async def _caller(self, stanza: Iq) -> User:
        sender = stanza["from"]
        if not sender.user:
            raise Forbidden("only user accounts may use this service")
        return await self.identity.user_for_jid(parse_bare_jid(sender.bare, "from"))

    @answers_errors
    async def on_handshake_iq(self, iq: Iq) -> Iq:
        caller = await self._caller(iq)
        payload = iq["presencehandshake"]
        action = payload["action"]
        if iq["type"] == "get":
            if action:
                raise BadRequest("a get carries no action")
            request = await self.sharing.get(caller, parse_request_id(payload["id"], "id"))
            return self._request_reply(iq, request)
        if action == "create":
            if not payload["to"]:
                raise BadRequest("create needs a 'to' attribute with the user's JID")
            request = await self.sharing.create(
                CreatePresenceRequest(caller, to_jid=parse_bare_jid(payload["to"], "to"))
            )
        elif action in Transition._value2member_map_:
            request = await self.sharing.transition(
                TransitionPresenceRequest(
                    caller, parse_request_id(payload["id"], "id"), Transition(action)
                )
            )
        else:
            raise BadRequest("action must be create, accept, decline, cancel or interrupt")
        return self._request_reply(iq, request, action)

    @answers_errors
    async def on_list_iq(self, iq: Iq) -> Iq:
        caller = await self._caller(iq)
        if iq["type"] != "get":
            raise BadRequest("presencehandshakes is read with a get")
        query = iq["presencehandshakes"]
        box = query["type"]
        if box not in ("received", "sent"):
            raise BadRequest("type must be received or sent")
        statuses = parse_statuses(query["status"].split(","))
        rsm = query["rsm"] if query.xml.find(f"{{{NS_RSM}}}set") is not None else None
        limit, offset, after = DEFAULT_PAGE, 0, None
        if rsm is not None:
            if rsm["before"] or rsm.xml.find(f"{{{NS_RSM}}}before") is not None:
                raise BadRequest("paging backwards (<before/>) is not supported; use <after/> or <index/>")
            limit = parse_bounded_int(rsm["max"], "max", DEFAULT_PAGE, 0, self.max_page_size)
            offset = parse_bounded_int(rsm["index"], "index", 0, 0, 10**9)
            if rsm["after"]:
                after = parse_request_id(rsm["after"], "after")
        page = await self.sharing.list(
            ListPresenceRequests(caller, box, statuses, limit, offset, False, after)
        )
        reply = iq.reply(clear=True)
        out = reply["presencehandshakes"]
        out["type"] = box
        out["status"] = ",".join(sorted(s.value for s in statuses))
        for request in page.items:
            item = stanzas.PresenceHandshake()
            _fill(item, request)
            out.append(item)
        result_set = out["rsm"]
        if page.items:
            result_set["first"] = page.items[0].id
            if after is None:
                result_set["first_index"] = str(offset)
            result_set["last"] = page.items[-1].id
        result_set["count"] = str(page.total)
        return reply

    @answers_errors
    async def on_state_iq(self, iq: Iq) -> Iq:
        """Set or reset an extension's state: XMPP admins only ([auth] xmpp_admins)."""
        sender = iq["from"]
        if iq["type"] != "set":
            raise BadRequest("presencestate is changed with a set")
        if sender.bare.lower() not in self.admins:
            raise Forbidden("only the service's XMPP admins may change presence states")
        command = iq["presencestate"]
        change = StateChange.from_body(
            {"action": command["action"], **({"state": command["state"]} if command["state"] else {})}
        )
        realm = command["realm"].lower() or sender.domain
        if realm not in self.served_domains:
            raise BadRequest(f"realm must be a served domain, not {realm}")
        await self.states.change_by_realm(realm, command["extension"], change)
        reply = iq.reply(clear=True)
        result = reply["presencestate"]
        result["extension"] = command["extension"].lower()
        result["realm"] = realm
        result["state"] = change.target_state
        return reply

    # ---- inbound presence (family 2 subscriptions) ------------------------------

    async def on_presence(self, presence: Presence) -> None:
        """Subscriptions and probes addressed to `{extension}@{component}`, and the
        presence of users the server forwards to the component itself."""
        # The raw address: slixmpp's parser raises on a localpart only the server accepts.
        to = presence.xml.get("to", "")
        local, at, _ = to.partition("@")
        if not at:
            self.on_user_presence(presence)
            return
        kind = presence.xml.get("type")
        if kind not in ("subscribe", "unsubscribe", "probe"):
            return  # directed availability to an extension: nothing to do
        sender = presence["from"]
        try:
            if not sender.user:
                raise Forbidden("only user accounts may subscribe")
            subscriber = parse_bare_jid(sender.bare, "from")
            extension = parse_extension(local)
            if kind == "subscribe":
                await self.states.subscribe(subscriber, extension)
            elif kind == "unsubscribe":
                await self.states.unsubscribe(subscriber, extension)
            else:
                state = await self.states.probe(subscriber, extension)
                if state is None:
                    # RFC 6121 section 4.3.2: a probe from a non-subscriber gets `unsubscribed`.
                    self._presence(sender.bare, extension, "unsubscribed").send()
                else:
                    self._state_presence(sender.bare, extension, state.value, None).send()
        except DomainError as exc:
            log.info("presence %s from %s to %s refused: %s", kind, sender, untrusted(to), untrusted(exc.detail))
            if kind in ("subscribe", "probe") and len(local.encode()) <= MAX_JID_PART:
                # RFC 6121 section 3.2: denying a subscription is answering `unsubscribed`
                # (to an address no JID can have, RFC 7622 section 3.3, nothing at all).
                refusal = self.make_presence(pto=sender.bare, ptype="unsubscribed")
                refusal.xml.set("from", to.partition("/")[0])  # as the sender wrote it
                refusal.send()
        except Exception:
            log.exception("presence %s from %s to %s: unexpected error", kind, sender, to)

    # ---- users coming online and going offline (roster checks) -------------------

    def on_user_presence(self, presence: Presence) -> None:
        """A user's availability, which the server forwards with the XEP-0356 presence
        permission: a new resource, or the last one leaving, is when that user's roster
        is compared with what the service granted (component.rosters)."""
        if presence.xml.get("type") not in (None, "unavailable"):
            return
        sender = presence["from"]
        if not sender.user or not sender.resource or sender.domain not in self.served_domains:
            return
        bare = sender.bare
        resources = self._online.setdefault(bare, set())
        if presence.xml.get("type") is None:
            if sender.resource in resources:
                return  # a change of <show/> or <status/>: nothing new
            resources.add(sender.resource)
        else:
            resources.discard(sender.resource)
            if resources:
                return
            del self._online[bare]
        self.check_roster(BareJid(bare))

    def check_roster(self, owner: BareJid) -> None:
        """Compare `owner`'s roster with the consents it holds, in the background; at
        most one check per user at a time (a request meanwhile runs it once more)."""
        if self.rosters is None or not self.roster_allowed(owner):
            return
        if owner in self._checks:
            self._check_again.add(owner)
            return
        self._checks[owner] = asyncio.create_task(self._check_roster(owner), name=f"roster-check {owner}")

    async def _check_roster(self, owner: BareJid) -> None:
        assert self.rosters is not None
        retries = ROSTER_CHECK_RETRIES
        try:
            while True:
                self._check_again.discard(owner)
                seen, in_flight = await self.rosters.granted(owner)
                deferred = in_flight
                if seen:  # most users hold nothing the service granted: no roster read
                    live = await self.roster_items(owner)
                    deferred = (await self.rosters.reconcile(owner, live, seen)).deferred or in_flight
                if deferred and retries:
                    # Some of the user's roster changes were in flight: look again once the
                    # dispatcher has had time to apply them.
                    retries -= 1
                    await asyncio.sleep(ROSTER_CHECK_RETRY_S)
                    continue
                if owner not in self._check_again:
                    return
        except (TransportGone, RosterRefused, RosterFailed) as exc:
            log.info("roster check of %s skipped: %s", owner, type(exc).__name__)
        except Exception:
            log.exception("roster check of %s failed", owner)
        finally:
            self._checks.pop(owner, None)
            self._check_again.discard(owner)

    # ---- do the token holders' accounts still exist? --------------------------------

    async def _check_accounts(self) -> None:
        """While the session is up: each token holder's account, once per
        `account_check_s`; an account the server says is gone loses its tokens."""
        while self.session_up:
            try:
                due = await self.identity.accounts_to_check(self.account_check_s)
                for user in due:
                    if not self.session_up:
                        return
                    await self.identity.account_checked(user, await self.account_exists(user.jid))
            except Exception:
                log.exception("account checks failed; trying again later")
            await asyncio.sleep(min(60.0, self.account_check_s))

    async def account_exists(self, jid: str) -> bool | None:
        """Whether the server still has this account (None: it cannot tell)."""
        iq = privileged_ping(self, jid, jid_domain(BareJid(jid)), self.boundjid.bare)
        async with self._iq_slots:
            if not self.session_up:
                return None
            try:
                await iq.send(timeout=IQ_TIMEOUT_S)
            except IqTimeout:
                return None
            except IqError as exc:
                if exc.condition == "forbidden":
                    return exc.iq["error"]["text"] != PROSODY_NO_SUCH_ACCOUNT
                return None
        return True

    def _presence(self, to: object, extension: str, ptype: str | None = None) -> Presence:
        pres = self.make_presence(pto=to, pfrom=f"{extension}@{self.boundjid.bare}")
        if ptype is not None:
            pres["type"] = ptype
        return pres

    def _state_presence(self, to: object, extension: str, state: str, sequence: int | None) -> Presence:
        """Available presence showing a dialog state; the raw state in a namespaced child."""
        pres = self._presence(to, extension)
        show, status = STATE_PRESENCE[state]
        if show:
            pres["show"] = show
        pres["status"] = status
        child = ET.SubElement(pres.xml, f"{{{NS_PRESENCE_STATE}}}dialog", {"state": state})
        if sequence is not None:
            child.attrib["sequence"] = str(sequence)
        return pres

    def _request_reply(self, iq: Iq, request: PresenceRequest, action: str | None = None) -> Iq:
        reply = iq.reply(clear=True)
        item = reply["presencehandshake"]
        _fill(item, request)
        if action:
            item["action"] = action
        return reply

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

    # ---- family 3: device sharing ----------------------------------------------------

    @answers_errors
    async def on_share_iq(self, iq: Iq) -> Iq:
        if iq["type"] != "set":
            raise BadRequest("deviceshare commands are sent with a set")
        caller = await self._caller(iq)
        command = iq["deviceshare"]
        fields = {k: v for k, v in command.xml.attrib.items() if k != "action"}
        action = command["action"]
        reply = iq.reply(clear=True)
        result = reply["deviceshare"]
        if action == "share":
            created = await self.device_sharing.share(
                ShareDevice.from_fields(caller, fields, self.device_sharing.settings.max_expire_s)
            )
            result["invite_code"] = created.invite_code
        elif action in ("cancel", "accept", "deny"):
            answer = ShareAnswer.from_fields(caller, fields)
            done = await getattr(self.device_sharing, action)(answer)
            result["invite_code"] = done.invite_code
            result["state"] = done.state.value
        elif action == "delete":
            code = parse_invite_code(fields.get("invite_code"))
            await self.device_sharing.delete(caller, code)
            result["invite_code"] = code
        else:
            raise BadRequest("action must be share, cancel, accept, deny or delete")
        return reply

    @answers_errors
    async def on_shares_iq(self, iq: Iq) -> Iq:
        caller = await self._caller(iq)
        if iq["type"] != "get":
            raise BadRequest("deviceshares is read with a get")
        reply = iq.reply(clear=True)
        out = reply["deviceshares"]
        for share in await self.device_sharing.list(caller):
            item = stanzas.DeviceShareElement()
            for key, value in share_fields(share).items():
                if value is not None:
                    item[key] = str(value)
            out.append(item)
        return reply

    # ---- Transport for the outbox dispatcher ---------------------------------

    @property
    def ready(self) -> bool:
        return self.session_up and self.privileges_known

    @property
    def roster_ready(self) -> bool:
        return self.ready and self.roster_status == "granted"

    def roster_allowed(self, owner: str) -> bool:
        return self.grants.can_change_roster(jid_domain(BareJid(owner)))

    def send_management(self, row: OutboxRow) -> None:
        msg = management_message(self, row.recipient, self.boundjid.bare, f"ph-{row.id}")
        # Family 1 rows carry a presencehandshake, family 3 rows a devicesharing child.
        element, attrs = (
            ("presencehandshake", row.payload["handshake"])
            if "handshake" in row.payload
            else ("devicesharing", row.payload["devicesharing"])
        )
        ET.SubElement(msg.xml, f"{{{NS_CONFIGURATION}}}{element}", attrs)
        msg.send()

    def send_presence(self, row: OutboxRow) -> None:
        payload = row.payload
        if "state" in payload and "type" not in payload:
            pres = self._state_presence(
                row.recipient, payload["extension"], payload["state"], payload.get("sequence")
            )
        else:
            pres = self._presence(row.recipient, payload["extension"], payload["type"])
        pres["id"] = f"ps-{row.id}"
        pres.send()

    async def roster_items(self, owner: str) -> dict[str, RosterItem]:
        """`owner`'s whole roster, read with the XEP-0356 roster privilege."""
        iq = privileged_roster_get(self, owner, self.boundjid.bare)
        result = await self._roster_iq(owner, iq)
        items = {}
        for item in result.xml.iter(f"{{{NS_ROSTER}}}item"):
            contact = item.get("jid", "")
            items[contact] = RosterItem(
                contact,
                item.get("subscription", "none"),
                item.get("name") or None,
                tuple(g.text or "" for g in item.iter(f"{{{NS_ROSTER}}}group") if g.text),
                item.get("ask") or None,
            )
        return items

    async def roster_item(self, owner: str, contact: str) -> RosterItem | None:
        return (await self.roster_items(owner)).get(contact)

    async def set_roster_item(self, owner: str, item: RosterItem) -> None:
        iq = privileged_roster_set(
            self, owner, item.jid, item.subscription, item.name, self.boundjid.bare, item.groups
        )
        await self._roster_iq(owner, iq)

    async def remove_roster_item(self, owner: str, contact: str) -> None:
        iq = privileged_roster_set(self, owner, contact, "remove", None, self.boundjid.bare)
        try:
            await self._roster_iq(owner, iq)
        except RosterFailed as exc:
            if str(exc) != "item-not-found":
                raise  # otherwise: already gone, the goal is reached

    async def _roster_iq(self, owner: str, iq: Iq) -> Iq:
        """Send a privileged roster IQ (bounded in flight); map the server's answer."""
        async with self._iq_slots:
            if not self.session_up:
                raise TransportGone()
            try:
                return await iq.send(timeout=IQ_TIMEOUT_S)
            except IqTimeout as exc:
                raise TransportGone() from exc
            except IqError as exc:
                if exc.condition in ("forbidden", "not-authorized"):
                    domain = jid_domain(BareJid(owner))
                    if self.grants.can_change_roster(domain):
                        self.grants.withdraw_roster(domain)
                        self._update_roster_status()
                        log.warning(
                            "xmpp: %s refused a roster IQ (%s) though it advertised the privilege;"
                            " roster changes for its users wait until it advertises it again",
                            domain, exc.condition,
                        )
                    raise RosterRefused(exc.condition) from exc
                raise RosterFailed(exc.condition) from exc

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


def _fill(item: stanzas.PresenceHandshake, request: PresenceRequest) -> None:
    item["id"] = request.id
    item["status"] = request.status.value
    item["fromUserId"] = request.from_user.id
    item["fromJid"] = request.from_user.jid
    item["toUserId"] = request.to_user.id
    item["toJid"] = request.to_user.jid
    for attr, value in (
        ("requestDate", request.request_date),
        ("acceptationDate", request.acceptation_date),
        ("declinationDate", request.declination_date),
        ("cancellationDate", request.cancellation_date),
    ):
        if value is not None:
            item[attr] = iso_ms(value)

