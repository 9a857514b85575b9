"""Every workaround for slixmpp 1.17 behaviour, in one place.

Each names the problem and when it can go.
"""

from __future__ import annotations

from slixmpp import JID, Iq, Message
from slixmpp.plugins.xep_0356 import stanza as privilege_stanza
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import StanzaPath
from slixmpp.xmlstream.matcher.base import MatcherBase

NS_ROSTER = "jabber:iq:roster"
NS_PRIVILEGE = "urn:xmpp:privilege:2"
# XEP-0356 before version 0.4 (ejabberd up to 23.04, Debian 12's 23.01): the same
# <privilege><perm access= type=/></privilege> advertisement in its own namespace, which
# slixmpp's plugin does not read. Both are read (PrivilegeGrants.update).
NS_PRIVILEGE_1 = "urn:xmpp:privilege:1"
PRIVILEGE_NAMESPACES = (NS_PRIVILEGE, NS_PRIVILEGE_1)


def management_message(xmpp, mto: str, mfrom: str, msg_id: str, mtype: str = "management") -> Message:
    """A `<message type='management'/>` (or another type).

    slixmpp's Message silently drops a `type` outside RFC 6120's list when set
    through the stanza API, so the attribute is written directly. Remove when
    slixmpp accepts arbitrary message types.
    """
    msg = xmpp.make_message(mto=mto, mfrom=mfrom)
    msg.xml.attrib["type"] = mtype
    msg["id"] = msg_id
    return msg


def privileged_roster_set(
    xmpp,
    owner: str,
    contact: str,
    subscription: str,
    name: str | None,
    ifrom: str,
    groups: tuple[str, ...] = (),
) -> Iq:
    """A roster push into `owner`'s roster (XEP-0356 section 5.2), built by hand.

    slixmpp's `xep_0356.set_roster` checks the *get* privilege instead of *set*
    (it works only with a grant of `both`) and keeps its grants in a class-level
    dict shared by every instance. We track grants ourselves (see
    `PrivilegeGrants`) and build the IQ here. Remove when slixmpp fixes both.

    The server replaces the whole item (Prosody's mod_privilege keeps only `ask`), so
    the caller passes the name and groups it read with `privileged_roster_get`.
    """
    iq = xmpp.make_iq_set(ito=owner, ifrom=ifrom)
    query = ET.SubElement(iq.xml, f"{{{NS_ROSTER}}}query")
    item = ET.SubElement(query, f"{{{NS_ROSTER}}}item", {"jid": contact, "subscription": subscription})
    if subscription != "remove":
        if name:
            item.attrib["name"] = name
        for group in groups:
            ET.SubElement(item, f"{{{NS_ROSTER}}}group").text = group
    return iq


def privileged_ping(xmpp, owner: str, server: str, ifrom: str) -> Iq:
    """A XEP-0356 privileged IQ: `owner` pinging its own server (section 6). slixmpp's
    `send_privileged_iq` needs its plugin, whose grants are class-level (see above)."""
    iq = xmpp.make_iq_get(ito=owner, ifrom=ifrom)
    wrapper = ET.SubElement(iq.xml, f"{{{NS_PRIVILEGE}}}privileged_iq")
    inner = ET.SubElement(wrapper, "{jabber:client}iq", {"type": "get", "id": iq["id"], "to": server})
    ET.SubElement(inner, "{urn:xmpp:ping}ping")
    return iq


def privileged_roster_get(xmpp, owner: str, ifrom: str) -> Iq:
    """A roster get of `owner`'s roster (XEP-0356 section 5.1). Built by hand for the
    same reasons as `privileged_roster_set`; the answer is the whole roster."""
    iq = xmpp.make_iq_get(ito=owner, ifrom=ifrom)
    ET.SubElement(iq.xml, f"{{{NS_ROSTER}}}query")
    return iq


class PrivilegeAdvertisement(MatcherBase):
    """Matches a `<message/>` carrying a XEP-0356 `<privilege/>` in either namespace.
    slixmpp's StanzaPath("message/privilege") knows only `urn:xmpp:privilege:2`."""

    def __init__(self) -> None:
        super().__init__(None)

    def match(self, xml) -> bool:  # type: ignore[override]
        element = xml.xml
        if not element.tag.endswith("}message"):
            return False
        return any(element.find(f"{{{ns}}}privilege") is not None for ns in PRIVILEGE_NAMESPACES)


class PrivilegeGrants:
    """Roster and presence grants the server advertised (XEP-0356 section 4), per
    served domain, and in which namespace each domain advertised them."""

    def __init__(self) -> None:
        self.roster: dict[str, str] = {}
        self.presence: dict[str, str] = {}
        self.namespace: dict[str, str] = {}

    @staticmethod
    def register_stanzas() -> None:
        privilege_stanza.register()

    def update(self, msg: Message) -> str | None:
        """Record an advertisement (`urn:xmpp:privilege:2` or `:1`, read from the XML
        itself); returns the domain it came from."""
        domain = JID(msg["from"]).domain
        self.roster[domain] = "none"
        self.presence[domain] = "none"
        for ns in PRIVILEGE_NAMESPACES:
            privilege = msg.xml.find(f"{{{ns}}}privilege")
            if privilege is None:
                continue
            self.namespace[domain] = ns
            for perm in privilege.iter(f"{{{ns}}}perm"):
                if perm.get("access") == "roster":
                    self.roster[domain] = perm.get("type") or "none"
                elif perm.get("access") == "presence":
                    self.presence[domain] = perm.get("type") or "none"
            break
        return domain

    def forwards_unavailable(self, domain: str) -> bool:
        """Whether the server tells the component when a user's resource goes. ejabberd
        23.01 (urn:xmpp:privilege:1, presence managed_entity) forwards a user's available
        presence, never the unavailable one a disconnect makes (measured): there every
        available presence is taken as a (possibly new) session."""
        return self.namespace.get(domain) != NS_PRIVILEGE_1

    def legacy(self) -> bool:
        """Some domain advertised in `urn:xmpp:privilege:1` (ejabberd before 23.10)."""
        return NS_PRIVILEGE_1 in self.namespace.values()

    def can_change_roster(self, domain: str) -> bool:
        """Read and write: the service reads an item before changing one direction of it."""
        return self.roster.get(domain) == "both"

    def sees_presence(self, domain: str) -> bool:
        """The server forwards its users' presence (`managed_entity` or `roster`)."""
        return self.presence.get(domain) in ("managed_entity", "roster")

    def withdraw_roster(self, domain: str) -> None:
        """The server answered `forbidden` to a roster IQ: treat the grant as gone."""
        self.roster[domain] = "none"

    def clear(self) -> None:
        self.roster.clear()
        self.presence.clear()
        self.namespace.clear()


_ROSTER_PRESENCE_EVENTS = {
    "presence_available": "_handle_available",
    "presence_dnd": "_handle_available",
    "presence_xa": "_handle_available",
    "presence_chat": "_handle_available",
    "presence_away": "_handle_available",
    "presence_unavailable": "_handle_unavailable",
    "presence_subscribe": "_handle_subscribe",
    "presence_subscribed": "_handle_subscribed",
    "presence_unsubscribe": "_handle_unsubscribe",
    "presence_unsubscribed": "_handle_unsubscribed",
    "roster_subscription_request": "_handle_new_subscription",
    "presence_probe": "_handle_probe",
}


def detach_roster(xmpp) -> None:
    """Stop slixmpp's in-memory roster from handling presence for the component.

    It keeps a node per (to, from) pair seen, forever (memory grows with every
    subscriber), answers probes for contacts it does not know with `unsubscribed`
    (downgrading the rosters we push), and has its own subscription logic. The
    component answers subscriptions and probes from the database instead; the
    `presence_*` events still fire. Remove when slixmpp lets a component opt out.
    """
    for event, method in _ROSTER_PRESENCE_EVENTS.items():
        xmpp.del_event_handler(event, getattr(xmpp, method))
    xmpp.remove_handler("Presence")

    def fire_events(presence) -> None:
        xmpp.event("presence", presence)
        xmpp.event(f"presence_{presence['type']}", presence)

    xmpp.register_handler(Callback("Presence", StanzaPath("presence"), fire_events))


class _IqPluginsLessRoster:
    """`Iq`'s plugin map, as plugins register on `Iq` now and later, less slixmpp's
    roster query. slixmpp builds a stanza object for each `<item/>` and `<group/>` of a
    roster result (`slixmpp.stanza.roster`, registered on `Iq` by BaseXMPP): about 8 ms
    for a 1,000-item roster, on every privileged roster get the dispatcher makes. The
    component reads roster results from the XML (component.xmpp.rosters) and never
    uses `iq["roster"]`. Remove when slixmpp builds plugins on first access."""

    _query = f"{{{NS_ROSTER}}}query"

    def __init__(self) -> None:
        self._of: dict | None = None
        self._map: dict = {}

    def __get__(self, obj, owner) -> dict:
        current = Iq.plugin_tag_map  # register_stanza_plugin replaces the dict each time
        if current is not self._of:
            self._map = {tag: plugin for tag, plugin in current.items() if tag != self._query}
            self._of = current
        return self._map


class _ServedIq(Iq):
    """An `<iq/>` whose unhandled get or set is answered `service-unavailable`; roster
    results stay XML (see _IqPluginsLessRoster)."""

    plugin_tag_map = _IqPluginsLessRoster()  # type: ignore[assignment]

    def unhandled(self) -> None:
        if self["type"] in ("get", "set"):
            reply = self.reply()
            reply["error"]["type"] = "cancel"
            reply["error"]["condition"] = "service-unavailable"
            reply.send()


def answer_unserved_iqs(xmpp) -> None:
    """RFC 6120 section 8.4: an IQ get or set in a namespace the entity does not serve
    is answered `service-unavailable`. slixmpp answers `feature-not-implemented` ("No
    handlers registered"), which clients read as "the service is broken" (mcabber's
    "Ping failed"). The stream builds its incoming `<iq/>` from this subclass instead;
    plugins registered on `Iq` apply to it (it keeps Iq's plugin maps, less the roster
    query). Remove when slixmpp answers `service-unavailable` itself."""
    xmpp.remove_stanza(Iq)
    xmpp.register_stanza(_ServedIq)
