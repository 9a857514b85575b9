"""Family 3 over HTTP (Xlink paths): share, cancel, accept, deny, list, delete and the QR
image, over real actions and a real database; Xlink's bodies and error envelope exactly."""

from __future__ import annotations

import io
import struct
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest
import segno
from aiohttp.test_utils import TestClient, TestServer
from defusedxml import ElementTree as SafeET

from component.actions import Identity, PresenceSharing
from component.clock import FixedClock, iso_ms
from component.config import HttpConfig
from component.commands import Principal
from component.device_sharing import DeviceSharing
from component.model import new_account_id, new_invite_code, new_object_id
from component.provisioning import Provisioning
from component.subscriptions import PresenceStates
from http_bridge import Services, build_app
from storage import Database
from unit_rig import SERVED, outbox_rows, raw_http

if TYPE_CHECKING:  # conftest is not importable by name: the stanza tier has one too
    from conftest import Home

START = FixedClock().now_ms()
COMPONENT = "presence.example.test"
P = "/v2/share/device"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Health:
    async def __call__(self) -> tuple[bool, dict[str, str]]:
        return True, {"xmpp": "connected", "storage": "ok", "roster": "granted"}


@pytest.fixture
async def client(
    identity: Identity, sharing: PresenceSharing, provisioning: Provisioning, states: PresenceStates,
    device_sharing: DeviceSharing,
) -> AsyncIterator[TestClient]:
    services = Services(
        identity, sharing, Health(), max_page_size=50, provisioning=provisioning, states=states,
        component_jid=COMPONENT, device_sharing=device_sharing,
    )
    async with TestClient(TestServer(build_app(services, HttpConfig(max_body_bytes=4096)))) as test_client:
        yield test_client


@pytest.fixture
async def tokens(identity: Identity, home: Home) -> dict[str, str]:
    out = {}
    for name in ("alice", "bob", "carol"):
        out[name], _ = await identity.login(f"{name}@example.test", f"{name}-pw")
    return out


async def call(
    client: TestClient, method: str, path: str, token: str | None, body: Any = None, raw: bytes | None = None
) -> tuple[int, Any]:
    """(status, JSON body, or the raw bytes when the body is not JSON)."""
    headers = {} if token is None else {"Access-Token": token}
    kwargs: dict[str, Any] = {"headers": headers}
    if raw is not None:
        kwargs["data"] = raw
        headers["Content-Type"] = "application/json"
    elif body is not None:
        kwargs["json"] = body
    async with client.request(method, path, **kwargs) as resp:
        data = await resp.read()
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, data


def xerr(code: int, msg: str) -> tuple[int, dict[str, Any]]:
    return code // 10000, {"error": {"code": code, "msg": msg}}


async def make_share(client: TestClient, token: str, **body: Any) -> str:
    body.setdefault("expire", 3600)
    status, answer = await call(client, "POST", P, token, body)
    assert status == 200, answer
    assert list(answer) == ["invite_code"]
    return str(answer["invite_code"])


async def share_rows(db: Database) -> list[tuple[Any, ...]]:
    async with db.reader.execute(
        "SELECT invite_code, to_user_id, to_email, mode, authority, state, reason, hidden_by_sender,"
        " hidden_by_receiver FROM device_shares ORDER BY create_date, invite_code"
    ) as cur:
        return [tuple(r) for r in await cur.fetchall()]


# ---- the happy paths -------------------------------------------------------------------------


async def test_share_answers_the_invite_code(
    client: TestClient, home: Home, tokens: dict[str, str], db: Database
) -> None:
    async with client.post(
        P, headers={"Access-Token": tokens["alice"]},
        json={"device_id": home.hall.id, "user": "bob@example.test", "expire": 7200, "mode": "app"},
    ) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert list(body) == ["invite_code"]
    assert await share_rows(db) == [(body["invite_code"], home.bob.id, None, "app", "RW", "pending", None, 0, 0)]


async def test_shares_by_qrcode_and_email(client: TestClient, home: Home, tokens: dict[str, str], db: Database) -> None:
    qr = await make_share(client, tokens["alice"], device_id=home.hall.id, mode="qrcode", authority="R")
    mailed = await make_share(client, tokens["alice"], device_id=home.hall.id, mode="email", user="zoe@mail.test")
    assert await share_rows(db) == sorted([
        (qr, None, None, "qrcode", "R", "pending", None, 0, 0),
        (mailed, None, "zoe@mail.test", "email", "RW", "pending", None, 0, 0),
    ])
    async with db.reader.execute("SELECT recipient FROM mail_outbox") as cur:
        assert [tuple(r) for r in await cur.fetchall()] == [("zoe@mail.test",)]


async def test_commands_answer_200_with_an_empty_body(
    client: TestClient, home: Home, tokens: dict[str, str], db: Database
) -> None:
    first = await make_share(client, tokens["alice"], device_id=home.hall.id, mode="app", user=home.bob.id)
    second = await make_share(client, tokens["alice"], device_id=home.hall.id, mode="app", user=home.bob.id)
    third = await make_share(client, tokens["alice"], device_id=home.hall.id, mode="qrcode")
    steps = [
        ("POST", f"{P}/accept", "bob", {"invite_code": first}),
        ("POST", f"{P}/deny", "bob", {"invite_code": second, "reason": "not now"}),
        ("POST", f"{P}/cancel", "alice", {"invite_code": third}),
        ("POST", f"{P}/cancel", "alice", {"invite_code": first}),
        ("DELETE", f"{P}/delete/{second}", "bob", None),
    ]
    for method, path, who, body in steps:
        async with client.request(method, path, headers={"Access-Token": tokens[who]}, json=body) as resp:
            assert (resp.status, await resp.read()) == (200, b""), (method, path)
            assert resp.headers["Content-Length"] == "0"
    assert await share_rows(db) == sorted([  # same create_date: ordered by code
        (first, home.bob.id, None, "app", "RW", "cancel", None, 0, 0),
        (second, home.bob.id, None, "app", "RW", "deny", "not now", 0, 1),
        (third, None, None, "qrcode", "RW", "cancel", None, 0, 0),
    ])
    # The accept granted, the cancel revoked: the outbox holds both.
    roster = [(to, p["direction"], p["op"]) for kind, to, p in await outbox_rows(db) if kind == "roster"]
    assert roster == [("bob@example.test", "to", "add"), ("bob@example.test", "to", "remove")]


async def test_list_is_a_json_array_of_the_callers_shares(
    client: TestClient, home: Home, tokens: dict[str, str], clock: FixedClock
) -> None:
    sent = await make_share(client, tokens["alice"], device_id=home.hall.id, mode="app", user=home.bob.id, expire=600)
    clock.advance(1_500)
    received = await make_share(client, tokens["bob"], device_id=home.desk.id, mode="qrcode", expire=60)
    status, carols = await call(client, "GET", f"{P}/list", tokens["carol"])
    assert (status, carols) == (200, [])
    await call(client, "POST", f"{P}/accept", tokens["alice"], {"invite_code": received})
    status, listed = await call(client, "GET", f"{P}/list", tokens["alice"])
    assert status == 200
    assert listed == [
        {
            "invite_code": received,
            "from_id": home.bob.id,
            "from_user": "bob@example.test",
            "to_id": home.alice.id,
            "to_user": "alice@example.test",
            "device_id": home.desk.id,
            "state": "accept",
            "create_date": "2026-01-01T00:00:01.500Z",
            "expire_date": "2026-01-01T00:01:01.500Z",
            "mode": "qrcode",
            "authority": "RW",
            "reason": None,
        },
        {
            "invite_code": sent,
            "from_id": home.alice.id,
            "from_user": "alice@example.test",
            "to_id": home.bob.id,
            "to_user": "bob@example.test",
            "device_id": home.hall.id,
            "state": "pending",
            "create_date": iso_ms(START),
            "expire_date": "2026-01-01T00:10:00.000Z",
            "mode": "app",
            "authority": "RW",
            "reason": None,
        },
    ]
    # Expiry applies on read.
    clock.advance(600_000)
    status, listed = await call(client, "GET", f"{P}/list", tokens["bob"])
    assert [(s["invite_code"], s["state"]) for s in listed] == [(received, "accept"), (sent, "overtime")]


async def test_delete_hides_from_the_callers_list_only(client: TestClient, home: Home, tokens: dict[str, str]) -> None:
    code = await make_share(client, tokens["alice"], device_id=home.hall.id, mode="app", user=home.bob.id)
    assert await call(client, "DELETE", f"{P}/delete/{code}", tokens["alice"]) == (200, b"")
    assert await call(client, "GET", f"{P}/list", tokens["alice"]) == (200, [])
    status, bobs = await call(client, "GET", f"{P}/list", tokens["bob"])
    assert [s["invite_code"] for s in bobs] == [code]


@pytest.mark.parametrize(
    "header", [b"Access-Token: \xc3\x28", b"Access-Token: \xff\xfe", b"Authorization: Bearer \xff"]
)
async def test_a_token_that_is_not_visible_ascii_is_no_token(client: TestClient, header: bytes) -> None:
    answer = await raw_http(client.host, client.port, f"GET {P}/list HTTP/1.1\r\nHost: x\r\n".encode() + header)
    assert (answer.status, answer.json()) == xerr(4031003, "missing token")


@pytest.mark.parametrize(
    "share", [{"mode": "qrcode"}, {"mode": "email", "user": "zoe@mail.test"}]
)
async def test_the_manager_deletes_a_share_nobody_answered_yet(
    client: TestClient, home: Home, tokens: dict[str, str], share: dict[str, str]
) -> None:
    # No invitee yet (to_user_id NULL): the update wrote NULL into hidden_by_receiver, a 500.
    code = await make_share(client, tokens["alice"], device_id=home.hall.id, **share)
    assert await call(client, "DELETE", f"{P}/delete/{code}", tokens["alice"]) == (200, b"")
    assert await call(client, "GET", f"{P}/list", tokens["alice"]) == (200, [])
    assert await call(client, "POST", f"{P}/accept", tokens["bob"], {"invite_code": code}) == (200, b"")


async def test_any_token_header_works_on_xlink_paths(client: TestClient, home: Home, tokens: dict[str, str]) -> None:
    for headers in ({"Authorization": f"Bearer {tokens['carol']}"}, {"X-Auth-Token": tokens["carol"]}):
        async with client.get(f"{P}/list", headers=headers) as resp:
            assert (resp.status, await resp.json()) == (200, [])


# ---- QR codes --------------------------------------------------------------------------------


async def test_the_qr_code_as_png(client: TestClient, home: Home, tokens: dict[str, str]) -> None:
    code = await make_share(client, tokens["alice"], device_id=home.hall.id, mode="qrcode")
    async with client.get(f"{P}/qrcode/{code}.png", headers={"Access-Token": tokens["alice"]}) as resp:
        assert resp.status == 200
        assert resp.content_type == "image/png"
        assert resp.headers["Cache-Control"] == "no-store"
        png = await resp.read()
    assert png[:8] == PNG_SIGNATURE
    length, chunk = struct.unpack(">I4s", png[8:16])
    assert (length, chunk) == (13, b"IHDR")
    width, height = struct.unpack(">II", png[16:24])
    assert width == height
    # 8 px per module, a 4-module quiet zone each side, a version 1..40 symbol (21 + 4v modules).
    modules = width // 8 - 8
    assert width % 8 == 0 and modules >= 21 and (modules - 21) % 4 == 0


async def test_the_qr_code_as_svg(client: TestClient, home: Home, tokens: dict[str, str]) -> None:
    code = await make_share(client, tokens["alice"], device_id=home.hall.id, mode="qrcode")
    async with client.get(f"{P}/qrcode/{code}.svg", headers={"Access-Token": tokens["alice"]}) as resp:
        assert resp.status == 200
        assert resp.content_type == "image/svg+xml"
        assert resp.headers["Cache-Control"] == "no-store"
        svg = await resp.read()
    root = SafeET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("width") == root.get("height")


def qr_svg(text: str) -> bytes:
    out = io.BytesIO()
    segno.make(text, error="m").save(out, kind="svg", scale=8, border=4)
    return out.getvalue()


@pytest.mark.parametrize("content", [None, "code", "uri"])
async def test_the_qr_code_encodes_the_code_or_the_xmpp_uri(
    client: TestClient, home: Home, tokens: dict[str, str], content: str | None
) -> None:
    code = await make_share(client, tokens["alice"], device_id=home.hall.id, mode="qrcode")
    query = f"?content={content}" if content else ""
    async with client.get(f"{P}/qrcode/{code}.svg{query}", headers={"Access-Token": tokens["alice"]}) as resp:
        assert resp.status == 200
        svg = await resp.read()
    expected = (
        f"xmpp:presence.example.test?command;node=urn:xmpp:presence-consent:cmd:shares:{code}"
        if content == "uri" else code
    )
    assert svg == qr_svg(expected)
    assert svg != qr_svg(code if content == "uri" else f"xmpp:{code}")


async def test_a_qr_code_of_unknown_content_is_refused(client: TestClient, home: Home, tokens: dict[str, str]) -> None:
    code = await make_share(client, tokens["alice"], device_id=home.hall.id, mode="qrcode")
    assert await call(client, "GET", f"{P}/qrcode/{code}.png?content=link", tokens["alice"]) == xerr(
        4001001, "content must be code or uri"
    )


async def test_the_qr_code_is_the_managers_only(client: TestClient, home: Home, tokens: dict[str, str]) -> None:
    code = await make_share(client, tokens["alice"], device_id=home.hall.id, mode="qrcode")
    for who in ("bob", "carol"):
        for fmt in ("png", "svg"):
            assert await call(client, "GET", f"{P}/qrcode/{code}.{fmt}", tokens[who]) == xerr(4041018, "share not found")
    assert await call(client, "GET", f"{P}/qrcode/{new_invite_code()}.png", tokens["alice"]) == xerr(
        4041018, "share not found"
    )
    assert await call(client, "GET", f"{P}/qrcode/{code}.png", None) == xerr(4031003, "missing token")
    assert await call(client, "GET", f"{P}/qrcode/short.png", tokens["alice"]) == xerr(
        4001001, "invite_code is not a valid invite code"
    )
    assert (await call(client, "GET", f"{P}/qrcode/{code}.gif", tokens["alice"]))[0] == 404


# ---- errors, in Xlink's envelope --------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "msg"), [(None, "missing token"), ("", "missing token"), ("nope", "invalid or expired token")]
)
async def test_without_a_valid_token_every_path_is_4031003(
    client: TestClient, home: Home, token: str | None, msg: str
) -> None:
    code = new_invite_code()
    for method, path in [
        ("POST", P), ("POST", f"{P}/cancel"), ("POST", f"{P}/accept"), ("POST", f"{P}/deny"),
        ("GET", f"{P}/list"), ("DELETE", f"{P}/delete/{code}"), ("GET", f"{P}/qrcode/{code}.png"),
        ("GET", f"{P}/qrcode/{code}.svg"),
    ]:
        assert await call(client, method, path, token, {"invite_code": code}) == xerr(4031003, msg), path


async def test_an_expired_token_is_4031003(
    client: TestClient, home: Home, tokens: dict[str, str], clock: FixedClock
) -> None:
    clock.advance(3600 * 1000)
    assert await call(client, "GET", f"{P}/list", tokens["alice"]) == xerr(4031003, "invalid or expired token")


async def test_share_errors(client: TestClient, home: Home, tokens: dict[str, str], db: Database) -> None:
    alice = tokens["alice"]
    ok = {"device_id": home.hall.id, "user": home.bob.id, "expire": 60, "mode": "app"}
    cases: list[tuple[dict[str, Any], tuple[int, dict[str, Any]]]] = [
        ({**ok, "mode": None}, xerr(4001002, "mode is required")),
        ({k: v for k, v in ok.items() if k != "device_id"}, xerr(4001002, "device_id is required")),
        ({k: v for k, v in ok.items() if k != "expire"}, xerr(4001002, "expire is required")),
        ({k: v for k, v in ok.items() if k != "user"}, xerr(4001002, "user is required with mode app")),
        ({**ok, "mode": "sms"}, xerr(4001001, "mode must be app, qrcode or email")),
        ({**ok, "expire": 0}, xerr(4001001, "expire must be a number of seconds from 1 to 86400")),
        ({**ok, "expire": 86_401}, xerr(4001001, "expire must be a number of seconds from 1 to 86400")),
        ({**ok, "expire": True}, xerr(4001001, "expire must be a number of seconds from 1 to 86400")),
        ({**ok, "expire": "soon"}, xerr(4001001, "expire must be a number of seconds from 1 to 86400")),
        ({**ok, "authority": "X"}, xerr(4001001, "authority must be R, W or RW")),
        ({**ok, "extra": 1}, xerr(4001001, "unknown field(s): extra")),
        ({**ok, "mode": "qrcode"}, xerr(4001001, "a qrcode share names no user")),
        ({**ok, "user": home.alice.id}, xerr(4001001, "the manager cannot share a device with itself")),
        ({**ok, "user": "nobody@example.test@x"}, xerr(4001001, "user must be an e-mail address")),
        ({**ok, "user": "0123456789abcdef01234567"}, xerr(4041011, "user 0123456789abcdef01234567 not found")),
        ({**ok, "user": "nobody@mail.test"}, xerr(4041011, "user nobody@mail.test not found")),
        ({**ok, "device_id": home.desk.id},
         xerr(4041008, f"device {home.desk.id} not found among the devices you manage")),
        ({**ok, "device_id": "nope"}, xerr(4041008, "device nope not found among the devices you manage")),
    ]
    for body, expected in cases:
        assert await call(client, "POST", P, alice, body) == expected, body
    assert await call(client, "POST", P, alice, raw=b"{") == xerr(4001001, "body is not valid JSON")
    assert await call(client, "POST", P, alice, raw=b"[]") == xerr(4001001, "body must be a JSON object")
    assert await call(client, "POST", P, alice, raw=b"") == xerr(4001001, "a JSON object body is required")
    deep = b"[" * 1000 + b"]" * 1000  # json.loads raised RecursionError: a 500
    assert await call(client, "POST", P, alice, raw=deep) == xerr(
        4001001, "body nests more than 32 levels of arrays and objects"
    )
    for raw in (b'{"device_id": "\xff"}', b'{"mode": "qrcode", "expire": 60, "device_id": "\xc3\x28"}'):
        assert await call(client, "POST", P, alice, raw=raw) == xerr(4001001, "body is not UTF-8")
    assert await share_rows(db) == []


async def test_answer_errors(
    client: TestClient, home: Home, tokens: dict[str, str], clock: FixedClock, provisioning: Provisioning
) -> None:
    alice, bob, carol = tokens["alice"], tokens["bob"], tokens["carol"]

    async def new() -> str:
        return await make_share(client, alice, device_id=home.hall.id, mode="app", user=home.bob.id, expire=60)

    accepted, canceled, denied, expired, invalid = [await new() for _ in range(3)] + ["", ""]
    await call(client, "POST", f"{P}/accept", bob, {"invite_code": accepted})
    await call(client, "POST", f"{P}/cancel", alice, {"invite_code": canceled})
    await call(client, "POST", f"{P}/deny", bob, {"invite_code": denied})
    clock.advance(60_000)
    expired = await new()  # the three above are past expiry too, but no longer pending
    clock.advance(60_000)
    # Deleting a device makes its pending shares invalid at once (DESIGN "Deleting ends access").
    invalid = await make_share(client, bob, device_id=home.desk.id, mode="qrcode", expire=600)
    await provisioning.delete_device(Principal(None), home.account.id, home.desk.id)
    unknown = new_invite_code()

    cases: list[tuple[str, str, dict[str, Any], tuple[int, dict[str, Any]]]] = [
        (f"{P}/accept", bob, {}, xerr(4001002, "invite_code is required")),
        (f"{P}/deny", bob, {"invite_code": "x"}, xerr(4001001, "invite_code is not a valid invite code")),
        (f"{P}/deny", bob, {"invite_code": accepted, "reason": "r" * 257},
         xerr(4001001, "reason must be text of at most 256 characters")),
        (f"{P}/deny", bob, {"invite_code": accepted, "reason": "no\u0007"},
         xerr(4001001, "reason contains a control or non-character code point")),
        (f"{P}/cancel", alice, {"invite_code": accepted, "why": 1}, xerr(4001001, "unknown field(s): why")),
        (f"{P}/accept", bob, {"invite_code": unknown}, xerr(4041018, "share not found")),
        (f"{P}/accept", carol, {"invite_code": expired}, xerr(4041018, "share not found")),
        (f"{P}/cancel", bob, {"invite_code": accepted}, xerr(4041018, "share not found")),
        (f"{P}/accept", bob, {"invite_code": accepted}, xerr(4031009, "the share is already accepted")),
        (f"{P}/deny", bob, {"invite_code": accepted}, xerr(4031009, "the share is already accepted")),
        (f"{P}/accept", bob, {"invite_code": canceled}, xerr(4031008, "the share was canceled")),
        (f"{P}/cancel", alice, {"invite_code": canceled}, xerr(4031008, "the share is already canceled")),
        (f"{P}/accept", bob, {"invite_code": denied}, xerr(4031012, "the share is deny")),
        (f"{P}/accept", bob, {"invite_code": expired}, xerr(4031012, "the share has expired")),
        (f"{P}/accept", bob, {"invite_code": expired}, xerr(4031012, "the share is overtime")),
        (f"{P}/accept", carol, {"invite_code": invalid}, xerr(4031012, "the share is invalid")),
        (f"{P}/cancel", bob, {"invite_code": invalid}, xerr(4031012, "the share is invalid")),
        (f"{P}/accept", bob, {"invite_code": invalid},
         xerr(4001001, "the manager cannot answer its own share")),
    ]
    for path, token, body, expected in cases:
        assert await call(client, "POST", path, token, body) == expected, (path, body)
    assert await call(client, "DELETE", f"{P}/delete/{unknown}", alice) == xerr(4041018, "share not found")
    assert await call(client, "DELETE", f"{P}/delete/{accepted}", carol) == xerr(4041018, "share not found")
    assert await call(client, "DELETE", f"{P}/delete/short", alice) == xerr(
        4001001, "invite_code is not a valid invite code"
    )


async def test_the_pending_limit_is_429_in_xlinks_envelope(client: TestClient, home: Home, tokens: dict[str, str]) -> None:
    for _ in range(3):
        await make_share(client, tokens["alice"], device_id=home.hall.id, mode="qrcode")
    assert await call(client, "POST", P, tokens["alice"], {"device_id": home.hall.id, "mode": "qrcode", "expire": 60}) == (
        xerr(4291000, "at most 3 pending shares per device")
    )


async def test_email_shares_when_smtp_is_off(
    identity: Identity, sharing: PresenceSharing, db: Database, clock: FixedClock, home: Home,
    tokens: dict[str, str], device_sharing: DeviceSharing,
) -> None:
    off = DeviceSharing(db, clock, SERVED, replace(device_sharing.settings, email_enabled=False))
    services = Services(identity, sharing, Health(), device_sharing=off)
    async with TestClient(TestServer(build_app(services))) as client:
        assert await call(
            client, "POST", P, tokens["alice"],
            {"device_id": home.hall.id, "mode": "email", "user": "zoe@mail.test", "expire": 60},
        ) == xerr(4001001, "e-mail sharing is not configured on this server ([smtp] host)")


async def test_unknown_xlink_paths_and_methods_use_xlinks_envelope(client: TestClient, tokens: dict[str, str]) -> None:
    assert await call(client, "GET", "/v2/share/nothing", tokens["alice"]) == xerr(4041000, "no such resource")
    assert await call(client, "GET", f"{P}/delete/{new_invite_code()}", tokens["alice"]) == xerr(
        4051000, "method GET not allowed here"
    )
    assert await call(client, "POST", P, tokens["alice"], raw=b'{"x": "' + b"y" * 5000 + b'"}') == xerr(
        4131000, "request body too large"
    )


async def test_other_families_keep_their_envelopes(client: TestClient, home: Home) -> None:
    async with client.get(f"/api/rainbow/enduser/v1.0/users/{new_object_id()}/presences/sent",
                          headers={"Access-Token": "nope"}) as resp:
        assert resp.status == 401
        assert await resp.json() == {
            "errorCode": 401, "errorMsg": "Unauthorized",
            "errorDetails": "invalid or expired token", "errorDetailsCode": 401000,
        }
    async with client.get("/v2/accounts", headers={"X-Auth-Token": "nope", "X-Request-Id": "r-1"}) as resp:
        assert resp.status == 401
        assert await resp.json() == {
            "auth_token": "nope", "data": {"message": "invalid or expired token"}, "error": "401",
            "message": "invalid credentials", "request_id": "r-1", "status": "error",
        }
    async with client.get(f"/v2/sharex/{new_account_id()}") as resp:
        assert resp.status == 404
        assert await resp.json() == {
            "errorCode": 404, "errorMsg": "Not Found", "errorDetails": "no such resource", "errorDetailsCode": 404000,
        }
