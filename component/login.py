"""Password checks against the XMPP server itself: a short SASL session over c2s.

The password is never stored, logged or compared locally.
"""

from __future__ import annotations

import asyncio
import logging

import slixmpp

from component.errors import ServiceUnavailable
from component.model import BareJid
from component.slixfix import dispose

log = logging.getLogger(__name__)


class XmppPasswordVerifier:
    def __init__(
        self,
        host: str,
        port: int,
        allow_plaintext: bool,
        timeout_s: float = 10.0,
        max_concurrent: int = 8,
    ) -> None:
        self.host = host
        self.port = port
        self.allow_plaintext = allow_plaintext
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_concurrent)

    async def verify(self, jid: BareJid, password: str) -> bool:
        async with self._slots:
            return await self._attempt(jid, password)

    async def _attempt(self, jid: BareJid, password: str) -> bool:
        client = slixmpp.ClientXMPP(f"{jid}/presence-consent-login", password)
        client.enable_direct_tls = False
        if self.allow_plaintext:
            # Loopback test setups only: PLAIN over an unencrypted stream.
            client.enable_starttls = False
            client.enable_plaintext = True
            client.plugin["feature_mechanisms"].unencrypted_plain = True
        else:
            client.enable_starttls = True
            client.enable_plaintext = False
        outcome: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()

        def settle(value: bool | None) -> None:
            if not outcome.done():
                outcome.set_result(value)

        client.add_event_handler("auth_success", lambda _: settle(True))
        client.add_event_handler("failed_all_auth", lambda _: settle(False))
        client.add_event_handler("no_auth", lambda _: settle(False))
        client.add_event_handler("connection_failed", lambda _: settle(None))
        client.add_event_handler("disconnected", lambda _: settle(None))
        client.connect(self.host, self.port)
        try:
            result = await asyncio.wait_for(outcome, self.timeout_s)
        except TimeoutError:
            result = None
        finally:
            dispose(client)
        if result is None:
            log.warning("login check for %s: XMPP server %s:%d unreachable", jid, self.host, self.port)
            raise ServiceUnavailable("the XMPP server cannot verify logins right now")
        return result
