"""Password checks against the XMPP server itself: one short SASL exchange over c2s.

Per check (RFC 6120): open a TCP connection and a stream to the JID's domain, read
the stream features, STARTTLS (section 5, the certificate verified against the
domain) unless `c2s_allow_plaintext`, authenticate with SASL (section 6):
SCRAM-SHA-1 (RFC 5802) when offered, else PLAIN (RFC 4616, only over TLS or with
`c2s_allow_plaintext`), read `<success/>` or `<failure/>` and close the stream. No
resource is bound and no session is started: the server never sees a client.

Everything the server sends is parsed incrementally with defusedxml (no DTDs, no
entities), at most MAX_READ_BYTES per check and within `login_timeout_s`. An answer
that does not follow the protocol, a server that cannot be reached or that does not
answer in time, all are ServiceUnavailable: only the server's own verdict says
whether a password is right. The password is never stored, logged or compared
locally.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import ssl
from collections import deque
from xml.etree.ElementTree import Element, ParseError, TreeBuilder
from xml.sax.saxutils import quoteattr

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser
from slixmpp.util.sasl.client import saslprep
from slixmpp.util.stringprep_profiles import StringPrepError

from component.errors import ServiceUnavailable
from component.model import BareJid

log = logging.getLogger(__name__)

NS_STREAM = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"

# Everything one check may read from the server, TLS restart included. Prosody's
# features and SASL answers are well under 2 KiB.
MAX_READ_BYTES = 64 * 1024
# SCRAM's iteration count comes from the server; Prosody uses 10000. The bound keeps
# a broken server from holding a thread for minutes (the key derivation cannot be
# cancelled once started).
MAX_SCRAM_ITERATIONS = 1_000_000
# After the verdict: how long to wait for the server's own `</stream:stream>`
# (RFC 6120 section 4.4) before dropping the connection. Never changes the verdict.
CLOSE_GRACE_S = 1.0

# SASL failure conditions (RFC 6120 section 6.5) that are the server's verdict on
# these credentials. Every other condition means it could not decide.
_REFUSALS = frozenset({"not-authorized", "account-disabled", "credentials-expired", "malformed-request"})


class ServerAnswerInvalid(Exception):
    """The server broke the protocol, closed the stream or refused to go on.

    The text is for the service's log (it never carries credentials); the caller
    sees ServiceUnavailable.
    """


class _StreamTarget:
    """Parser target for one XML stream: the stream header's attributes, then each
    complete top-level element (stream features, SASL answers, stream errors)."""

    def __init__(self) -> None:
        self.header: dict[str, str] | None = None
        self.root: str | None = None
        self.ended = False
        self.elements: deque[Element] = deque()
        # An element has started and is not complete yet.
        self.partial = False
        self._depth = 0
        self._builder: TreeBuilder | None = None

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        if self._depth == 0:
            self.root, self.header = tag, dict(attrib)
        else:
            if self._depth == 1:
                self._builder = TreeBuilder()
                self.partial = True
            assert self._builder is not None
            self._builder.start(tag, attrib)
        self._depth += 1

    def end(self, tag: str) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.ended = True
            return
        assert self._builder is not None
        self._builder.end(tag)
        if self._depth == 1:
            self.elements.append(self._builder.close())
            self._builder = None
            self.partial = False

    def data(self, text: str) -> None:
        # Text directly under the stream root is whitespace keepalive: ignored.
        if self._builder is not None:
            self._builder.data(text)

    def close(self) -> None:
        return None


class _C2sConnection(asyncio.Protocol):
    """The client side of one c2s connection: every byte received goes straight into
    the current stream's parser, so nothing sent before TLS is read after it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.lost = False
        self._target: _StreamTarget | None = None
        self._parser: DefusedXMLParser | None = None
        self._error: ServerAnswerInvalid | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        self.received += len(data)
        if self.received > MAX_READ_BYTES:
            self._fail(f"the server sent more than {MAX_READ_BYTES} bytes")
        elif self._parser is None:
            # Between <proceed/> and the TLS handshake: injected plaintext (RFC 6120 section 5.4.3.3).
            self._fail("the server sent data before the TLS handshake")
        elif self._target is not None and self._target.ended:
            self._fail("the server sent data after closing its stream")
        else:
            try:
                self._parser.feed(data)
            except (ParseError, DefusedXmlException) as exc:
                self._fail(f"malformed XML ({type(exc).__name__}: {exc})")
        self._wake()

    def eof_received(self) -> bool:
        self.lost = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()

    # -- used by the check

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def new_stream(self, domain: str) -> None:
        """Start a stream (RFC 6120 section 4.2): a fresh parser for the server's."""
        self._drop_parser()
        self._target = _StreamTarget()
        self._parser = DefusedXMLParser(target=self._target, forbid_dtd=True)
        self.send(_stream_header(domain))

    def release(self) -> None:
        """Drops the stream's parser and target, freeing the parser at once: after the
        check (the transport aborted), and before STARTTLS (a new stream follows)."""
        self._drop_parser()
        self._target = None

    def _drop_parser(self) -> None:
        # defusedxml's parser is the pure-Python XMLParser: it and its expat parser
        # refer to each other (expat's handlers are its bound methods), so a dropped
        # one, with expat's buffers and the elements read (~20 KB), would wait for the
        # cyclic GC's next full collection: under 32 concurrent checks most survive
        # the young collections and pile up, ~10 MB of RSS. XMLParser.close() breaks
        # the cycle the same way, but only after a complete document.
        parser, self._parser = self._parser, None
        if parser is not None:  # by name, as XMLParser.close() does; tolerant of a newer stdlib
            for name in ("parser", "_parser", "target", "_target"):
                parser.__dict__.pop(name, None)

    async def stream_features(self) -> Element:
        """The server's stream header, then its first element, which must be its features."""
        target = self._target
        assert target is not None
        await self._until(lambda: target.header is not None or bool(target.elements))
        if target.root != f"{{{NS_STREAM}}}stream":
            raise ServerAnswerInvalid(f"the server's stream starts with {target.root}, not a stream header")
        version = (target.header or {}).get("version", "")
        if not version.startswith("1."):
            raise ServerAnswerInvalid(f"the server speaks XMPP stream version {version or '0.9'}, not 1.x")
        features = await self.next_element()
        if features.tag != f"{{{NS_STREAM}}}features":
            raise ServerAnswerInvalid(f"the server sent {features.tag} instead of stream features")
        return features

    async def next_element(self) -> Element:
        """The server's next top-level element; a stream error ends the check."""
        target = self._target
        assert target is not None
        await self._until(lambda: bool(target.elements))
        element = target.elements.popleft()
        if element.tag == f"{{{NS_STREAM}}}error":
            conditions = [_local(child) for child in element if _local(child) != "text"]
            raise ServerAnswerInvalid(f"stream error {', '.join(conditions) or '(no condition)'}")
        return element

    async def start_tls(self, context: ssl.SSLContext, domain: str) -> None:
        """Upgrade to TLS after `<proceed/>` (RFC 6120 section 5.4.3.3)."""
        target = self._target
        if target is not None and (target.elements or target.partial):
            # Plaintext after <proceed/> would be read as if it came over TLS.
            raise ServerAnswerInvalid("the server sent more after <proceed/>")
        self.release()
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        upgraded = await loop.start_tls(self.transport, self, context, server_hostname=domain)
        self.transport = upgraded  # type: ignore[assignment]
        if self._error is not None:
            raise self._error

    async def wait_closed(self) -> None:
        """Until the server closes its stream or the connection."""
        target = self._target
        await self._until(lambda: target is None or target.ended, closing=True)

    async def _until(self, ready, closing: bool = False) -> None:
        while True:
            if self._error is not None:
                raise self._error
            if ready():
                return
            if self.lost:
                if closing:
                    return
                raise ServerAnswerInvalid("the server closed the connection")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, reason: str) -> None:
        self._error = ServerAnswerInvalid(reason)
        if self.transport is not None:
            self.transport.abort()


def _stream_header(domain: str) -> bytes:
    return (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client'"
        f" xmlns:stream='{NS_STREAM}' to={quoteattr(domain)} version='1.0'>"
    ).encode("utf-8")


def _sasl(name: str, payload: bytes | None = None, mechanism: str | None = None) -> bytes:
    """A SASL element (RFC 6120 section 6.4): empty payload is `=`, none is no text."""
    attr = f" mechanism={quoteattr(mechanism)}" if mechanism else ""
    if payload is None:
        return f"<{name} xmlns='{NS_SASL}'{attr}/>".encode()
    text = base64.b64encode(payload).decode("ascii") or "="
    return f"<{name} xmlns='{NS_SASL}'{attr}>{text}</{name}>".encode()


def _sasl_payload(element: Element) -> bytes:
    text = (element.text or "").strip()
    if text in ("", "="):
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ServerAnswerInvalid(f"SASL {_local(element)} is not base64") from None


def _local(element: Element) -> str:
    return element.tag.rpartition("}")[2]


def _sasl_verdict(element: Element) -> bool:
    """False for a SASL <failure/> that refuses these credentials; raises for one that
    says the server could not decide, and for anything that is not a SASL element."""
    if element.tag != f"{{{NS_SASL}}}failure":
        raise ServerAnswerInvalid(f"unexpected {element.tag} during SASL")
    conditions = [_local(child) for child in element if _local(child) != "text"]
    condition = conditions[0] if conditions else "(none)"
    if condition in _REFUSALS:
        return False
    raise ServerAnswerInvalid(f"SASL failure {condition}")


def _scram_attributes(message: bytes) -> dict[str, str]:
    """`k=v,k=v` (RFC 5802 section 5.1); a value may contain `=`."""
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise ServerAnswerInvalid("SCRAM message is not UTF-8") from None
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or len(key) != 1:
            raise ServerAnswerInvalid("SCRAM message is malformed")
        out.setdefault(key, value)
    return out


def _saslname(username: str) -> str:
    # RFC 5802 section 5.1: "=" and "," are escaped in the username.
    return username.replace("=", "=3D").replace(",", "=2C")


class XmppPasswordVerifier:
    """Checks passwords with a SASL exchange against the XMPP server's c2s port."""

    def __init__(
        self,
        host: str,
        port: int,
        allow_plaintext: bool,
        timeout_s: float = 10.0,
        max_concurrent: int = 8,
        ca_file: str = "",
    ) -> None:
        """The server's certificate is verified against `ca_file` (PEM), or the
        system's trust store when it is empty."""
        self.host = host
        self.port = port
        self.allow_plaintext = allow_plaintext
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tls: ssl.SSLContext | None = None
        if not allow_plaintext:
            # Verifies the chain and the host name (the JID's domain) by default.
            self._tls = ssl.create_default_context(cafile=ca_file or None)

    async def verify(self, jid: BareJid, password: str) -> bool:
        """True if the server accepts the password, False if it refuses it.

        Raises ServiceUnavailable when the server cannot be reached, does not answer
        within `timeout_s`, or answers something that is not a verdict.
        """
        async with self._slots:
            try:
                return await self._check(jid, password)
            except TimeoutError:
                reason = f"no verdict within {self.timeout_s:g} s"
            except ServerAnswerInvalid as exc:
                reason = str(exc)
            except ssl.SSLError as exc:
                reason = f"TLS failed ({exc})"
            except OSError as exc:
                reason = f"unreachable ({exc.strerror or type(exc).__name__})"
        log.warning("login check for %s: XMPP server %s:%d: %s", jid, self.host, self.port, reason)
        raise ServiceUnavailable("the XMPP server cannot verify logins right now")

    async def _check(self, jid: BareJid, password: str) -> bool:
        localpart, _, domain = jid.partition("@")
        try:
            prepared = saslprep(password).encode("utf-8")
        except StringPrepError:
            # The server applies the same profile when a password is set: no
            # account can have this one (RFC 4013 section 2.3).
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        conn: _C2sConnection | None = None
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(_C2sConnection, self.host, self.port)
                verdict = await self._authenticate(conn, domain, localpart, prepared)
            # Close our stream; after <success/> a stream is expected first (RFC 6120
            # section 6.4.6), so open one and close it at once.
            if verdict:
                conn.new_stream(domain)
            conn.send(b"</stream:stream>")
            try:
                async with asyncio.timeout_at(min(deadline, loop.time() + CLOSE_GRACE_S)):
                    await conn.wait_closed()
            except (TimeoutError, ServerAnswerInvalid):
                pass
            return verdict
        finally:
            if conn is not None:
                if conn.transport is not None:
                    conn.transport.abort()  # nothing is received after this
                conn.release()

    async def _authenticate(self, conn: _C2sConnection, domain: str, username: str, password: bytes) -> bool:
        conn.new_stream(domain)
        features = await conn.stream_features()
        if not self.allow_plaintext:
            if features.find(f"{{{NS_TLS}}}starttls") is None:
                raise ServerAnswerInvalid("the server does not offer STARTTLS (c2s_allow_plaintext is false)")
            conn.send(f"<starttls xmlns='{NS_TLS}'/>".encode())
            answer = await conn.next_element()
            if answer.tag != f"{{{NS_TLS}}}proceed":
                raise ServerAnswerInvalid(f"STARTTLS refused ({_local(answer)})")
            assert self._tls is not None
            await conn.start_tls(self._tls, domain)
            conn.new_stream(domain)
            features = await conn.stream_features()
        mechanisms = features.find(f"{{{NS_SASL}}}mechanisms")
        offered = {(m.text or "").strip() for m in mechanisms} if mechanisms is not None else set()
        if "SCRAM-SHA-1" in offered:
            return await self._scram_sha1(conn, username, password)
        if "PLAIN" in offered:
            # Reached only over TLS, or with c2s_allow_plaintext (loopback test setups).
            conn.send(_sasl("auth", b"\0" + username.encode("utf-8") + b"\0" + password, "PLAIN"))
            answer = await conn.next_element()
            if answer.tag == f"{{{NS_SASL}}}success":
                return True
            return _sasl_verdict(answer)
        hint = ""
        if features.find(f"{{{NS_TLS}}}starttls") is not None:
            hint = " (it offers STARTTLS: set c2s_allow_plaintext = false)"
        listed = ", ".join(sorted(offered)) or "nothing"
        raise ServerAnswerInvalid(f"the server offers neither SCRAM-SHA-1 nor PLAIN ({listed}){hint}")

    async def _scram_sha1(self, conn: _C2sConnection, username: str, password: bytes) -> bool:
        """RFC 5802 without channel binding (gs2 header `n,,`), the server's signature checked."""
        client_nonce = secrets.token_urlsafe(18)
        first_bare = f"n={_saslname(username)},r={client_nonce}".encode("utf-8")
        conn.send(_sasl("auth", b"n,," + first_bare, "SCRAM-SHA-1"))
        answer = await conn.next_element()
        if answer.tag != f"{{{NS_SASL}}}challenge":
            return _sasl_verdict(answer)
        server_first = _sasl_payload(answer)
        attrs = _scram_attributes(server_first)
        if "m" in attrs:
            raise ServerAnswerInvalid("SCRAM: the server requires an unknown extension")
        nonce, salt_b64, iterations = attrs.get("r", ""), attrs.get("s", ""), attrs.get("i", "")
        if not nonce.startswith(client_nonce) or len(nonce) == len(client_nonce):
            raise ServerAnswerInvalid("SCRAM: the server's nonce does not extend ours")
        try:
            salt = base64.b64decode(salt_b64, validate=True)
            count = int(iterations)
        except (binascii.Error, ValueError):
            raise ServerAnswerInvalid("SCRAM: malformed salt or iteration count") from None
        digits = iterations.isascii() and iterations.isdigit()
        if not salt or not digits or not 1 <= count <= MAX_SCRAM_ITERATIONS:
            raise ServerAnswerInvalid(f"SCRAM: unusable salt or iteration count ({iterations})")
        # Hi() is CPU work of a few ms: off the event loop (hashlib releases the GIL).
        salted = await asyncio.to_thread(hashlib.pbkdf2_hmac, "sha1", password, salt, count)
        client_key = hmac.digest(salted, b"Client Key", "sha1")
        stored_key = hashlib.sha1(client_key).digest()
        final_bare = f"c=biws,r={nonce}".encode("ascii")  # biws = base64("n,,")
        auth_message = first_bare + b"," + server_first + b"," + final_bare
        signature = hmac.digest(stored_key, auth_message, "sha1")
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        conn.send(_sasl("response", final_bare + b",p=" + base64.b64encode(proof)))
        server_key = hmac.digest(salted, b"Server Key", "sha1")
        expected = base64.b64encode(hmac.digest(server_key, auth_message, "sha1")).decode("ascii")
        answer = await conn.next_element()
        if answer.tag == f"{{{NS_SASL}}}challenge":
            # Server-final as a challenge (RFC 6120 section 6.3.10 allows it): answer empty.
            self._check_server_final(_sasl_payload(answer), expected)
            conn.send(_sasl("response"))
            answer = await conn.next_element()
            if answer.tag == f"{{{NS_SASL}}}success":
                return True
            return _sasl_verdict(answer)
        if answer.tag == f"{{{NS_SASL}}}success":
            self._check_server_final(_sasl_payload(answer), expected)
            return True
        return _sasl_verdict(answer)

    @staticmethod
    def _check_server_final(message: bytes, expected: str) -> None:
        """The server proves it knows the password too (RFC 5802 section 3)."""
        attrs = _scram_attributes(message) if message else {}
        if "e" in attrs:
            raise ServerAnswerInvalid(f"SCRAM: the server reports {attrs['e']!r} with its success")
        if not hmac.compare_digest(attrs.get("v", "").encode("ascii", "replace"), expected.encode("ascii")):
            raise ServerAnswerInvalid("SCRAM: the server's signature does not match (not the real server?)")
