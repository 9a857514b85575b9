"""The SASL login check (component/login.py) against a tiny fake XMPP server on loopback.

The fake server speaks just enough c2s (stream header, features, STARTTLS with the
test CA's certificate, SASL PLAIN and SCRAM-SHA-1 checked for real) to drive the
edge cases a real Prosody never shows: malformed XML, huge stanzas, silence,
forged signatures, plaintext injected after STARTTLS. The checks against the real
Prosody are the end-to-end tests (tests/e2e).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import hmac
import logging
import re
import socket
import ssl
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

import component.login
from component.errors import ServiceUnavailable
from component.login import MAX_READ_BYTES, XmppPasswordVerifier
from component.model import BareJid

TLS = Path(__file__).resolve().parents[1] / "data" / "tls"
CA_FILE = str(TLS / "ca.pem")
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
ALICE = BareJid("alice@example.test")
PASSWORD = "s3cret pässword"
SALT = b"fake-server-salt"
ITERATIONS = 4096

HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client'"
    " xmlns:stream='http://etherx.jabber.org/streams' from='example.test' id='s1' version='1.0'>"
)


def features(*mechanisms: str, starttls: bool = False) -> str:
    tls = f"<starttls xmlns='{NS_TLS}'/>" if starttls else ""
    mechs = "".join(f"<mechanism>{m}</mechanism>" for m in mechanisms)
    return f"<stream:features>{tls}<mechanisms xmlns='{NS_SASL}'>{mechs}</mechanisms></stream:features>"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Peer:
    """The fake server's side of one client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buffer = b""
        self.received = b""  # everything the client sent

    async def expect(self, marker: bytes) -> bytes:
        """Read until `marker`; returns the bytes up to and including it."""
        while marker not in self.buffer:
            chunk = await self.reader.read(4096)
            if not chunk:
                raise ConnectionError(f"client closed before sending {marker!r}")
            self.buffer += chunk
            self.received += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head + marker

    async def expect_element(self, name: str) -> tuple[dict[str, str], str]:
        """The client's next `<name .../>` or `<name ...>text</name>`: (attributes, text)."""
        while True:
            match = re.search(rf"<{name}\b([^>]*?)(/>|>(.*?)</{name}>)".encode(), self.buffer, re.S)
            if match:
                self.buffer = self.buffer[match.end():]
                found = re.findall(r"""([\w:]+)=(?:'([^']*)'|"([^"]*)")""", match.group(1).decode())
                attrs = {key: single or double for key, single, double in found}
                return attrs, (match.group(3) or b"").decode()
            chunk = await self.reader.read(4096)
            if not chunk:
                raise ConnectionError(f"client closed before sending <{name}>")
            self.buffer += chunk
            self.received += chunk

    def send(self, text: str | bytes) -> None:
        self.writer.write(text.encode() if isinstance(text, str) else text)

    async def open_stream(self, feature_xml: str) -> None:
        await self.expect(b"version='1.0'>")
        self.send(HEADER + feature_xml)

    async def starttls(self) -> None:
        await self.expect_element("starttls")
        self.send(f"<proceed xmlns='{NS_TLS}'/>")
        await self.writer.drain()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(TLS / "example.test.crt", TLS / "example.test.key")
        await self.writer.start_tls(context)

    async def until_closed(self) -> None:
        """Read whatever the client still sends, until it hangs up."""
        while chunk := await self.reader.read(4096):
            self.received += chunk


Script = Callable[[Peer], Awaitable[None]]


class FakeServer:
    def __init__(self) -> None:
        self.port = 0
        self.script: Script | None = None
        self.peers: list[Peer] = []
        self.connected = 0
        self.most_connected = 0
        self.errors: list[BaseException] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer)
        self.peers.append(peer)
        self.connected += 1
        self.most_connected = max(self.most_connected, self.connected)
        try:
            assert self.script is not None
            await self.script(peer)
            await peer.until_closed()
        except (ConnectionError, ssl.SSLError):
            pass  # the client hung up: what several tests want
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)
        finally:
            self.connected -= 1
            writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    fake = FakeServer()
    await fake.start()
    yield fake
    await fake.stop()
    assert not fake.errors, fake.errors


def verifier(server: FakeServer, plaintext: bool = True, timeout_s: float = 10.0, **kw) -> XmppPasswordVerifier:
    return XmppPasswordVerifier("127.0.0.1", server.port, plaintext, timeout_s, **kw)


# ---- a real SCRAM-SHA-1 server side (RFC 5802) ------------------------------------------


def scram_keys(password: str) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha1", password.encode(), SALT, ITERATIONS)
    stored = hashlib.sha1(hmac.digest(salted, b"Client Key", "sha1")).digest()
    return stored, hmac.digest(salted, b"Server Key", "sha1")


async def scram_exchange(peer: Peer, password: str, forge_signature: bool = False,
                         final_as_challenge: bool = False) -> str:
    """Run SCRAM-SHA-1 with the client; answers success or failure. Returns the username."""
    attrs, text = await peer.expect_element("auth")
    assert attrs["mechanism"] == "SCRAM-SHA-1"
    client_first = base64.b64decode(text).decode()
    assert client_first.startswith("n,,"), client_first
    bare = client_first[3:]
    fields = dict(part.split("=", 1) for part in bare.split(","))
    nonce = fields["r"] + "server-nonce"
    server_first = f"r={nonce},s={b64(SALT)},i={ITERATIONS}"
    peer.send(f"<challenge xmlns='{NS_SASL}'>{b64(server_first.encode())}</challenge>")
    _, text = await peer.expect_element("response")
    client_final = base64.b64decode(text).decode()
    without_proof, _, proof = client_final.rpartition(",p=")
    assert without_proof == f"c=biws,r={nonce}"
    auth_message = f"{bare},{server_first},{without_proof}".encode()
    stored, server_key = scram_keys(password)
    signature = hmac.digest(stored, auth_message, "sha1")
    client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature))
    if hashlib.sha1(client_key).digest() != stored:
        peer.send(f"<failure xmlns='{NS_SASL}'><not-authorized/></failure>")
        return fields["n"]
    verifier = hmac.digest(server_key, auth_message, "sha1")
    if forge_signature:
        verifier = bytes(20)
    final = b64(f"v={b64(verifier)}".encode())
    if final_as_challenge:
        peer.send(f"<challenge xmlns='{NS_SASL}'>{final}</challenge>")
        await peer.expect_element("response")
        peer.send(f"<success xmlns='{NS_SASL}'/>")
    else:
        peer.send(f"<success xmlns='{NS_SASL}'>{final}</success>")
    return fields["n"]


async def close_after_success(peer: Peer) -> None:
    """After <success/> the client opens a new stream (RFC 6120 6.4.6) and closes it."""
    await peer.open_stream(features())
    await close_after_failure(peer)


async def close_after_failure(peer: Peer) -> None:
    await peer.expect(b"</stream:stream>")
    peer.send("</stream:stream>")


# ---- verdicts ----------------------------------------------------------------------------


async def test_scram_is_preferred_and_the_right_password_is_accepted(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def script(peer: Peer) -> None:
        await peer.open_stream(features("PLAIN", "SCRAM-SHA-1"))
        await scram_exchange(peer, PASSWORD)
        await close_after_success(peer)

    server.script = script
    caplog.set_level(logging.DEBUG)
    assert await verifier(server).verify(ALICE, PASSWORD) is True
    sent = server.peers[0].received
    # No resource binding, no session, no roster: only the SASL exchange and the close.
    assert b"<iq" not in sent and b"bind" not in sent
    assert sent.endswith(b"</stream:stream>")
    assert PASSWORD not in caplog.text


async def test_scram_with_a_wrong_password_is_refused(server: FakeServer) -> None:
    async def script(peer: Peer) -> None:
        await peer.open_stream(features("SCRAM-SHA-1"))
        await scram_exchange(peer, "the real password")
        await close_after_failure(peer)

    server.script = script
    assert await verifier(server).verify(ALICE, PASSWORD) is False


async def test_scram_server_final_sent_as_a_challenge_is_accepted(server: FakeServer) -> None:
    async def script(peer: Peer) -> None:
        await peer.open_stream(features("SCRAM-SHA-1"))
        await scram_exchange(peer, PASSWORD, final_as_challenge=True)
        await close_after_success(peer)

    server.script = script
    assert await verifier(server).verify(ALICE, PASSWORD) is True


async def test_scram_escapes_the_username(server: FakeServer) -> None:
    names: list[str] = []

    async def script(peer: Peer) -> None:
        await peer.open_stream(features("SCRAM-SHA-1"))
        names.append(await scram_exchange(peer, PASSWORD))
        await close_after_success(peer)

    server.script = script
    assert await verifier(server).verify(BareJid("a=b,c@example.test"), PASSWORD) is True
    assert names == ["a=3Db=2Cc"]


async def test_a_success_without_the_servers_proof_is_not_a_login(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that does not know the password (an impostor) cannot let anyone in."""

    async def script(peer: Peer) -> None:
        await peer.open_stream(features("SCRAM-SHA-1"))
        await scram_exchange(peer, PASSWORD, forge_signature=True)

    server.script = script
    with pytest.raises(ServiceUnavailable):
        await verifier(server).verify(ALICE, PASSWORD)
    assert "signature does not match" in caplog.text


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        (f"<success xmlns='{NS_SASL}'/>", True),
        (f"<failure xmlns='{NS_SASL}'><not-authorized/><text>bad</text></failure>", False),
        (f"<failure xmlns='{NS_SASL}'><account-disabled/></failure>", False),
    ],
)
async def test_plain_answers_are_the_servers_verdict(server: FakeServer, answer: str, verdict: bool) -> None:
    payloads: list[bytes] = []

    async def script(peer: Peer) -> None:
        await peer.open_stream(features("PLAIN"))
        attrs, text = await peer.expect_element("auth")
        assert attrs["mechanism"] == "PLAIN"
        payloads.append(base64.b64decode(text))
        peer.send(answer)
        await (close_after_success if verdict else close_after_failure)(peer)

    server.script = script
    assert await verifier(server).verify(ALICE, PASSWORD) is verdict
    assert payloads == [b"\0alice\0" + PASSWORD.encode()]


async def test_a_temporary_failure_is_service_unavailable(server: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    async def script(peer: Peer) -> None:
        await peer.open_stream(features("PLAIN"))
        await peer.expect_element("auth")
        peer.send(f"<failure xmlns='{NS_SASL}'><temporary-auth-failure/></failure>")

    server.script = script
    with pytest.raises(ServiceUnavailable):
        await verifier(server).verify(ALICE, PASSWORD)
    assert "SASL failure temporary-auth-failure" in caplog.text


async def test_a_password_no_account_can_have_is_refused_without_asking(server: FakeServer) -> None:
    server.script = lambda peer: peer.open_stream(features("PLAIN"))
    assert await verifier(server).verify(ALICE, "bell\x07") is False
    assert server.peers == []


# ---- TLS ---------------------------------------------------------------------------------


async def test_starttls_with_a_verified_certificate_then_plain(server: FakeServer) -> None:
    async def script(peer: Peer) -> None:
        await peer.open_stream(features(starttls=True))
        await peer.starttls()
        await peer.open_stream(features("PLAIN"))
        attrs, text = await peer.expect_element("auth")
        assert base64.b64decode(text) == b"\0alice\0" + PASSWORD.encode()
        peer.send(f"<success xmlns='{NS_SASL}'/>")
        await close_after_success(peer)

    server.script = script
    assert await verifier(server, plaintext=False, ca_file=CA_FILE).verify(ALICE, PASSWORD) is True


@pytest.mark.parametrize(
    ("jid", "ca_file", "reason"),
    [
        (ALICE, "", "certificate verify failed"),  # the system's trust store does not know the test CA
        (BareJid("alice@wrong.test"), CA_FILE, "certificate verify failed"),  # not the JID's domain
    ],
)
async def test_a_certificate_that_does_not_verify_ends_the_check(
    server: FakeServer, caplog: pytest.LogCaptureFixture, jid: BareJid, ca_file: str, reason: str
) -> None:
    async def script(peer: Peer) -> None:
        await peer.open_stream(features(starttls=True))
        await peer.starttls()
        await peer.open_stream(features("PLAIN"))
        await peer.expect_element("auth")
        raise AssertionError("credentials sent over an unverified connection")

    server.script = script
    with pytest.raises(ServiceUnavailable):
        await verifier(server, plaintext=False, ca_file=ca_file).verify(jid, PASSWORD)
    assert reason in caplog.text
    assert b"\0alice\0" not in server.peers[0].received


async def test_without_starttls_nothing_is_sent_in_plaintext(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.script = lambda peer: peer.open_stream(features("PLAIN", "SCRAM-SHA-1"))
    with pytest.raises(ServiceUnavailable):
        await verifier(server, plaintext=False, ca_file=CA_FILE).verify(ALICE, PASSWORD)
    assert "does not offer STARTTLS" in caplog.text
    assert b"<auth" not in server.peers[0].received


@pytest.mark.parametrize(
    "injected",
    [
        HEADER.removeprefix("<?xml version='1.0'?>") + features("PLAIN"),  # a whole new stream, unfinished
        f"<success xmlns='{NS_SASL}'/>",  # a complete element
    ],
)
async def test_plaintext_injected_after_proceed_is_refused(
    server: FakeServer, caplog: pytest.LogCaptureFixture, injected: str
) -> None:
    """RFC 6120 section 5.4.3.3: nothing sent before TLS may be read as if after it."""

    async def script(peer: Peer) -> None:
        await peer.open_stream(features(starttls=True))
        await peer.expect_element("starttls")
        peer.send(f"<proceed xmlns='{NS_TLS}'/>" + injected)

    server.script = script
    with pytest.raises(ServiceUnavailable):
        await verifier(server, plaintext=False, ca_file=CA_FILE).verify(ALICE, PASSWORD)
    assert "sent more after <proceed/>" in caplog.text
    assert b"<auth" not in server.peers[0].received


# ---- servers that answer nonsense or nothing ---------------------------------------------


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        (HEADER + "<stream:features><mechanisms", None),  # then silence: the timeout
        (HEADER + "<stream:features></mechanisms>", "malformed XML"),
        ("<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaa'>]><stream:stream/>", "DTDForbidden"),
        (HEADER + "<stream:features>&a;</stream:features>", "malformed XML"),
        ("<html><body>Hello</body></html>", "not a stream header"),
        (HEADER.replace(" version='1.0'>", ">"), "stream version 0.9"),
        (HEADER + "<message/>", "instead of stream features"),
        (HEADER + "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
         "stream error host-unknown"),
        (HEADER + features("DIGEST-MD5"), "neither SCRAM-SHA-1 nor PLAIN (DIGEST-MD5)"),
        (HEADER + "<stream:features>" + "<x>" + "y" * MAX_READ_BYTES + "</x></stream:features>",
         f"more than {MAX_READ_BYTES} bytes"),
    ],
)
async def test_nonsense_from_the_server_is_service_unavailable(
    server: FakeServer, caplog: pytest.LogCaptureFixture, sent: str, reason: str | None
) -> None:
    async def script(peer: Peer) -> None:
        await peer.expect(b"version='1.0'>")
        peer.send(sent)

    server.script = script
    with pytest.raises(ServiceUnavailable):
        await verifier(server, timeout_s=0.5).verify(ALICE, PASSWORD)
    assert (reason or "no verdict within 0.5 s") in caplog.text
    assert PASSWORD not in caplog.text


async def test_a_server_that_never_answers(server: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    server.script = lambda peer: peer.until_closed()
    with pytest.raises(ServiceUnavailable):
        await verifier(server, timeout_s=0.3).verify(ALICE, PASSWORD)
    assert "no verdict within 0.3 s" in caplog.text


async def test_a_server_that_hangs_up(server: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    async def script(peer: Peer) -> None:
        await peer.open_stream(features("PLAIN"))
        await peer.expect_element("auth")
        peer.writer.close()

    server.script = script
    with pytest.raises(ServiceUnavailable):
        await verifier(server).verify(ALICE, PASSWORD)
    assert "closed the connection" in caplog.text


async def test_nothing_listening(caplog: pytest.LogCaptureFixture) -> None:
    check = XmppPasswordVerifier("127.0.0.1", free_port(), True, 5.0)
    with pytest.raises(ServiceUnavailable):
        await check.verify(ALICE, PASSWORD)
    assert "unreachable" in caplog.text


async def test_at_most_max_concurrent_checks_at_once(server: FakeServer) -> None:
    release = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.open_stream(features("PLAIN"))
        await peer.expect_element("auth")
        await release.wait()
        peer.send(f"<success xmlns='{NS_SASL}'/>")
        await close_after_success(peer)

    server.script = script
    check = verifier(server, max_concurrent=2)
    checks = [asyncio.create_task(check.verify(ALICE, PASSWORD)) for _ in range(5)]
    while server.connected < 2:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # time for more connections, were they allowed
    release.set()
    assert await asyncio.gather(*checks) == [True] * 5
    assert server.most_connected == 2


# ---- memory ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["scram success", "scram failure", "starttls then plain", "server hangs up"])
async def test_every_parser_is_freed_without_the_cyclic_gc(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """The pure-Python XMLParser and its expat parser refer to each other: one merely
    dropped waits, with expat's buffers, for a full collection of the cyclic GC (under
    32 concurrent checks ~10 MB of RSS)."""
    made: list[weakref.ref] = []

    class Tracked(component.login.DefusedXMLParser):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(weakref.ref(self))

    monkeypatch.setattr(component.login, "DefusedXMLParser", Tracked)

    async def script(peer: Peer) -> None:
        if case == "starttls then plain":
            await peer.open_stream(features(starttls=True))
            await peer.starttls()
            await peer.open_stream(features("PLAIN"))
            await peer.expect_element("auth")
            peer.send(f"<success xmlns='{NS_SASL}'/>")
            await close_after_success(peer)
            return
        await peer.open_stream(features("SCRAM-SHA-1"))
        if case == "server hangs up":
            await peer.expect_element("auth")
            return
        await scram_exchange(peer, PASSWORD if case == "scram success" else "the real password")
        await (close_after_success if case == "scram success" else close_after_failure)(peer)

    server.script = script
    check = verifier(server, plaintext=case != "starttls then plain", ca_file=CA_FILE)
    gc.collect()
    gc.disable()
    try:
        if case == "server hangs up":
            with pytest.raises(ServiceUnavailable):
                await check.verify(ALICE, PASSWORD)
        else:
            assert await check.verify(ALICE, PASSWORD) is (case != "scram failure")
        await asyncio.sleep(0)  # the transport's connection_lost
        assert made and [ref() for ref in made] == [None] * len(made)
    finally:
        gc.enable()
