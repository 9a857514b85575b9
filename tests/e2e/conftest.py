"""End-to-end fixtures: a real Prosody (and a real ejabberd) on loopback, the real
service, real clients.

Nothing here stands in for the XMPP server or the database. Ports are chosen
free at run time; every server a fixture starts, it stops.

- `xmpp_server` (function): the server a test runs against: the shared Prosody, or,
  for a test marked `@both_servers`, each of the shared Prosody and the shared ejabberd
  in turn (one test, two runs: `[prosody]`, `[ejabberd]`). The fixtures below that
  take a server (`service`, `xmpp_users`, `ensure_server_up`, `clean_rosters`) take
  this one. Against ejabberd the service runs with `[roster] backend = "ejabberd_api"`.
- `ejabberd` (session): Debian's ejabberd 23.01 as a private node
  (scripts/local_ejabberd.py): config, spool and logs in a temp folder, c2s,
  component and mod_http_api listeners on free loopback ports, its own node name and
  distribution port (no epmd), the same users; stopped at the end of the session.

- `prosody` (session): a throwaway Prosody 0.12 with mod_privilege granting the
  component roster "both" and presence "managed_entity"; users alice, bob, carol and
  dave of example.test, and erin of a second domain, other.test (see `PASSWORDS`).
  Every user's roster is emptied after each test (`clean_rosters`): the service
  treats items it did not create as the users' own, so nothing may leak between tests.
- `unprivileged_prosody`, `tls_prosody` (function): a Prosody of the test's own that grants
  the component nothing, or that offers STARTTLS with a certificate of the test CA
  (`TEST_CA_FILE`, tests/data/tls).
- `service` (function): `component.__main__.Service` run in-process on the
  test's event loop, with a fresh SQLite file; ready once /healthz says
  connected with the roster privilege granted.
- `alice`, `bob`, `carol`, `dave` (function): connected slixmpp clients that
  fetched their roster, sent initial presence, and collect management messages
  and roster pushes (`XmppUser`).
- `api` (function): an aiohttp client on the service's REST bridge (`RestApi`);
  `RestApi.kazoo` calls the Kazoo paths with `X-Auth-Token` (the admin token by default).
- `XmppUser` also collects the presence it receives from extensions
  (`{extension}@presence.example.test`, family 2) as `ExtensionPresence`, and the
  `<devicesharing/>` management messages of family 3 as `SharingMessage`.
- `smtp_server` (function): a real SMTP server (aiosmtpd) on a free loopback port,
  collecting every mail it accepts (`SmtpSink`).
- `AdjustableClock`: real time plus an offset a test moves forward; pass it to
  `make_service(..., clock=...)` to test expiry without sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import io
import json
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import slixmpp
from aiosmtpd.controller import Controller
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from local_ejabberd import LocalEjabberd, ensure_ejabberd_installed  # noqa: E402
from local_prosody import LocalProsody, ensure_prosody_installed, free_port  # noqa: E402

from component.__main__ import Service  # noqa: E402
from component.clock import Clock  # noqa: E402
from component.config import parse_config  # noqa: E402

DOMAIN = "example.test"
# A second VirtualHost of the same Prosody, served only by tests that say so.
OTHER_DOMAIN = "other.test"
COMPONENT = "presence.example.test"
SECRET = "e2e-component-secret"
PASSWORDS = {
    "alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw",
    "strasse": "strasse-pw",  # logs in as Straße too (nodeprep folds ß to ss)
    "erin": "erin-pw",
}
# Users of OTHER_DOMAIN; every other name is of DOMAIN.
OTHER_USERS = frozenset({"erin"})
ADMIN_TOKEN = "e2e-admin-token"

NS_CONF = "jabber:iq:configuration"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_ROSTER = "jabber:iq:roster"
NS_DELAY = "urn:xmpp:delay"
NS_PRESENCE_STATE = "urn:xmpp:presence-consent:0"
NS_SHARE = "urn:xmpp:presence-consent:share:0"

# Generous: these bound waits on a loaded CI machine, they never measure speed.
TIMEOUT = 20.0

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def jid(name: str) -> str:
    return f"{name}@{OTHER_DOMAIN if name in OTHER_USERS else DOMAIN}"


# ---- Prosody --------------------------------------------------------------------------


# A test CA and a certificate it signed for example.test and other.test (tests/data/tls).
TLS_DATA = Path(__file__).resolve().parents[1] / "data" / "tls"
TEST_CA_FILE = TLS_DATA / "ca.pem"


def _start_with_users(server, workdir: Path):
    """Register the test users on `server` and start it; on failure nothing is left."""
    try:
        for name, password in PASSWORDS.items():
            server.register(name, password, jid(name).partition("@")[2])
        server.start()
    except BaseException:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return server, workdir


def _running(server, workdir: Path):
    """Yield the started `server`; stop it and remove its folder afterwards."""
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def start_prosody(grant_roster: bool = True, tls: bool = False) -> tuple[LocalProsody, Path]:
    """A started LocalProsody with the four users, in its own folder under /tmp; with
    `tls`, it offers STARTTLS with a certificate of the test CA (`TEST_CA_FILE`).

    The folder is made with `tempfile` rather than pytest's tmp_path: prosodyctl
    drops to the `prosody` user, which cannot traverse pytest's 0700 base folder.
    """
    ensure_prosody_installed()
    workdir = Path(tempfile.mkdtemp(prefix="e2e-prosody-"))
    server = LocalProsody(
        workdir,
        domain=DOMAIN,
        component_jid=COMPONENT,
        component_secret=SECRET,
        c2s_port=free_port(),
        component_port=free_port(),
        grant_roster=grant_roster,
        extra_domains=(OTHER_DOMAIN,),
        certificate=(TLS_DATA / "example.test.crt", TLS_DATA / "example.test.key") if tls else None,
    )
    return _start_with_users(server, workdir)


@pytest.fixture(scope="session")
def prosody() -> Iterator[LocalProsody]:
    yield from _running(*start_prosody())


# ---- ejabberd, and the choice of server ---------------------------------------------------

# Either server: both have c2s_port, component_port, start(), stop(), is_running(), register().
XmppServer = LocalProsody | LocalEjabberd
SERVERS = ("prosody", "ejabberd")
# The core scenarios run against each server: `@both_servers` on the test.
both_servers = pytest.mark.parametrize("xmpp_server", SERVERS, indirect=True)


def start_ejabberd() -> tuple[LocalEjabberd, Path]:
    """A started LocalEjabberd with the same users as `start_prosody`, in its own folder."""
    ensure_ejabberd_installed()
    workdir = Path(tempfile.mkdtemp(prefix="e2e-ejabberd-"))
    server = LocalEjabberd(
        workdir / "node",
        domain=DOMAIN,
        component_jid=COMPONENT,
        component_secret=SECRET,
        extra_domains=(OTHER_DOMAIN,),
    )
    return _start_with_users(server, workdir)


@pytest.fixture(scope="session")
def ejabberd() -> Iterator[LocalEjabberd]:
    yield from _running(*start_ejabberd())


@pytest.fixture
def xmpp_server(request: pytest.FixtureRequest) -> XmppServer:
    """The shared Prosody, or the server `@both_servers` names for this run."""
    return request.getfixturevalue(getattr(request, "param", "prosody"))


@pytest.fixture
def unprivileged_prosody() -> Iterator[LocalProsody]:
    """A Prosody of its own whose component gets no privilege (privileged_entities omitted)."""
    server, workdir = start_prosody(grant_roster=False)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def tls_prosody() -> Iterator[LocalProsody]:
    """A Prosody of its own that offers STARTTLS (certificate of the test CA)."""
    server, workdir = start_prosody(tls=True)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(autouse=True)
async def clean_rosters(xmpp_server: XmppServer) -> AsyncIterator[None]:
    """Leave every roster of the shared Prosody empty after each test.

    Autouse, so set up first and torn down last: after the test's services and
    clients. The service keeps what users had in their rosters (DESIGN "Rosters
    belong to their users"), so an item left by one test would be the user's own in
    the next. The cleanup sessions send no initial presence: they probe nothing and
    no service sees them come online.
    """
    yield
    if not xmpp_server.is_running():
        return
    for name in PASSWORDS:
        user = XmppUser(name, xmpp_server, resource="cleanup")
        await user.connect(available=False)
        try:
            for contact in await user.roster():
                await user.remove_contact(contact)
        finally:
            await user.disconnect()


@pytest.fixture
def ensure_server_up(xmpp_server: XmppServer) -> XmppServer:
    """A test that stops the shared server must not leave it down for the next one."""
    if not xmpp_server.is_running():
        xmpp_server.start()
    return xmpp_server


@pytest.fixture
def ensure_prosody_up(ensure_server_up: XmppServer) -> XmppServer:
    """`ensure_server_up`, by the name of the tests that run on Prosody only."""
    return ensure_server_up


# ---- the service ----------------------------------------------------------------------


def service_config(
    server: XmppServer, db_path: Path, http_port: int, auth: dict[str, Any] | None = None, **component: Any
) -> dict[str, Any]:
    """The raw config (TOML-shaped) of a service attached to `server`; `auth` adds [auth] keys.
    On ejabberd (23.01) rosters go through its HTTP API: `[roster] backend = "ejabberd_api"`."""
    roster = (
        {"roster": {"backend": "ejabberd_api", "ejabberd_api_url": server.api_url}}
        if isinstance(server, LocalEjabberd) else {}
    )
    return roster | {
        "component": {
            "jid": COMPONENT,
            "secret": SECRET,
            "server_host": "127.0.0.1",
            "server_port": server.component_port,
            # Short backoff so reconnection tests wait seconds, not half a minute.
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
            **component,
        },
        "http": {"host": "127.0.0.1", "port": http_port},
        "storage": {"path": str(db_path)},
        "auth": {
            "admin_token": ADMIN_TOKEN,
            "c2s_host": "127.0.0.1",
            "c2s_port": server.c2s_port,
            "c2s_allow_plaintext": True,
            **(auth or {}),
        },
    }


async def wait_for_health(
    base_url: str, want: Callable[[int, dict[str, Any]], bool], timeout: float = TIMEOUT
) -> tuple[int, dict[str, Any]]:
    """Poll /healthz until `want(status, body)`; returns the last answer. Fails on timeout."""
    last: tuple[int, Any] = (0, None)
    async with aiohttp.ClientSession() as http:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        async with http.get(f"{base_url}/healthz") as resp:
                            last = (resp.status, await resp.json())
                        if want(*last):
                            return last
                    except (aiohttp.ClientError, ValueError):
                        pass
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"/healthz never matched within {timeout} s; last answer {last}") from None


HEALTH_KEYS = {
    "xmpp", "storage", "roster", "outbox_pending", "outbox_oldest_age_s", "mail_pending", "dead_letters",
}


def healthy(roster: str = "granted") -> Callable[[int, dict[str, Any]], bool]:
    expected = {"xmpp": "connected", "storage": "ok", "roster": roster}
    return lambda status, body: (
        status == 200 and set(body) == HEALTH_KEYS and {k: body[k] for k in expected} == expected
    )


@dataclass
class RunningService:
    service: Service
    base_url: str
    db_path: Path

    @property
    def db(self):
        return self.service.db


ServiceFactory = Callable[..., Awaitable[RunningService]]


@pytest.fixture
async def make_service(tmp_path: Path, xmpp_users) -> AsyncIterator[ServiceFactory]:
    """Start `Service` in-process against a given Prosody; stopped at teardown.

    It depends on `xmpp_users` so that services stop *before* the clients
    disconnect: whatever a service sent reaches a live client, and nothing from
    this test lands in Prosody's offline store for the next one.
    """
    started: list[Service] = []

    async def make(
        server: XmppServer,
        roster: str = "granted",
        auth: dict[str, Any] | None = None,
        sections: dict[str, dict[str, Any]] | None = None,
        clock: Clock | None = None,
        **component: Any,
    ) -> RunningService:
        """`sections` adds whole config sections ([smtp], [sharing], ...); `clock` is injected."""
        port = free_port()
        db_path = tmp_path / f"presence-{len(started)}.sqlite3"
        config = parse_config(service_config(server, db_path, port, auth, **component) | (sections or {}))
        service = Service(config, clock)
        started.append(service)
        await service.start()
        base_url = f"http://127.0.0.1:{port}"
        await wait_for_health(base_url, healthy(roster))
        return RunningService(service, base_url, db_path)

    yield make
    for service in reversed(started):
        await stop_service(service)


# Service.stop()'s parts are bounded (the stream's close 2 s, then abort; aiohttp's shutdown
# 60 s per connection): past this, it is stuck.
STOP_TIMEOUT = 90.0


async def stop_service(service: Service) -> None:
    """`service.stop()`, failing with the stack of every task still pending when it does not
    end within STOP_TIMEOUT (pytest-timeout, later, would show only the idle event loop)."""
    stopping = asyncio.ensure_future(service.stop())
    done, _ = await asyncio.wait({stopping}, timeout=STOP_TIMEOUT)
    if done:
        stopping.result()
        return
    report = io.StringIO()
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            print(task, file=report)
            task.print_stack(file=report)
    stopping.cancel()
    pytest.fail(f"Service.stop() did not end within {STOP_TIMEOUT:.0f} s; the pending tasks:\n{report.getvalue()}")


@pytest.fixture
async def service(make_service: ServiceFactory, ensure_server_up: XmppServer) -> RunningService:
    return await make_service(ensure_server_up)


class AdjustableClock(Clock):
    """Real time plus an offset that only the test moves (forward): expiry without sleeping."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return super().now_ms() + self.offset_ms

    def advance(self, ms: int) -> None:
        self.offset_ms += ms


# ---- SMTP ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedMail:
    """One mail as the SMTP server accepted it."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes  # the DATA, as sent

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.content, policy=email.policy.default)  # type: ignore[return-value]


class SmtpSink:
    """aiosmtpd handler: every accepted mail goes to `received` on the test's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.received: asyncio.Queue[ReceivedMail] = asyncio.Queue()
        self.port = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
        # aiosmtpd runs its own loop in a thread.
        self.loop.call_soon_threadsafe(self.received.put_nowait, mail)
        return "250 Message accepted for delivery"

    async def next_mail(self) -> ReceivedMail:
        async with asyncio.timeout(TIMEOUT):
            return await self.received.get()


@pytest.fixture
async def smtp_server() -> AsyncIterator[SmtpSink]:
    """A real SMTP server on a free 127.0.0.1 port; stopped at teardown."""
    sink = SmtpSink(asyncio.get_running_loop())
    sink.port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    await asyncio.to_thread(controller.start)
    try:
        yield sink
    finally:
        await asyncio.to_thread(controller.stop)


# ---- XMPP clients ---------------------------------------------------------------------


@dataclass(frozen=True)
class Management:
    """One `<message type='management'/>` as a client saw it, recognised by its
    `<presencehandshake/>` child: ejabberd rewrites the type to `normal` (the type on
    the wire is asserted in the stanza tier)."""

    sender: str  # the message's from (bare)
    type: str | None = field(compare=False)  # the message's type attribute, as the server left it
    handshake: dict[str, str]  # the <presencehandshake/> attributes
    body: str | None = field(default=None, compare=False)  # the readable text, if any


@dataclass(frozen=True)
class SharingMessage:
    """One `<message type='management'/>` carrying `<devicesharing/>` (family 3),
    recognised by that child (the type is not compared: ejabberd makes it `normal`)."""

    sender: str  # the message's from (bare)
    type: str | None = field(compare=False)  # the message's type attribute, as the server left it
    attrs: dict[str, str]  # the <devicesharing/> attributes
    body: str | None = field(default=None, compare=False)  # the readable text, if any


@dataclass(frozen=True)
class ExtensionPresence:
    """One presence stanza from `{extension}@{component}` as a client saw it (family 2)."""

    sender: str  # the stanza's from, e.g. '*3101@presence.example.test'
    type: str | None = None  # None for available presence
    show: str | None = None
    status: str | None = None
    state: str | None = None  # <dialog state=.../> in NS_PRESENCE_STATE
    sequence: str | None = None  # <dialog sequence=.../>


class XmppUser:
    """A real XMPP client (slixmpp) logged in to Prosody with plaintext SASL on loopback."""

    def __init__(self, name: str, server: XmppServer, resource: str = "e2e") -> None:
        self.name = name
        self.jid = jid(name)
        self.server = server
        self.resource = resource
        self.client: slixmpp.ClientXMPP | None = None
        self.management: asyncio.Queue[Management] = asyncio.Queue()
        self.offline: list[Management] = []
        self.sharing: asyncio.Queue[SharingMessage] = asyncio.Queue()
        self.offline_sharing: list[SharingMessage] = []
        self.roster_pushes: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        # Kept across reconnects: a probe answer arrives right after the login.
        self.extension_presence: asyncio.Queue[ExtensionPresence] = asyncio.Queue()
        # Presence from other users (full JID, type, show), e.g. a watched contact's.
        self.contact_presence: asyncio.Queue[tuple[str, str | None, str | None]] = asyncio.Queue()
        # Ordinary messages from the service or an extension (the help reply, errors).
        self.service_messages: asyncio.Queue[slixmpp.Message] = asyncio.Queue()

    async def connect(self, available: bool = True) -> XmppUser:
        """Log in and fetch the roster; with `available`, also send initial presence
        (which makes Prosody probe every contact the account is subscribed to)."""
        client = slixmpp.ClientXMPP(f"{self.jid}/{self.resource}", PASSWORDS[self.name])
        client.enable_starttls = False
        client.enable_direct_tls = False
        client.enable_plaintext = True
        client.plugin["feature_mechanisms"].unencrypted_plain = True
        client.register_plugin("xep_0030")
        # slixmpp's own client side of ad-hoc commands, ping and version (tests/e2e/test_commands.py).
        for plugin in ("xep_0004", "xep_0050", "xep_0092", "xep_0199"):
            client.register_plugin(plugin)
        # A stock client asks its user before approving a subscription request; slixmpp
        # approves (and subscribes back) by itself unless told not to.
        client.roster.auto_authorize = None
        client.roster.auto_subscribe = False
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def on_session_start(_event: object) -> None:
            try:
                # Prosody pushes roster changes only to resources that fetched the roster.
                await client.get_roster(timeout=TIMEOUT)
                if available:
                    client.send_presence()
            except Exception as exc:  # surfaced to connect()'s caller
                if not ready.done():
                    ready.set_exception(exc)
                return
            if not ready.done():
                ready.set_result(None)

        def on_failure(event: object) -> None:
            if not ready.done():
                ready.set_exception(AssertionError(f"{self.jid} could not log in: {event!r}"))

        # A slixmpp client fires no `message` event for type='management': catch it raw.
        client.register_handler(
            Callback(
                "e2e management",
                MatchXPath(f"{{jabber:client}}message/{{{NS_CONF}}}presencehandshake"),
                self._on_management,
            )
        )
        client.register_handler(
            Callback(
                "e2e device sharing",
                MatchXPath(f"{{jabber:client}}message/{{{NS_CONF}}}devicesharing"),
                self._on_sharing,
            )
        )
        client.register_handler(
            Callback("e2e roster push", MatchXPath(f"{{jabber:client}}iq/{{{NS_ROSTER}}}query"), self._on_roster_iq)
        )
        client.register_handler(
            Callback("e2e extension presence", MatchXPath("{jabber:client}presence"), self._on_presence)
        )
        client.add_event_handler("message", self._on_chat)
        client.add_event_handler("message_error", self._on_chat)
        client.add_event_handler("session_start", on_session_start)
        client.add_event_handler("failed_all_auth", on_failure)
        client.add_event_handler("connection_failed", on_failure)
        self.client = client
        client.connect("127.0.0.1", self.server.c2s_port)
        try:
            await asyncio.wait_for(ready, TIMEOUT)
        except BaseException:
            await self.disconnect()
            raise
        return self

    def _on_management(self, msg: slixmpp.Message) -> None:
        child = msg.xml.find(f"{{{NS_CONF}}}presencehandshake")
        seen = Management(msg["from"].bare, msg.xml.get("type"), dict(child.attrib), _body(msg))
        if msg.xml.find(f"{{{NS_DELAY}}}delay") is not None:
            # Stored by Prosody's mod_offline (autoloaded) while this account was
            # offline, e.g. sent in an earlier test: not live traffic of this test.
            self.offline.append(seen)
        else:
            self.management.put_nowait(seen)

    def _on_sharing(self, msg: slixmpp.Message) -> None:
        child = msg.xml.find(f"{{{NS_CONF}}}devicesharing")
        seen = SharingMessage(msg["from"].bare, msg.xml.get("type"), dict(child.attrib), _body(msg))
        if msg.xml.find(f"{{{NS_DELAY}}}delay") is not None:
            self.offline_sharing.append(seen)  # from mod_offline: not this test's traffic
        else:
            self.sharing.put_nowait(seen)

    def _on_chat(self, msg: slixmpp.Message) -> None:
        if msg["from"].domain == COMPONENT and msg.xml.find(f"{{{NS_CONF}}}*") is None:
            self.service_messages.put_nowait(msg)

    def _on_presence(self, pres: slixmpp.Presence) -> None:
        sender = pres["from"]
        if sender.domain != COMPONENT and sender.user and sender.bare != self.jid:
            self.contact_presence.put_nowait(
                (sender.full, pres.xml.get("type"), pres.xml.findtext("{jabber:client}show"))
            )
            return
        if sender.domain != COMPONENT or not sender.user:
            return
        dialog = pres.xml.find(f"{{{NS_PRESENCE_STATE}}}dialog")
        self.extension_presence.put_nowait(
            ExtensionPresence(
                sender.full,
                pres.xml.get("type"),
                pres.xml.findtext("{jabber:client}show"),
                pres.xml.findtext("{jabber:client}status"),
                dialog.get("state") if dialog is not None else None,
                dialog.get("sequence") if dialog is not None else None,
            )
        )

    def _on_roster_iq(self, iq: slixmpp.Iq) -> None:
        if iq["type"] != "set":
            return  # the answer to our own roster get
        for item in iq.xml.iter(f"{{{NS_ROSTER}}}item"):
            self.roster_pushes.put_nowait((item.get("jid"), item.get("subscription", "none")))

    async def disconnect(self) -> None:
        client = self.client
        if client is None:
            return
        self.client = None
        if client.transport is not None:
            try:
                await asyncio.wait_for(client.disconnect(wait=2), 5)
            except (TimeoutError, Exception):
                client.abort()
        client.cancel_connection_attempt()
        task = getattr(client, "_run_out_filters", None)
        if task is not None and not task.done():
            task.cancel()

    async def reconnect(self) -> XmppUser:
        await self.disconnect()
        return await self.connect()

    # -- waiting for what the service sends -------------------------------------------

    async def next_management(self, count: int = 1) -> list[Management]:
        """The next `count` management messages, in arrival order (fails after TIMEOUT)."""
        out = []
        async with asyncio.timeout(TIMEOUT):
            for _ in range(count):
                out.append(await self.management.get())
        return out

    async def next_sharing(self, count: int = 1) -> list[SharingMessage]:
        """The next `count` device-sharing management messages, in arrival order."""
        out = []
        async with asyncio.timeout(TIMEOUT):
            for _ in range(count):
                out.append(await self.sharing.get())
        return out

    async def roster_push_for(self, contact: str, subscription: str) -> list[tuple[str, str]]:
        """Wait for a roster push of `contact` with `subscription`; returns every push seen up to it."""
        seen = []
        async with asyncio.timeout(TIMEOUT):
            while True:
                push = await self.roster_pushes.get()
                seen.append(push)
                if push == (contact, subscription):
                    return seen

    async def next_extension_presence(self, count: int = 1) -> list[ExtensionPresence]:
        """The next `count` presence stanzas from extensions, in arrival order (fails after TIMEOUT)."""
        out = []
        async with asyncio.timeout(TIMEOUT):
            for _ in range(count):
                out.append(await self.extension_presence.get())
        return out

    async def roster(self) -> dict[str, str]:
        """A fresh roster fetch: contact JID -> subscription."""
        assert self.client is not None
        iq = self.client.make_iq_get(queryxmlns=NS_ROSTER)
        result = await iq.send(timeout=TIMEOUT)
        return {
            item.get("jid"): item.get("subscription", "none")
            for item in result.xml.iter(f"{{{NS_ROSTER}}}item")
        }

    async def roster_items(self) -> dict[str, tuple[str, str | None, tuple[str, ...]]]:
        """A fresh roster fetch: contact JID -> (subscription, name, groups)."""
        assert self.client is not None
        iq = self.client.make_iq_get(queryxmlns=NS_ROSTER)
        result = await iq.send(timeout=TIMEOUT)
        return {
            item.get("jid"): (
                item.get("subscription", "none"),
                item.get("name"),
                tuple(sorted(g.text or "" for g in item.iter(f"{{{NS_ROSTER}}}group"))),
            )
            for item in result.xml.iter(f"{{{NS_ROSTER}}}item")
        }

    async def set_contact(self, contact: str, name: str | None = None, groups: tuple[str, ...] = ()) -> None:
        """What a client does when its user names or groups a contact (RFC 6121 2.3)."""
        assert self.client is not None
        iq = self.client.make_iq(itype="set")
        query = ET.SubElement(iq.xml, f"{{{NS_ROSTER}}}query")
        item = ET.SubElement(query, f"{{{NS_ROSTER}}}item", {"jid": contact})
        if name:
            item.set("name", name)
        for group in groups:
            ET.SubElement(item, f"{{{NS_ROSTER}}}group").text = group
        await iq.send(timeout=TIMEOUT)

    def broadcast(self, show: str | None = None) -> None:
        """A presence update to every contact that sees this user (RFC 6121 4.4)."""
        assert self.client is not None
        self.client.make_presence(pshow=show).send()

    async def next_contact_presence(self, count: int = 1) -> list[tuple[str, str | None, str | None]]:
        """The next `count` presence stanzas from other users: (full JID, type, show)."""
        out = []
        async with asyncio.timeout(TIMEOUT):
            for _ in range(count):
                out.append(await self.contact_presence.get())
        return out

    # -- talking to the component -----------------------------------------------------

    def send_subscription(self, to: str, ptype: str) -> None:
        """`<presence to=TO type='subscribe|unsubscribe'/>`, routed by Prosody (RFC 6121 3.1, 3.3)."""
        assert self.client is not None
        self.client.make_presence(pto=to, ptype=ptype).send()

    async def remove_contact(self, contact: str) -> None:
        """Roster remove (RFC 6121 2.5): Prosody also cancels the subscriptions both ways."""
        assert self.client is not None
        iq = self.client.make_iq(itype="set")
        query = ET.SubElement(iq.xml, f"{{{NS_ROSTER}}}query")
        ET.SubElement(query, f"{{{NS_ROSTER}}}item", {"jid": contact, "subscription": "remove"})
        await iq.send(timeout=TIMEOUT)

    async def iq(self, itype: str, payload: ET.Element, to: str = COMPONENT) -> slixmpp.Iq:
        """Send an IQ carrying `payload`; returns the answer, result or error alike."""
        assert self.client is not None
        iq = self.client.make_iq(ito=to, itype=itype)
        iq.xml.append(payload)
        try:
            return await iq.send(timeout=TIMEOUT)
        except IqError as exc:
            return exc.iq

    async def handshake(self, itype: str = "set", **attrs: str) -> slixmpp.Iq:
        """`<presencehandshake xmlns='jabber:iq:configuration' .../>` to the component."""
        return await self.iq(itype, ET.Element(f"{{{NS_CONF}}}presencehandshake", attrs))

    async def deviceshare(self, **attrs: str) -> slixmpp.Iq:
        """`<iq type='set'><deviceshare xmlns=NS_SHARE .../></iq>` to the component."""
        return await self.iq("set", ET.Element(f"{{{NS_SHARE}}}deviceshare", attrs))


def _body(msg: slixmpp.Message) -> str | None:
    return msg.xml.findtext("{jabber:client}body")


def removal_pushes(server: XmppServer, contact: str) -> list[tuple[str, str]]:
    """The roster pushes a user's client sees when the service removes `contact` from its
    roster: the removal; behind ejabberd's API the cleared subscription first (see
    component/xmpp/ejabberd_api.py, `remove_item`)."""
    if isinstance(server, LocalEjabberd):
        return [(contact, "none"), (contact, "remove")]
    return [(contact, "remove")]


def handshake_of(answer: slixmpp.Iq) -> dict[str, str]:
    """The <presencehandshake/> attributes of a result (asserting it is one)."""
    assert answer["type"] == "result", f"expected a result, got {answer}"
    child = answer.xml.find(f"{{{NS_CONF}}}presencehandshake")
    assert child is not None, f"no presencehandshake in {answer}"
    return dict(child.attrib)


def error_condition(answer: slixmpp.Iq) -> str:
    assert answer["type"] == "error", f"expected an error, got {answer}"
    return answer["error"]["condition"]


def management(handshake_id: str, action: str, side: str, status: str) -> Management:
    """The seed's management message as the party on `side` must receive it."""
    return Management(
        COMPONENT, "management", {"id": handshake_id, "action": action, "type": side, "status": status}
    )


@pytest.fixture
async def xmpp_users(xmpp_server: XmppServer) -> AsyncIterator[Callable[..., Awaitable[XmppUser]]]:
    """Factory for connected clients (on `xmpp_server` unless told); every one is
    disconnected at teardown."""
    made: list[XmppUser] = []

    async def connect(name: str, server: XmppServer | None = None) -> XmppUser:
        user = XmppUser(name, server or xmpp_server)
        made.append(user)
        return await user.connect()

    yield connect
    for user in made:
        await user.disconnect()


@pytest.fixture
async def alice(service: RunningService, xmpp_users) -> XmppUser:
    return await xmpp_users("alice")


@pytest.fixture
async def bob(service: RunningService, xmpp_users) -> XmppUser:
    return await xmpp_users("bob")


@pytest.fixture
async def carol(service: RunningService, xmpp_users) -> XmppUser:
    return await xmpp_users("carol")


@pytest.fixture
async def dave(service: RunningService, xmpp_users) -> XmppUser:
    return await xmpp_users("dave")


# ---- REST ------------------------------------------------------------------------------


@dataclass
class Session:
    """A logged-in REST caller."""

    token: str
    user_id: str
    jid: str

    @property
    def presences(self) -> str:
        return f"/api/rainbow/enduser/v1.0/users/{self.user_id}/presences"


class RestApi:
    """Real HTTP calls on the bridge; answers are (status, parsed JSON or None)."""

    LOGIN = "/api/rainbow/authentication/v1.0/login"
    LOGOUT = "/api/rainbow/authentication/v1.0/logout"

    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self.http = http
        self.base_url = base_url

    async def kazoo(
        self,
        method: str,
        path: str,
        token: str | None = ADMIN_TOKEN,
        body: Any = None,
        data: bytes | str | None = None,
        params: Any = None,
    ) -> tuple[int, Any]:
        """A Kazoo path (`/v2/...`) with the token in `X-Auth-Token` (none if `token` is None)."""
        headers = {"X-Auth-Token": token} if token is not None else {}
        return await self.call(method, path, body=body, data=data, headers=headers, params=params)

    async def xlink(
        self, method: str, path: str, token: str | None, body: Any = None, data: bytes | str | None = None
    ) -> tuple[int, Any]:
        """An Xlink path (`/v2/share/device...`) with the token in `Access-Token`."""
        headers = {"Access-Token": token} if token is not None else {}
        return await self.call(method, path, body=body, data=data, headers=headers)

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        params: Any = None,
    ) -> tuple[int, Any]:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if body is not None:
            data = json.dumps(body)
            sent.setdefault("Content-Type", "application/json")
        async with self.http.request(
            method, self.base_url + path, data=data, headers=sent, params=params
        ) as resp:
            raw = await resp.read()
            return resp.status, (json.loads(raw) if raw else None)

    async def login(self, name: str, password: str | None = None) -> Session:
        credentials = f"{jid(name)}:{password or PASSWORDS[name]}".encode()
        status, body = await self.call(
            "GET", self.LOGIN, headers={"Authorization": "Basic " + base64.b64encode(credentials).decode()}
        )
        assert status == 200, body
        assert body["loggedInUser"]["jid_im"] == jid(name)
        return Session(body["token"], body["loggedInUser"]["id"], jid(name))

    # Shorthands for the presence-sharing paths; each returns (status, body).
    async def create(self, who: Session, **body: str) -> tuple[int, Any]:
        return await self.call("POST", who.presences, who.token, body=body)

    async def transition(self, who: Session, request_id: str, action: str) -> tuple[int, Any]:
        return await self.call("POST", f"{who.presences}/{request_id}/{action}", who.token)

    async def get(self, who: Session, request_id: str, **params: str) -> tuple[int, Any]:
        return await self.call("GET", f"{who.presences}/{request_id}", who.token, params=params)

    async def list(self, who: Session, box: str, params: Any = None) -> tuple[int, Any]:
        return await self.call("GET", f"{who.presences}/{box}", who.token, params=params)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        yield session


@pytest.fixture
async def api(service: RunningService, http: aiohttp.ClientSession) -> RestApi:
    return RestApi(http, service.base_url)


def assert_rainbow_error(status: int, body: Any, expected_status: int, details_code: int) -> None:
    """Rainbow's error envelope, exactly: {errorCode, errorMsg, errorDetails, errorDetailsCode}."""
    assert status == expected_status, body
    assert set(body) == {"errorCode", "errorMsg", "errorDetails", "errorDetailsCode"}, body
    assert body["errorCode"] == expected_status
    assert body["errorMsg"] == HTTPStatus(expected_status).phrase
    assert isinstance(body["errorDetails"], str) and body["errorDetails"]
    assert body["errorDetailsCode"] == details_code


# ---- the service as a real child process (SIGKILL and restart tests) -------------------------


REPO = Path(__file__).resolve().parents[2]


async def wait_until(predicate, timeout: float = TIMEOUT) -> None:
    """Poll an async predicate until it holds; fails after `timeout` (never asserts speed)."""
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


def toml_text(raw: dict[str, dict[str, Any]]) -> str:
    """Enough TOML for the service's config: tables of strings, numbers and booleans."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = []
    for section, table in raw.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value(v)}" for key, v in table.items())
        lines.append("")
    return "\n".join(lines)


class ServiceProcess:
    """`python -m component --config FILE` as a child process (stderr kept in a file)."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "component", "--config", str(self.config_path),
                cwd=str(REPO), stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )

    async def kill(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        return await self.proc.wait()

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


class ServiceProcesses:
    """Successive service processes on one config and database (SIGKILL/restart tests)."""

    def __init__(self, prosody: XmppServer, tmp_path: Path, http: aiohttp.ClientSession) -> None:
        port = free_port()
        self.tmp_path = tmp_path
        self.db_path = tmp_path / "presence.sqlite3"
        self.config_path = tmp_path / "config.toml"
        self.config_path.write_text(
            toml_text(service_config(prosody, self.db_path, port) | {"logging": {"level": "INFO"}})
        )
        self.base_url = f"http://127.0.0.1:{port}"
        self.api = RestApi(http, self.base_url)
        self.procs: list[ServiceProcess] = []

    async def start(self) -> ServiceProcess:
        """Start the next process and wait until it is healthy with the roster granted."""
        proc = ServiceProcess(self.config_path, self.tmp_path / f"service-{len(self.procs) + 1}.log")
        self.procs.append(proc)
        await proc.start()
        await wait_for_health(self.base_url, healthy("granted"))
        return proc


@pytest.fixture
async def service_processes(
    ensure_server_up: XmppServer, tmp_path: Path, http: aiohttp.ClientSession
) -> AsyncIterator[ServiceProcesses]:
    rig = ServiceProcesses(ensure_server_up, tmp_path, http)
    yield rig
    for proc in rig.procs:
        await proc.stop()


