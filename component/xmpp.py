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
from component.delivery import OutboxDispatcher, TransportGone
from component.errors import INTERNAL, INTERNAL_TEXT, BadRequest, DomainError, Forbidden, WireError
from component.model import (
    PresenceRequest,
    User,
    parse_bare_jid,
    parse_invite_code,
    parse_request_id,
)
from component.slixfix import (
    PrivilegeGrants,
    detach_roster,
    management_message,
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
DEFAULT_PAGE = 100

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
                iq["id"], iq["from"], exc.wire.xmpp_condition, exc.detail,
            )
            self._send_error(iq, exc.wire, exc.detail)
        except Exception:
            log.exception("iq %s from %s: unexpected error", iq["id"], iq["from"])
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
        self.grants = PrivilegeGrants()
        self.session_up = False
        self.privileges_known = False
        self.roster_status = "unavailable"
        self._closing = False
        self._backoff = config.reconnect_min_s
        self._iq_slots = asyncio.Semaphore(config.max_concurrent_iqs)
        self._privileges_complete = asyncio.Event()
        self._roster_warning_logged = False

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
        self.session_up = True
        self._backoff = self.config.reconnect_min_s
        try:
            await asyncio.wait_for(self._privileges_complete.wait(), self.config.privilege_wait_s)
        except TimeoutError:
            pass
        if not self.session_up:
            return
        granted = all(self.grants.can_set_roster(d) for d in self.served_domains)
        self.roster_status = "granted" if granted else "unavailable"
        if granted:
            log.info("xmpp: roster privilege (XEP-0356) granted for %s", ", ".join(sorted(self.served_domains)))
        elif not self._roster_warning_logged:
            self._roster_warning_logged = True
            missing = sorted(d for d in self.served_domains if not self.grants.can_set_roster(d))
            log.warning(
                "xmpp: the server grants no XEP-0356 roster privilege for %s; rosters will not be"
                " updated (grant roster = \"both\" to %s in the server's privileged_entities)",
                ", ".join(missing), self.boundjid.bare,
            )
        self.privileges_known = True
        if self.dispatcher is not None:
            self.dispatcher.wake()

    def on_privileges(self, msg: Message) -> None:
        sender = msg["from"]
        if sender.user or sender.resource or sender.domain not in self.served_domains:
            # XEP-0356 section 4.2: only the server (a served domain's own JID) advertises
            # privileges; a user could otherwise revoke our roster access by message.
            log.warning("xmpp: ignoring a privilege advertisement from %s", sender)
            return
        domain = self.grants.update(msg)
        log.info("xmpp: %s advertises roster privilege %r", domain, self.grants.roster.get(domain))
        if all(d in self.grants.roster for d in self.served_domains):
            self._privileges_complete.set()

    def on_disconnected(self, reason: object) -> None:
        was_up = self.session_up
        self.session_up = False
        self.privileges_known = False
        self.grants.clear()
        self._privileges_complete.clear()
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
        """Subscriptions and probes addressed to `{extension}@{component}`."""
        extension = presence["to"].user
        kind = presence["type"]
        if not extension or kind not in ("subscribe", "unsubscribe", "probe"):
            return  # presence to the component itself, or directed availability: nothing to do
        sender = presence["from"]
        try:
            if not sender.user:
                raise Forbidden("only user accounts may subscribe")
            subscriber = parse_bare_jid(sender.bare, "from")
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
            log.info("presence %s from %s to %s refused: %s", kind, sender, presence["to"], exc.detail)
            if kind in ("subscribe", "probe"):
                # RFC 6121 section 3.2: denying a subscription is answering `unsubscribed`.
                self._presence(sender.bare, extension, "unsubscribed").send()
        except Exception:
            log.exception("presence %s from %s to %s: unexpected error", kind, sender, presence["to"])

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

    def roster_allowed(self, owner: str) -> bool:
        return self.grants.can_set_roster(owner.partition("@")[2])

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

    async def set_roster_item(self, row: OutboxRow) -> None:
        item = row.payload
        async with self._iq_slots:
            if not self.session_up:
                raise TransportGone()
            iq = privileged_roster_set(
                self, row.recipient, item["jid"], item["subscription"], item.get("name"),
                self.boundjid.bare,
            )
            try:
                await iq.send(timeout=IQ_TIMEOUT_S)
            except IqTimeout as exc:
                raise TransportGone() from exc
            except IqError as exc:
                if item["subscription"] == "remove" and exc.condition == "item-not-found":
                    return  # already gone: the goal is reached
                log.warning(
                    "roster: setting %s to %s in %s's roster failed: %s",
                    item["jid"], item["subscription"], row.recipient, exc.condition,
                )

    async def barrier(self) -> None:
        if not self.session_up:
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

