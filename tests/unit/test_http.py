"""The REST bridge (Rainbow paths) over real actions and a real database, through HTTP."""

from __future__ import annotations

import base64
from http import HTTPStatus
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from component.actions import Identity, PresenceSharing
from component.clock import FixedClock
from component.config import HttpConfig
from component.errors import TooManyLogins
from component.model import new_object_id
from http_bridge import Services, build_app
from storage import Database
from unit_rig import raw_http, request_rows

AUTH = "/api/rainbow/authentication/v1.0"
MAX_BODY = 1024
START_ISO = "2026-01-01T00:00:00.000Z"


class Health:
    def __init__(self) -> None:
        self.ok = True

    async def __call__(self) -> tuple[bool, dict[str, str]]:
        body = {"xmpp": "connected" if self.ok else "disconnected", "storage": "ok", "roster": "granted"}
        return self.ok, body


@pytest.fixture
def health() -> Health:
    return Health()


@pytest.fixture
async def client(
    identity: Identity, sharing: PresenceSharing, health: Health
) -> AsyncIterator[TestClient]:
    app = build_app(Services(identity, sharing, health, max_page_size=50), HttpConfig(max_body_bytes=MAX_BODY))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def basic(login: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{login}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def envelope(status: int, msg: str, details: str, code: int) -> dict[str, Any]:
    return {"errorCode": status, "errorMsg": msg, "errorDetails": details, "errorDetailsCode": code}


class Session:
    def __init__(self, client: TestClient, token: str, user: dict[str, Any]) -> None:
        self.client = client
        self.token = token
        self.id: str = user["id"]
        self.jid: str = user["jid_im"]
        self.headers = bearer(token)

    @property
    def presences(self) -> str:
        return f"/api/rainbow/enduser/v1.0/users/{self.id}/presences"

    async def post(self, path: str, json: Any = None) -> tuple[int, Any]:
        async with self.client.post(self.presences + path, json=json, headers=self.headers) as resp:
            return resp.status, await resp.json()

    async def get(self, path: str, params: Any = None) -> tuple[int, Any]:
        async with self.client.get(self.presences + path, params=params, headers=self.headers) as resp:
            return resp.status, await resp.json()


async def log_in(client: TestClient, jid: str, password: str) -> Session:
    async with client.get(f"{AUTH}/login", headers=basic(jid, password)) as resp:
        assert resp.status == 200
        body = await resp.json()
    return Session(client, body["token"], body["loggedInUser"])


@pytest.fixture
async def alice(client: TestClient) -> Session:
    return await log_in(client, "alice@example.test", "alice-pw")


@pytest.fixture
async def bob(client: TestClient) -> Session:
    return await log_in(client, "bob@example.test", "bob-pw")


async def create(sender: Session, receiver: Session) -> dict[str, Any]:
    status, body = await sender.post("", {"toJid": receiver.jid})
    assert status == 200, body
    return body["data"]


# ---- authentication --------------------------------------------------------------------


async def test_login_returns_a_token_and_the_user(client: TestClient, db: Database) -> None:
    async with client.get(f"{AUTH}/login", headers=basic("alice@example.test", "alice-pw")) as resp:
        assert resp.status == 200
        body = await resp.json()
    async with db.reader.execute("SELECT id FROM users WHERE jid = 'alice@example.test'") as cur:
        user_id = (await cur.fetchone())[0]
    assert body == {
        "token": body["token"],
        "loggedInUser": {"id": user_id, "jid_im": "alice@example.test", "loginEmail": "alice@example.test"},
    }
    assert isinstance(body["token"], str) and len(body["token"]) >= 32


@pytest.mark.parametrize(
    ("headers", "details"),
    [
        (basic("alice@example.test", "wrong"), "invalid login or password"),
        ({}, "login needs Authorization: Basic base64(jid:password)"),
        ({"Authorization": "Bearer abc"}, "login needs Authorization: Basic base64(jid:password)"),
        ({"Authorization": "Basic !!!not-base64"}, "malformed Basic credentials"),
        ({"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, "malformed Basic credentials"),
    ],
)
async def test_bad_logins_get_401_in_the_envelope(
    client: TestClient, headers: dict[str, str], details: str
) -> None:
    async with client.get(f"{AUTH}/login", headers=headers) as resp:
        assert resp.status == 401
        assert await resp.json() == envelope(401, "Unauthorized", details, 401000)
        assert "Retry-After" not in resp.headers


async def test_login_of_a_user_of_another_domain_is_forbidden(client: TestClient) -> None:
    async with client.get(f"{AUTH}/login", headers=basic("mallory@evil.test", "x")) as resp:
        assert resp.status == 403
        assert await resp.json() == envelope(403, "Forbidden", "users of evil.test are not served here", 403100)


async def test_a_sixth_failed_login_gets_429_with_retry_after(
    client: TestClient, clock: FixedClock, verifier: Any
) -> None:
    for n in range(5):
        async with client.get(f"{AUTH}/login", headers=basic("alice@example.test", f"guess-{n}")) as resp:
            assert resp.status == 401
    clock.advance(15_000)
    async with client.get(f"{AUTH}/login", headers=basic("alice@example.test", "alice-pw")) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "45"
        assert await resp.json() == envelope(
            429, "Too Many Requests", "too many failed logins; try again in 45 s", 429000
        )
    assert len(verifier.calls) == 5  # the sixth never reached the XMPP server
    await log_in(client, "bob@example.test", "bob-pw")


@pytest.mark.parametrize(
    "style", ["Authorization", "X-Auth-Token", "Access-Token"]
)
async def test_the_token_is_accepted_in_three_header_styles(
    client: TestClient, alice: Session, style: str
) -> None:
    headers = bearer(alice.token) if style == "Authorization" else {style: alice.token}
    async with client.get(alice.presences + "/received", headers=headers) as resp:
        assert resp.status == 200
        assert await resp.json() == {"data": [], "limit": 100, "offset": 0, "total": 0}


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"X-Auth-Token": "nope"}, {"Access-Token": ""}]
)
async def test_requests_without_a_valid_token_get_401(
    client: TestClient, alice: Session, headers: dict[str, str]
) -> None:
    async with client.get(alice.presences + "/sent", headers=headers) as resp:
        assert resp.status == 401
        body = await resp.json()
    assert (body["errorCode"], body["errorMsg"], body["errorDetailsCode"]) == (401, "Unauthorized", 401000)


# aiohttp decodes header bytes as UTF-8 with surrogateescape: these reached the token hash
# as lone surrogates (UnicodeEncodeError, a 500). A token is visible ASCII; anything else
# is no token.
BAD_TOKEN_HEADERS = [
    b"Access-Token: \xc3\x28",
    b"X-Auth-Token: \xff\xfe",
    b"Authorization: Bearer \xff",
    b"Authorization: Bearer caf\xc3\xa9",  # valid UTF-8, not ASCII
    b"X-Auth-Token: two words",
]


@pytest.mark.parametrize("header", BAD_TOKEN_HEADERS)
@pytest.mark.parametrize("call", ["list", "logout"])
async def test_a_token_that_is_not_visible_ascii_is_no_token(
    client: TestClient, alice: Session, header: bytes, call: str
) -> None:
    target = f"{alice.presences}/sent" if call == "list" else f"{AUTH}/logout"
    answer = await raw_http(
        client.host, client.port, b"GET " + target.encode() + b" HTTP/1.1\r\nHost: x\r\n" + header
    )
    assert (answer.status, answer.json()) == (401, envelope(401, "Unauthorized", "missing token", 401000))


async def test_logout_revokes_the_token(client: TestClient, alice: Session) -> None:
    async with client.get(f"{AUTH}/logout", headers=alice.headers) as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "Logout successfully"}
    async with client.get(alice.presences + "/sent", headers=alice.headers) as resp:
        assert resp.status == 401
        assert await resp.json() == envelope(401, "Unauthorized", "invalid or expired token", 401000)
    async with client.get(f"{AUTH}/logout", headers=alice.headers) as resp:
        assert resp.status == 401


async def test_an_expired_token_is_refused(client: TestClient, alice: Session, clock: FixedClock) -> None:
    clock.advance(3600 * 1000)
    status, body = await alice.get("/sent")
    assert (status, body) == (401, envelope(401, "Unauthorized", "invalid or expired token", 401000))


# ---- presence requests -----------------------------------------------------------------


async def test_create_by_jid_and_by_user_id(alice: Session, bob: Session, db: Database) -> None:
    status, body = await alice.post("", {"toJid": "bob@example.test"})
    assert status == 200
    request_id = body["data"]["id"]
    assert body == {
        "data": {
            "id": request_id,
            "fromUserId": alice.id,
            "toUserId": bob.id,
            "status": "pending",
            "requestDate": START_ISO,
            "acceptationDate": None,
            "declinationDate": None,
            "cancellationDate": None,
            "fromJid": "alice@example.test",
            "toJid": "bob@example.test",
        }
    }
    status, body = await bob.post("", {"toUserId": alice.id})
    assert status == 200
    assert (body["data"]["fromUserId"], body["data"]["toUserId"]) == (bob.id, alice.id)
    assert {(r[1], r[2]) for r in await request_rows(db)} == {(alice.id, bob.id), (bob.id, alice.id)}


@pytest.mark.parametrize(
    ("payload", "status", "msg", "code"),
    [
        ({"toJid": "alice@example.test"}, 400, "Bad Request", 400000),
        ({"toJid": "mallory@evil.test"}, 400, "Bad Request", 400000),
        ({"toJid": "not a jid"}, 400, "Bad Request", 400000),
        # A control character would make any stanza to this JID invalid XML, and the
        # server would close the component's stream at every retry of the row.
        ({"toJid": "bo\u0001b@example.test"}, 400, "Bad Request", 400000),
        ({"toJid": "bo\uffffb@example.test"}, 400, "Bad Request", 400000),
        ({"toUserId": "xyz"}, 400, "Bad Request", 400000),
        ({"toUserId": "0" * 24}, 404, "Not Found", 404001),
        ({}, 400, "Bad Request", 400000),
        ({"toJid": "bob@example.test", "toUserId": "0" * 24}, 400, "Bad Request", 400000),
        ({"toJid": "bob@example.test", "extra": 1}, 400, "Bad Request", 400000),
        (["bob@example.test"], 400, "Bad Request", 400000),
    ],
)
async def test_create_refusals(
    alice: Session, db: Database, payload: Any, status: int, msg: str, code: int
) -> None:
    got_status, body = await alice.post("", payload)
    assert (got_status, body["errorCode"], body["errorMsg"], body["errorDetailsCode"]) == (
        status, status, msg, code,
    )
    assert await request_rows(db) == []


async def test_create_with_a_body_that_is_not_json(client: TestClient, alice: Session) -> None:
    async with client.post(alice.presences, data=b"{oops", headers=alice.headers) as resp:
        assert resp.status == 400
        assert await resp.json() == envelope(400, "Bad Request", "body is not valid JSON", 400000)


@pytest.mark.parametrize(
    ("raw", "details"),
    [
        # 500 levels fit under MAX_BODY; 1000 made json.loads raise RecursionError (a 500).
        (b"[" * 500 + b"]" * 500, "body nests more than 32 levels of arrays and objects"),
        (b'{"toJid": ' + b"[" * 33 + b"]" * 33 + b"}", "body nests more than 32 levels of arrays and objects"),
        (b'{"toJid": "b\xf6b@example.test"}', "body is not UTF-8"),
        ('{"toJid": "bob@example.test"}'.encode("utf-16"), "body is not UTF-8"),
        (b'{"toJid": Infinity}', "body is not valid JSON"),
    ],
)
async def test_create_with_a_body_too_deep_or_not_utf8(
    alice: Session, db: Database, raw: bytes, details: str
) -> None:
    async with alice.client.post(alice.presences, data=raw, headers=alice.headers) as resp:
        assert (resp.status, await resp.json()) == (400, envelope(400, "Bad Request", details, 400000))
    assert await request_rows(db) == []


async def test_a_lone_surrogate_echoed_in_an_error_is_still_answered(alice: Session, db: Database) -> None:
    # JSON lets a client escape a lone surrogate; the unknown-field error echoes the name,
    # which orjson refuses to encode: the answer falls back to json.dumps, never a 500.
    raw = b'{"toJid": "bob@example.test", "\\ud800": 1}'
    async with alice.client.post(alice.presences, data=raw, headers=alice.headers) as resp:
        assert resp.status == 400
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        body = await resp.json()
    assert body == envelope(400, "Bad Request", "unknown field(s): \ud800", 400000)
    assert await request_rows(db) == []


async def test_create_twice_is_a_409_duplicate(alice: Session, bob: Session) -> None:
    await create(alice, bob)
    status, body = await alice.post("", {"toJid": bob.jid})
    assert status == 409
    assert body == envelope(
        409, "Conflict", "a pending or accepted request to bob@example.test already exists", 409661
    )


async def test_another_users_path_is_forbidden(alice: Session, bob: Session) -> None:
    async with alice.client.get(bob.presences + "/received", headers=alice.headers) as resp:
        assert resp.status == 403
        assert await resp.json() == envelope(
            403, "Forbidden", "userId in the path must be the logged-in user", 403100
        )


async def test_get_one_request_in_each_format(alice: Session, bob: Session) -> None:
    request = await create(alice, bob)
    status, body = await bob.get(f"/{request['id']}")
    assert (status, body) == (200, {"data": request})
    _, small = await alice.get(f"/{request['id']}", {"format": "small"})
    assert small == {
        "data": {
            "id": request["id"],
            "fromUserId": alice.id,
            "toUserId": bob.id,
            "status": "pending",
            "requestDate": START_ISO,
        }
    }
    _, medium = await alice.get(f"/{request['id']}", {"format": "medium"})
    assert medium == {"data": {**small["data"], "acceptationDate": None}}


async def test_get_by_a_third_user_or_unknown_id_is_404(client: TestClient, alice: Session, bob: Session) -> None:
    request = await create(alice, bob)
    carol = await log_in(client, "carol@example.test", "carol-pw")
    assert await carol.get(f"/{request['id']}") == (
        404, envelope(404, "Not Found", f"presence request {request['id']} not found", 404001)
    )
    unknown = new_object_id()
    assert (await alice.get(f"/{unknown}"))[0] == 404
    status, body = await alice.get("/not-an-id")
    assert (status, body["errorDetailsCode"]) == (400, 400000)


async def test_accept_then_interrupt(alice: Session, bob: Session, db: Database, clock: FixedClock) -> None:
    request = await create(alice, bob)
    clock.advance(1500)
    status, body = await bob.post(f"/{request['id']}/accept")
    assert status == 200
    assert body == {
        "data": {
            **request,
            "status": "accepted",
            "acceptationDate": "2026-01-01T00:00:01.500Z",
        }
    }
    assert (await bob.post(f"/{request['id']}/accept")) == (
        409,
        envelope(409, "Conflict", f"request {request['id']} is accepted; accept needs it pending", 409663),
    )
    status, body = await bob.post(f"/{request['id']}/interrupt")
    assert (status, body["data"]["status"]) == (200, "interrupted")
    assert await request_rows(db) == []


async def test_decline_and_cancel(alice: Session, bob: Session, db: Database, clock: FixedClock) -> None:
    first = await create(alice, bob)
    clock.advance(1)
    status, body = await bob.post(f"/{first['id']}/decline")
    assert (status, body) == (
        200, {"data": {**first, "status": "declined", "declinationDate": "2026-01-01T00:00:00.001Z"}}
    )
    second = await create(alice, bob)
    status, body = await alice.post(f"/{second['id']}/cancel")
    assert (status, body) == (
        200, {"data": {**second, "status": "canceled", "cancellationDate": "2026-01-01T00:00:00.001Z"}}
    )
    assert await request_rows(db) == []
    assert (await alice.post(f"/{second['id']}/cancel"))[0] == 404


@pytest.mark.parametrize(
    ("transition", "actor"),
    [("accept", "sender"), ("decline", "sender"), ("interrupt", "sender"), ("cancel", "receiver")],
)
async def test_transitions_by_the_wrong_party_are_403(
    alice: Session, bob: Session, transition: str, actor: str
) -> None:
    request = await create(alice, bob)
    who = alice if actor == "sender" else bob
    status, body = await who.post(f"/{request['id']}/{transition}")
    assert (status, body["errorCode"], body["errorMsg"], body["errorDetailsCode"]) == (
        403, 403, "Forbidden", 403100,
    )


# ---- lists --------------------------------------------------------------------------------


@pytest.fixture
async def inbox(client: TestClient, alice: Session, clock: FixedClock) -> list[dict[str, Any]]:
    """Three requests to alice, one second apart; the middle one accepted."""
    made = []
    for i in range(3):
        sender = await log_in(client, f"s{i}@example.test", f"s{i}-pw")
        made.append(await create(sender, alice))
        clock.advance(1000)
    status, body = await alice.post(f"/{made[1]['id']}/accept")
    assert status == 200
    made[1] = body["data"]
    return made


def small(request: dict[str, Any]) -> dict[str, Any]:
    return {k: request[k] for k in ("id", "fromUserId", "toUserId", "status", "requestDate")}


async def test_list_received_default_format_is_small(alice: Session, inbox: list[dict[str, Any]]) -> None:
    assert await alice.get("/received") == (
        200, {"data": [small(r) for r in inbox], "limit": 100, "offset": 0, "total": 3}
    )


@pytest.mark.parametrize(
    ("fmt", "keys"),
    [
        ("small", {"id", "fromUserId", "toUserId", "status", "requestDate"}),
        ("medium", {"id", "fromUserId", "toUserId", "status", "requestDate", "acceptationDate"}),
        (
            "full",
            {
                "id", "fromUserId", "toUserId", "status", "requestDate", "acceptationDate",
                "declinationDate", "cancellationDate", "fromJid", "toJid",
            },
        ),
    ],
)
async def test_list_formats_have_exact_key_sets(
    alice: Session, inbox: list[dict[str, Any]], fmt: str, keys: set[str]
) -> None:
    status, body = await alice.get("/received", {"format": fmt})
    assert status == 200
    assert [set(item) for item in body["data"]] == [keys] * 3
    if fmt == "full":
        assert body["data"] == inbox


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([("status", "pending")], [0, 2]),
        ([("status", "accepted")], [1]),
        ([("status", "pending"), ("status", "accepted")], [0, 1, 2]),
        ([("status", "pending,accepted")], [0, 1, 2]),
        ([("status", "accepted, pending")], [0, 1, 2]),
    ],
)
async def test_list_status_filter_repeatable_or_comma_list(
    alice: Session, inbox: list[dict[str, Any]], params: list[tuple[str, str]], expected: list[int]
) -> None:
    status, body = await alice.get("/received", params)
    assert status == 200
    assert [item["id"] for item in body["data"]] == [inbox[i]["id"] for i in expected]
    assert body["total"] == len(expected)


async def test_list_paging_and_descending_order(alice: Session, inbox: list[dict[str, Any]]) -> None:
    status, body = await alice.get("/received", {"limit": "1", "offset": "1"})
    assert (status, body) == (200, {"data": [small(inbox[1])], "limit": 1, "offset": 1, "total": 3})
    _, body = await alice.get("/received", {"sortOrder": "-1", "sortField": "requestDate"})
    assert [item["id"] for item in body["data"]] == [r["id"] for r in reversed(inbox)]


async def test_list_sent(client: TestClient, alice: Session, bob: Session) -> None:
    request = await create(bob, alice)
    assert await bob.get("/sent", {"format": "full"}) == (
        200, {"data": [request], "limit": 100, "offset": 0, "total": 1}
    )
    assert (await alice.get("/sent"))[1]["total"] == 0


@pytest.mark.parametrize(
    ("params", "details"),
    [
        ({"limit": "abc"}, "limit must be an integer"),
        ({"limit": "-1"}, "limit must be between 0 and 50"),
        ({"limit": "51"}, "limit must be between 0 and 50"),
        ({"offset": "-5"}, "offset must be between 0 and 1000000000"),
        ({"offset": "1.5"}, "offset must be an integer"),
        ({"sortOrder": "asc"}, "sortOrder must be 1 or -1"),
        ({"sortField": "id"}, "sortField must be one of: requestDate"),
        ({"format": "huge"}, "format must be small, medium or full"),
        ({"status": "declined"}, "status must be pending and/or accepted (declined, canceled and interrupted requests are deleted)"),
        ({"status": "bogus"}, "status must be pending and/or accepted"),
    ],
)
async def test_list_parameter_validation(
    alice: Session, params: dict[str, str], details: str
) -> None:
    assert await alice.get("/received", params) == (400, envelope(400, "Bad Request", details, 400000))


# ---- the error path ----------------------------------------------------------------------


async def test_a_body_over_the_limit_gets_413_in_the_envelope(alice: Session) -> None:
    padding = "x" * (MAX_BODY + 1)
    async with alice.client.post(
        alice.presences, json={"toJid": "bob@example.test", "pad": padding}, headers=alice.headers
    ) as resp:
        assert resp.status == 413
        assert await resp.json() == envelope(
            413, HTTPStatus(413).phrase, "request body too large", 413000
        )


async def test_unknown_paths_get_404_in_the_envelope(client: TestClient) -> None:
    async with client.get("/api/rainbow/nothing-here") as resp:
        assert resp.status == 404
        assert await resp.json() == envelope(404, "Not Found", "no such resource", 404000)


async def test_wrong_methods_get_405_in_the_envelope(client: TestClient, alice: Session) -> None:
    async with client.delete(alice.presences + "/received", headers=alice.headers) as resp:
        assert resp.status == 405
        assert await resp.json() == envelope(
            405, "Method Not Allowed", "method DELETE not allowed here", 405000
        )
        assert "GET" in resp.headers["Allow"]


async def test_the_request_id_is_echoed_or_made_up(client: TestClient) -> None:
    async with client.get("/healthz", headers={"X-Request-Id": "abc-123"}) as resp:
        assert resp.headers["X-Request-Id"] == "abc-123"
    async with client.get("/nowhere", headers={"X-Request-Id": "abc-123"}) as resp:
        assert resp.headers["X-Request-Id"] == "abc-123"
    async with client.get("/healthz", headers={"X-Request-Id": "bad id\twith spaces"}) as resp:
        made_up = resp.headers["X-Request-Id"]
    assert made_up != "bad id\twith spaces" and len(made_up) == 32


async def test_an_unexpected_error_is_a_500_without_its_text(
    alice: Session, sharing: PresenceSharing, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("disk /var/secret is on fire")

    monkeypatch.setattr(sharing, "create", explode)
    async with alice.client.post(
        alice.presences, json={"toJid": "bob@example.test"}, headers=alice.headers
    ) as resp:
        assert resp.status == 500
        text = await resp.text()
        assert await resp.json() == envelope(500, "Internal Server Error", "Internal error", 500000)
    assert "secret" not in text and "fire" not in text
    assert "X-Request-Id" in resp.headers


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/api/rainbow/x-slow", 429, envelope(429, "Too Many Requests", "slow down", 429000)),
        ("/v2/share/x-slow", 429, {"error": {"code": 4291000, "msg": "slow down"}}),
        ("/v2/accounts/x-slow", 429, None),  # Kazoo's envelope, checked below
    ],
)
async def test_a_domain_error_with_a_retry_time_gets_retry_after_in_every_family(
    identity: Identity, sharing: PresenceSharing, health: Health, path: str, status: int, body: Any
) -> None:
    async def slow(_request: web.Request) -> web.Response:
        raise TooManyLogins("slow down", retry_after_s=42)

    app = build_app(Services(identity, sharing, health))
    app.router.add_get(path, slow)
    async with TestClient(TestServer(app)) as test_client:
        async with test_client.get(path) as resp:
            assert resp.status == status
            assert resp.headers["Retry-After"] == "42"
            got = await resp.json()
    if body is None:
        assert (got["error"], got["status"], got["data"]) == ("429", "error", {"message": "slow down"})
    else:
        assert got == body


# ---- health --------------------------------------------------------------------------------


async def test_healthz_follows_the_health_check(client: TestClient, health: Health) -> None:
    async with client.get("/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"xmpp": "connected", "storage": "ok", "roster": "granted"}
    health.ok = False
    async with client.get("/healthz") as resp:
        assert resp.status == 503
        assert await resp.json() == {"xmpp": "disconnected", "storage": "ok", "roster": "granted"}
