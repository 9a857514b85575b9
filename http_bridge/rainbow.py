"""Family 1, Rainbow paths: authentication and presence sharing (`PresencesApi`)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from aiohttp import web

from component.clock import iso_ms
from component.commands import (
    CreatePresenceRequest,
    ListPresenceRequests,
    Transition,
    TransitionPresenceRequest,
    parse_bounded_int,
    parse_statuses,
)
from component.errors import BadRequest, Forbidden, Unauthorized
from component.model import (
    BareJid,
    PresenceRequest,
    User,
    parse_bare_jid,
    parse_request_id,
    parse_user_id,
)
from http_bridge.context import USER_JID, services_of
from http_bridge.envelopes import json_response
from http_bridge.inputs import bearer_token, read_json_object

AUTH = "/api/rainbow/authentication/v1.0"
PRESENCES = "/api/rainbow/enduser/v1.0/users/{userId}/presences"

FORMATS = ("small", "medium", "full")
SORT_FIELDS = ("requestDate",)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{AUTH}/login", login)
    r.add_get(f"{AUTH}/logout", logout)
    r.add_post(PRESENCES, create_request)
    r.add_get(f"{PRESENCES}/received", list_received)
    r.add_get(f"{PRESENCES}/sent", list_sent)
    r.add_get(f"{PRESENCES}/{{presenceReqId}}", get_request)
    for transition in Transition:
        r.add_post(f"{PRESENCES}/{{presenceReqId}}/{transition.value}", _transition_handler(transition))


# ---- representation --------------------------------------------------------------


def request_json(request: PresenceRequest, fmt: str = "full") -> dict[str, Any]:
    """The Rainbow presence request object in `small`, `medium` or `full` format."""
    body: dict[str, Any] = {
        "id": request.id,
        "fromUserId": request.from_user.id,
        "toUserId": request.to_user.id,
        "status": request.status.value,
        "requestDate": iso_ms(request.request_date),
    }
    if fmt in ("medium", "full"):
        body["acceptationDate"] = iso_ms(request.acceptation_date)
    if fmt == "full":
        body["declinationDate"] = iso_ms(request.declination_date)
        body["cancellationDate"] = iso_ms(request.cancellation_date)
        body["fromJid"] = request.from_user.jid
        body["toJid"] = request.to_user.jid
    return body


def user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "jid_im": user.jid, "loginEmail": user.jid}


# ---- auth --------------------------------------------------------------------------


async def caller(request: web.Request) -> User:
    user = await services_of(request).identity.authenticate(bearer_token(request))
    request[USER_JID] = user.jid
    return user


async def path_user(request: web.Request) -> User:
    """The caller, who must be the `{userId}` of the path (403 otherwise)."""
    user = await caller(request)
    if request.match_info["userId"] != user.id:
        raise Forbidden("userId in the path must be the logged-in user")
    return user


async def login(request: web.Request) -> web.Response:
    auth = request.headers.get("Authorization", "")
    if auth[:6].lower() != "basic ":
        raise Unauthorized("login needs Authorization: Basic base64(jid:password)")
    try:
        decoded = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise Unauthorized("malformed Basic credentials") from exc
    jid, sep, password = decoded.partition(":")
    if not sep:
        raise Unauthorized("malformed Basic credentials")
    # The peer's address as the socket shows it; X-Forwarded-For is not trusted.
    token, user = await services_of(request).identity.login(jid, password, request.remote)
    request[USER_JID] = user.jid
    return json_response({"token": token, "loggedInUser": user_json(user)})


async def logout(request: web.Request) -> web.Response:
    await caller(request)
    token = bearer_token(request)
    assert token is not None
    await services_of(request).identity.logout(token)
    return json_response({"status": "Logout successfully"})


# ---- presence sharing --------------------------------------------------------------


async def create_request(request: web.Request) -> web.Response:
    user = await path_user(request)
    body = await read_json_object(request)
    unknown = sorted(set(body) - {"toUserId", "toJid"})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    to_user_id = parse_user_id(body["toUserId"], "toUserId") if "toUserId" in body else None
    to_jid: BareJid | None = parse_bare_jid(body["toJid"], "toJid") if "toJid" in body else None
    created = await services_of(request).sharing.create(
        CreatePresenceRequest(user, to_user_id=to_user_id, to_jid=to_jid)
    )
    return json_response({"data": request_json(created)})


async def get_request(request: web.Request) -> web.Response:
    user = await path_user(request)
    request_id = parse_request_id(request.match_info["presenceReqId"])
    found = await services_of(request).sharing.get(user, request_id)
    return json_response({"data": request_json(found, _format(request, "full"))})


def _transition_handler(transition: Transition):
    async def handler(request: web.Request) -> web.Response:
        user = await path_user(request)
        request_id = parse_request_id(request.match_info["presenceReqId"])
        done = await services_of(request).sharing.transition(
            TransitionPresenceRequest(user, request_id, transition)
        )
        return json_response({"data": request_json(done)})

    handler.__name__ = f"{transition.value}_request"
    return handler


async def list_received(request: web.Request) -> web.Response:
    return await _list(request, "received")


async def list_sent(request: web.Request) -> web.Response:
    return await _list(request, "sent")


async def _list(request: web.Request, box: str) -> web.Response:
    user = await path_user(request)
    q = request.query
    fmt = _format(request)
    max_page = services_of(request).max_page_size
    limit = parse_bounded_int(q.get("limit"), "limit", 100, 0, max_page)
    offset = parse_bounded_int(q.get("offset"), "offset", 0, 0, 10**9)
    sort_field = q.get("sortField", "requestDate")
    if sort_field not in SORT_FIELDS:
        raise BadRequest(f"sortField must be one of: {', '.join(SORT_FIELDS)}")
    sort_order = q.get("sortOrder", "1")
    if sort_order not in ("1", "-1"):
        raise BadRequest("sortOrder must be 1 or -1")
    page = await services_of(request).sharing.list(
        ListPresenceRequests(
            user,
            box,  # type: ignore[arg-type]
            parse_statuses(q.getall("status", [])),
            limit,
            offset,
            descending=sort_order == "-1",
        )
    )
    return json_response(
        {
            "data": [request_json(item, fmt) for item in page.items],
            "limit": page.limit,
            "offset": page.offset,
            "total": page.total,
        }
    )


def _format(request: web.Request, default: str = "small") -> str:
    fmt = request.query.get("format", default)
    if fmt not in FORMATS:
        raise BadRequest("format must be small, medium or full")
    return fmt

