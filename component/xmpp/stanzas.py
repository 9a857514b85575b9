"""Payload elements of the `jabber:iq:configuration` namespace (the Rainbow wire format)."""

from __future__ import annotations

from typing import ClassVar

from slixmpp import Iq
from slixmpp.plugins.xep_0059 import stanza as rsm
from slixmpp.xmlstream import ElementBase, register_stanza_plugin

NS_CONFIGURATION = "jabber:iq:configuration"
NS_RSM = rsm.Set.namespace  # XEP-0059: list IQs page with it
# Our own namespace for family 2: the dialog state child of extension presence,
# and the admin IQ that sets or resets it.
NS_PRESENCE_STATE = "urn:xmpp:presence-consent:0"
# Family 3 (device sharing) over XMPP.
NS_SHARE = "urn:xmpp:presence-consent:share:0"

SHARE_ATTRS = {
    "action", "device_id", "mode", "expire", "user", "authority", "invite_code", "reason",
    "from_id", "from_user", "to_id", "to_user", "state", "create_date", "expire_date",
}


class PresenceHandshake(ElementBase):
    """`<presencehandshake/>`: one presence request, carried as attributes."""

    namespace = NS_CONFIGURATION
    name = "presencehandshake"
    plugin_attrib = "presencehandshake"
    plugin_multi_attrib = "presencehandshake_items"
    interfaces: ClassVar[set[str]] = {
        "id",
        "action",
        "type",
        "to",
        "status",
        "fromUserId",
        "fromJid",
        "toUserId",
        "toJid",
        "requestDate",
        "acceptationDate",
        "declinationDate",
        "cancellationDate",
    }


class PresenceHandshakes(ElementBase):
    """`<presencehandshakes type='received|sent' status='...'/>`: a page of requests."""

    namespace = NS_CONFIGURATION
    name = "presencehandshakes"
    plugin_attrib = "presencehandshakes"
    interfaces: ClassVar[set[str]] = {"type", "status"}


class PresenceStateCommand(ElementBase):
    """`<presencestate extension='*3101' action='set|reset' state='confirmed'/>` (admins only)."""

    namespace = NS_PRESENCE_STATE
    name = "presencestate"
    plugin_attrib = "presencestate"
    interfaces: ClassVar[set[str]] = {"extension", "action", "state", "realm"}


class DeviceShareElement(ElementBase):
    """`<deviceshare action='share|cancel|accept|deny|delete' .../>`, and one share in a list."""

    namespace = NS_SHARE
    name = "deviceshare"
    plugin_attrib = "deviceshare"
    plugin_multi_attrib = "deviceshare_items"
    interfaces: ClassVar[set[str]] = SHARE_ATTRS


class DeviceShares(ElementBase):
    """`<deviceshares/>`: the caller's shares (sent and received)."""

    namespace = NS_SHARE
    name = "deviceshares"
    plugin_attrib = "deviceshares"
    interfaces: ClassVar[set[str]] = set()


class XlinkError(ElementBase):
    """Application-specific error condition carrying Xlink's numeric code."""

    namespace = NS_SHARE
    name = "xlink-error"
    plugin_attrib = "xlink_error"
    interfaces: ClassVar[set[str]] = {"code"}


def register() -> None:
    register_stanza_plugin(Iq, PresenceStateCommand)
    register_stanza_plugin(Iq, DeviceShareElement)
    register_stanza_plugin(Iq, DeviceShares)
    register_stanza_plugin(DeviceShares, DeviceShareElement, iterable=True)
    register_stanza_plugin(Iq, PresenceHandshake)
    register_stanza_plugin(Iq, PresenceHandshakes)
    register_stanza_plugin(PresenceHandshakes, PresenceHandshake, iterable=True)
    register_stanza_plugin(PresenceHandshakes, rsm.Set)
