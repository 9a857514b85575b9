"""Payload elements of the `jabber:iq:configuration` namespace (the Rainbow wire format)."""

from __future__ import annotations

from typing import ClassVar

from slixmpp import Iq
from slixmpp.plugins.xep_0059 import stanza as rsm
from slixmpp.xmlstream import ElementBase, register_stanza_plugin

NS_CONFIGURATION = "jabber:iq:configuration"


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


def register() -> None:
    register_stanza_plugin(Iq, PresenceHandshake)
    register_stanza_plugin(Iq, PresenceHandshakes)
    register_stanza_plugin(PresenceHandshakes, PresenceHandshake, iterable=True)
    register_stanza_plugin(PresenceHandshakes, rsm.Set)
