"""Family 2 over XMPP: subscriptions and probes addressed to `{extension}@{component}`,
the presence that shows an extension's state, and the admins' `presencestate` IQ."""

from __future__ import annotations

import logging

from slixmpp import Iq, Presence
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import CoroutineCallback
from slixmpp.xmlstream.matcher import StanzaPath

from component.commands import StateChange
from component.errors import BadRequest, DomainError, Forbidden
from component.logfields import untrusted
from component.model import parse_bare_jid, parse_extension
from component.xmpp.session import Session, answers_errors
from component.xmpp.stanzas import NS_PRESENCE_STATE
from storage.outbox import OutboxRow

log = logging.getLogger(__name__)

# Dialog state -> (<show/>, <status/>): idle reads as available, ringing as away,
# busy as do-not-disturb (the colours a BLF lamp would show).
STATE_PRESENCE: dict[str, tuple[str | None, str]] = {
    "terminated": (None, "Idle"),
    "early": ("away", "Ringing"),
    "confirmed": ("dnd", "Busy"),
}
# RFC 7622 section 3.3: a localpart is at most 1023 bytes.
MAX_JID_PART = 1023


class SubscriptionPresence(Session):
    """Mixin of PresenceComponent: extensions' subscriptions, probes and states."""

    def register_subscriptions(self) -> None:
        self.feature(NS_PRESENCE_STATE)
        self.register_handler(
            CoroutineCallback("extension presence", StanzaPath("presence"), self.on_presence)
        )
        self.register_handler(
            CoroutineCallback("presencestate iq", StanzaPath("iq/presencestate"), self.on_state_iq)
        )

    async def on_presence(self, presence: Presence) -> None:
        """Subscriptions and probes addressed to `{extension}@{component}`, and the
        presence of users the server forwards to the component itself."""
        # The raw address: slixmpp's parser raises on a localpart only the server accepts.
        to = presence.xml.get("to", "")
        local, at, _ = to.partition("@")
        if not at:
            if presence.xml.get("type") in ("subscribe", "unsubscribe", "probe"):
                self.on_service_presence(presence)
            else:
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
