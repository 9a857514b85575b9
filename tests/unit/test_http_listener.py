"""The real app served by HttpListener on a free loopback port (the system picks it), over
raw sockets: its limits against slow and greedy clients (with short limits), and what its
log lines make of the paths clients choose.

Timings are only bounded generously (BOUND): the tests check that a connection is closed,
never how fast. Every slow client would take far longer than BOUND to finish sending, so a
connection closed within BOUND was cut by a limit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from component.actions import Identity, PresenceSharing
from component.config import HttpConfig
from component.device_sharing import DeviceSharing
from component.provisioning import Provisioning
from component.subscriptions import PresenceStates
from http_bridge import HttpListener, Services, build_app

HOST = "127.0.0.1"
BOUND = 15.0  # far above every limit below: a connection still open by then was never cut
HEADER_TIMEOUT = 0.5
BODY_TIMEOUT = 0.5
MAX_CONNECTIONS = 4


class Health:
    async def __call__(self) -> tuple[bool, dict[str, str]]:
        return True, {"xmpp": "connected", "storage": "ok", "roster": "granted"}


Serve = Callable[..., Awaitable[HttpListener]]


@pytest.fixture
async def serve(
    identity: Identity, sharing: PresenceSharing, provisioning: Provisioning, states: PresenceStates,
    device_sharing: DeviceSharing,
) -> AsyncIterator[Serve]:
    """Start the app with HttpListener on 127.0.0.1, port 0; stopped at teardown."""
    started: list[HttpListener] = []

    async def start(**limits: float) -> HttpListener:
        settings = HttpConfig(
            host=HOST, port=0,
            **{"header_timeout_s": HEADER_TIMEOUT, "body_timeout_s": BODY_TIMEOUT,
               "max_connections": MAX_CONNECTIONS, **limits},  # type: ignore[arg-type]
        )
        services = Services(
            identity, sharing, Health(), provisioning=provisioning, states=states,
            component_jid="presence.example.test", device_sharing=device_sharing,
        )
        listener = HttpListener(build_app(services, settings))
        started.append(listener)
        await listener.start()
        return listener

    yield start
    for listener in started:
        await listener.stop()


@pytest.fixture
async def token(identity: Identity) -> tuple[str, str]:
    """alice's token and user id."""
    token, user = await identity.login("alice@example.test", "alice-pw")
    return token, user.id


async def connect(listener: HttpListener) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, listener.port)


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (fails after BOUND)."""
    async with asyncio.timeout(BOUND):
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
        return b"".join(chunks)


async def trickle(writer: asyncio.StreamWriter, pieces: list[bytes], every: float = 0.1) -> None:
    """Send `pieces` one at a time until the server closes the connection (or they run out)."""
    with contextlib.suppress(ConnectionError):
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(every)


async def healthz(listener: HttpListener) -> bytes:
    reader, writer = await connect(listener)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = await read_until_closed(reader)
    writer.close()
    return answer


# ---- request heads -------------------------------------------------------------------------


async def test_heads_trickled_line_by_line_are_cut_without_an_answer(serve: Serve) -> None:
    listener = await serve()
    head = [b"GET /healthz HTTP/1.1\r\n"] + [b"X-Slow: %d\r\n" % i for i in range(1000)]
    clients = [await connect(listener) for _ in range(MAX_CONNECTIONS - 1)]
    senders = [asyncio.create_task(trickle(w, head)) for _, w in clients]
    answers = await asyncio.gather(*(read_until_closed(r) for r, _ in clients))
    # Closed, nothing answered, well before the heads' 100 s were sent.
    assert answers == [b""] * len(clients)
    for sender in senders:
        sender.cancel()
    assert (await healthz(listener)).startswith(b"HTTP/1.1 200 ")


async def test_a_connection_that_sends_nothing_is_closed(serve: Serve) -> None:
    listener = await serve()
    reader, writer = await connect(listener)
    assert await read_until_closed(reader) == b""
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_its_answer(serve: Serve) -> None:
    listener = await serve()
    reader, writer = await connect(listener)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await read_until_closed(reader)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'"roster":"granted"}')
    writer.close()


async def test_slow_but_steady_requests_on_one_connection_are_served(serve: Serve) -> None:
    # Each head is complete well within the limit: the timer restarts after each answer.
    listener = await serve(header_timeout_s=2.0)
    reader, writer = await connect(listener)
    for _ in range(4):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(BOUND):
            status = await reader.readline()
            while await reader.readline() != b"\r\n":
                pass
            await reader.readexactly(len(b'{"xmpp":"connected","storage":"ok","roster":"granted"}'))
        assert status.startswith(b"HTTP/1.1 200 ")
        await asyncio.sleep(0.5)
    writer.close()


# ---- bodies ----------------------------------------------------------------------------------


def post_head(path: str, token: str, length: int, method: str = "POST") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nAccess-Token: {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("rainbow", b'"errorCode":408,"errorMsg":"Request Timeout","errorDetails":"request body not received in time","errorDetailsCode":408000}'),
        ("xlink", b'{"error":{"code":4081000,"msg":"request body not received in time"}}'),
        ("kazoo", b'"error":"408","message":"request timeout"'),
    ],
)
async def test_a_body_trickled_byte_by_byte_gets_408_and_the_connection_is_closed(
    serve: Serve, token: tuple[str, str], family: str, expected: bytes
) -> None:
    listener = await serve()
    path = {
        "rainbow": f"/api/rainbow/enduser/v1.0/users/{token[1]}/presences",
        "xlink": "/v2/share/device",
        "kazoo": "/v2/accounts",
    }[family]
    body = b'{"toJid": "bob@example.test", "pad": "' + b"x" * 300 + b'"}'  # 34 s at 0.1 s a byte
    reader, writer = await connect(listener)
    writer.write(post_head(path, token[0], len(body), "PUT" if family == "kazoo" else "POST"))
    sender = asyncio.create_task(trickle(writer, [bytes([b]) for b in body]))
    answer = await read_until_closed(reader)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert b"\r\nConnection: close\r\n" in answer and expected in answer
    sender.cancel()
    writer.close()


async def test_a_body_no_handler_reads_is_dropped_then_the_connection_closed(serve: Serve) -> None:
    listener = await serve()
    reader, writer = await connect(listener)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    sender = asyncio.create_task(trickle(writer, [b"x"] * 1000))
    answer = await read_until_closed(reader)  # well before the body's 100 s were sent
    assert answer.startswith(b"HTTP/1.1 200 ")  # answered at once, then cut
    sender.cancel()
    writer.close()


async def test_a_client_that_hangs_up_mid_body_is_not_an_error(
    serve: Serve, token: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    listener = await serve(body_timeout_s=30.0)
    reader, writer = await connect(listener)
    writer.write(post_head("/v2/share/device", token[0], 100) + b'{"device_id": ')
    await writer.drain()
    await asyncio.sleep(0.2)
    with caplog.at_level(logging.INFO, logger="http_bridge"):
        writer.close()
        async with asyncio.timeout(BOUND):
            while not any(r.getMessage().startswith("http POST /v2/share/device") for r in caplog.records):
                await asyncio.sleep(0.05)
    assert [r.levelname for r in caplog.records if r.name == "http_bridge"] == ["INFO"]
    assert " -> 400 " in caplog.records[-1].getMessage()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_does_not_decompress_is_a_400(
    serve: Serve, token: tuple[str, str], encoding: str
) -> None:
    listener = await serve()
    garbage = b"this is not compressed at all"
    reader, writer = await connect(listener)
    writer.write(
        post_head("/v2/share/device", token[0], len(garbage)).replace(
            b"\r\n\r\n", f"\r\nContent-Encoding: {encoding}\r\nConnection: close\r\n\r\n".encode()
        ) + garbage
    )
    answer = await read_until_closed(reader)
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.endswith(
        b'{"error":{"code":4001001,"msg":"request body is malformed"}}'
    ), answer
    writer.close()


# ---- connections ----------------------------------------------------------------------------


async def test_connections_over_the_cap_are_closed_and_served_again_below_it(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    listener = await serve(header_timeout_s=60.0)
    held = [await connect(listener) for _ in range(MAX_CONNECTIONS)]
    # Each of these is accepted by the system and closed by the listener, unanswered.
    with caplog.at_level(logging.INFO, logger="http_bridge"):
        for _ in range(3):
            assert await healthz(listener) == b""
        reader, writer = held.pop()
        writer.close()
        await read_until_closed(reader)
        async with asyncio.timeout(BOUND):
            while not (answer := await healthz(listener)):
                await asyncio.sleep(0.05)  # until the server has seen that close
    assert answer.startswith(b"HTTP/1.1 200 ")
    messages = [r.getMessage() for r in caplog.records if r.name == "http_bridge" and "connections" in r.getMessage()]
    assert messages[0] == "http: 4 connections open ([http] max_connections): closing new ones"
    assert messages[-1].startswith("http: accepting connections again (")
    for _, writer in held:
        writer.close()


# ---- log lines ------------------------------------------------------------------------------


async def logged_request(
    listener: HttpListener, caplog: pytest.LogCaptureFixture, head: bytes
) -> tuple[bytes, list[str]]:
    """Send one request as raw bytes; its answer, and the http_bridge log messages it made."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="http_bridge"):
        reader, writer = await connect(listener)
        writer.write(head + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await read_until_closed(reader)
        writer.close()
    return answer, [r.getMessage() for r in caplog.records if r.name == "http_bridge"]


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        # %0a wrote a second line that said whatever the client wanted.
        (b"/healthz%0a2026-01-01%2000:00:00,000%20INFO%20http_bridge:%20http%20GET%20/%20-%3E%20200",
         "/healthz\\x0a2026-01-01 00:00:00,000 INFO http_bridge: http GET / -> 200"),
        (b"/nowhere%0d%0aforged", "/nowhere\\x0d\\x0aforged"),
        (b"/a%00b%1b[2Jc%7fd", "/a\\x00b\\x1b[2Jc\\x7fd"),  # NUL, a terminal escape, DEL
        (b"/a%e2%80%a8b%c2%85c%e2%80%aed", "/a\\u2028b\\x85c\\u202ed"),  # LS, NEL, bidi override
        (b"/a\\x0ab", "/a\\\\x0ab"),  # a backslash is escaped too: no look-alike line
        (b"/v2/share/x%0ay", "/v2/share/x\\x0ay"),
    ],
)
async def test_a_path_cannot_forge_a_log_line(
    serve: Serve, caplog: pytest.LogCaptureFixture, path: bytes, logged: str
) -> None:
    listener = await serve()
    answer, messages = await logged_request(listener, caplog, b"GET " + path + b" HTTP/1.1")
    assert answer.startswith((b"HTTP/1.1 404 ", b"HTTP/1.1 200 "))
    assert len(messages) == 1 and messages[0].startswith(f"http GET {logged} -> ")
    assert not any(ch in messages[0] for ch in "\r\n\x00\x1b\x85\u2028\u202e")


async def test_invite_codes_in_paths_are_logged_cut_to_six_characters(
    serve: Serve, caplog: pytest.LogCaptureFixture, token: tuple[str, str]
) -> None:
    listener = await serve()
    code = "3q2-7wEjRZmN1x0aYk_PbLcQvT8uW4sD"
    auth = f"\r\nAccess-Token: {token[0]}".encode()
    for head, logged in [
        (f"DELETE /v2/share/device/delete/{code} HTTP/1.1".encode() + auth,
         "http DELETE /v2/share/device/delete/3q2-7w… -> 404 "),
        (f"GET /v2/share/device/qrcode/{code}.png HTTP/1.1".encode() + auth,
         "http GET /v2/share/device/qrcode/3q2-7w….png -> 404 "),
        (f"GET /v2/share/device/qrcode/{code}.gif HTTP/1.1".encode(),  # no route: redacted too
         "http GET /v2/share/device/qrcode/3q2-7w….gif -> 404 "),
        (f"DELETE /v2/share/device/delete/{code}/more HTTP/1.1".encode(),
         "http DELETE /v2/share/device/delete/3q2-7w…/more -> 404 "),
    ]:
        _, messages = await logged_request(listener, caplog, head)
        assert len(messages) == 1 and messages[0].startswith(logged), messages
        assert code[6:12] not in messages[0]


@pytest.mark.parametrize("head", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer SECRET-TOKEN-42\x00\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Probe: SECRET-TOKEN-42\x01\r\n",
    b"GET /he\x00althz?t=SECRET-TOKEN-42 HTTP/1.1\r\nHost: x\r\n",
    b"\x16\x03\x01SECRET-TOKEN-42 /healthz HTTP/1.1\r\nHost: x\r\n",  # not HTTP at all: aiohttp logs at debug
])
async def test_a_request_that_is_not_http_is_a_400_and_one_line_without_its_content(
    serve: Serve, caplog: pytest.LogCaptureFixture, head: bytes
) -> None:
    listener = await serve()
    caplog.set_level(logging.DEBUG)
    reader, writer = await connect(listener)
    writer.write(head + b"Connection: close\r\n\r\n")
    answer = await read_until_closed(reader)
    writer.close()
    assert answer.split(b" ", 2)[1] == b"400", answer[:40]  # aiohttp's own answer (HTTP/1.0)
    assert (await healthz(listener)).startswith(b"HTTP/1.1 200 ")  # still serving
    logged = [r for r in caplog.records if "not valid HTTP" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is None
    assert logged[0].getMessage().startswith("http: a request from 127.0.0.1 that is not valid HTTP was refused: 400 ")
    text = caplog.text + "".join(str(r.exc_info) + str(r.args) for r in caplog.records)
    assert "SECRET-TOKEN" not in text
