"""A PresenceComponent on a wire of our own: stanzas in through slixmpp's parser and
dispatcher, stanzas out captured from `send`. No sockets, no server."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from xml.etree.ElementTree import canonicalize

from slixmpp.xmlstream import ET, StanzaBase

from component.model import Account, BareJid, Device
from component.xmpp import PresenceComponent

COMPONENT = "presence.example.test"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


@dataclass(frozen=True)
class Home:
    """The `home` fixture: one account (realm example.test) whose hall phone (extension
    1001) alice manages; bob is provisioned too."""

    account: Account
    hall: Device  # alice manages it
    alice_id: str
    bob_id: str


class FakeVerifier:
    async def verify(self, jid: BareJid, password: str) -> bool:
        return password == f"{jid.partition('@')[0]}-pw"


class Wire:
    """Feeds XML to the component as if it came from the server; records what it sends."""

    def __init__(self, comp: PresenceComponent) -> None:
        self.comp = comp
        self.sent: list[StanzaBase] = []
        self._changed = asyncio.Event()
        comp.send = self._capture  # type: ignore[method-assign]

    def _capture(self, stanza: StanzaBase, *_args: object, **_kwargs: object) -> None:
        self.sent.append(stanza)
        self._changed.set()

    def feed(self, xml: str) -> None:
        """One stanza from the server, in the component stream's namespace."""
        element = ET.fromstring(xml)
        # As the stream's parser would: elements without a namespace are in the
        # stream's default one (an IQ's <error/> included).
        for node in element.iter():
            if "}" not in node.tag:
                node.tag = f"{{jabber:component:accept}}{node.tag}"
        self.comp._spawn_event(element)

    async def deliver(self, xml: str) -> None:
        """Feed one stanza and wait until every handler it started has finished."""
        before = asyncio.all_tasks()
        self.feed(xml)
        started = asyncio.all_tasks() - before
        await asyncio.wait_for(asyncio.gather(*started), 5)

    async def wait_for(self, stanza_id: str, timeout: float = 5, since: int = 0) -> StanzaBase:
        """The stanza the component sends with this id (a reply to ours, or its own),
        among those sent from the `since`-th on."""

        async def arrival() -> StanzaBase:
            while True:
                for stanza in self.sent[since:]:
                    if stanza["id"] == stanza_id:
                        return stanza
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(arrival(), timeout)

    async def nth(self, index: int, timeout: float = 5) -> StanzaBase:
        """The index-th stanza the component sends (counting from 0), once it is sent."""

        async def arrival() -> StanzaBase:
            while len(self.sent) <= index:
                self._changed.clear()
                await self._changed.wait()
            return self.sent[index]

        return await asyncio.wait_for(arrival(), timeout)

    async def ask(self, xml: str) -> StanzaBase:
        """Feed an IQ and return the component's answer to it (ids may repeat)."""
        since = len(self.sent)
        self.feed(xml)
        return await self.wait_for(ET.fromstring(xml).attrib["id"], since=since)


def iq(kind: str, stanza_id: str, sender: str, payload: str) -> str:
    return f"<iq type='{kind}' id='{stanza_id}' from='{sender}' to='{COMPONENT}'>{payload}</iq>"


def xml_text(text: str) -> str:
    """Text as it is written inside an XML element."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


def same_xml(actual: StanzaBase | str, expected: str) -> bool:
    """Equal as XML (attribute order, quoting and inter-element whitespace aside)."""
    return canonicalize(str(actual), strip_text=True) == canonicalize(expected, strip_text=True)


def error_xml(stanza_id: str, to: str, kind: str, condition: str, text: str) -> str:
    return (
        f"<iq type='error' id='{stanza_id}' from='{COMPONENT}' to='{to}'>"
        f"<error type='{kind}'><{condition} xmlns='{NS_STANZAS}'/>"
        f"<text xmlns='{NS_STANZAS}'>{text}</text></error></iq>"
    )
