"""Family 2, Kazoo crossbar paths: provisioning and presence subscriptions/state.

Token in `X-Auth-Token` (any of the three header styles works): the admin token
provisions and reads every account; a user's token reads its own account.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from component.commands import (
    CreateAccount,
    CreateAccountUser,
    CreateDevice,
    Principal,
    StateChange,
)
from component.errors import BadRequest
from component.model import (
    Account,
    AccountUser,
    Device,
    Subscription,
    parse_account_id,
    parse_device_id,
    parse_user_id,
)
from http_bridge.context import USER_JID, Services, services_of
from http_bridge.envelopes import kazoo_envelope
from http_bridge.inputs import bearer_token, read_json_object

A = "/v2/accounts/{account_id}"
# Seconds from 0000-01-01 to 1970-01-01: Kazoo writes timestamps in Gregorian seconds.
GREGORIAN_OFFSET_S = 62_167_219_200
COMMAND_SENT = "command sent"


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_put("/v2/accounts", put_account)
    r.add_get("/v2/accounts", list_accounts)
    r.add_get(A, get_account)
    r.add_delete(A, delete_account)
    r.add_put(f"{A}/users", put_user)
    r.add_get(f"{A}/users", list_users)
    r.add_get(f"{A}/users/{{user_id}}", get_user)
    r.add_delete(f"{A}/users/{{user_id}}", delete_user)
    r.add_post(f"{A}/users/{{user_id}}/presence", post_user_presence)
    r.add_put(f"{A}/devices", put_device)
    r.add_get(f"{A}/devices", list_devices)
    r.add_get(f"{A}/devices/{{device_id}}", get_device)
    r.add_delete(f"{A}/devices/{{device_id}}", delete_device)
    r.add_post(f"{A}/devices/{{device_id}}/presence", post_device_presence)
    r.add_get(f"{A}/presence", list_presence)
    r.add_get(f"{A}/presence/{{extension}}", get_extension_presence)
    r.add_post(f"{A}/presence/{{extension}}", post_extension_presence)


# ---- representation --------------------------------------------------------------


def account_json(account: Account) -> dict[str, Any]:
    return {"id": account.id, "name": account.name, "realm": account.realm}


def user_json(user: AccountUser) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": user.user.id,
        "username": user.username,
        "jid": user.user.jid,
    }
    if user.presence_id:
        body["presence_id"] = user.presence_id
    if user.email:
        body["email"] = user.email
    return body


def device_json(device: Device) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": device.id,
        "name": device.name,
        "sip": {"username": device.sip_username},
    }
    if device.presence_id:
        body["presence_id"] = device.presence_id
    if device.owner_id:
        body["owner_id"] = device.owner_id
    return body


def subscriptions_json(found: list[Subscription], stalker: str) -> dict[str, Any]:
    """Kazoo's listing: {"subscriptions": {EXT: {EVENT: {SUB_ID: {...}}}}}.

    `expires` is 0: an XMPP subscription lasts until the subscriber unsubscribes.
    `notify.sequence` counts the notifications sent to that subscriber, `notify.body`
    is the state last sent, `reply` is always 0 (XMPP presence is not answered).
    """
    tree: dict[str, dict[str, dict[str, Any]]] = {}
    for s in found:
        tree.setdefault(s.extension, {}).setdefault(s.event, {})[s.id] = {
            "expires": 0,
            "from": s.subscriber,
            "notify": {
                "body": s.notify_body or "undefined",
                "reply": 0,
                "sequence": s.notify_sequence,
            },
            "stalker": stalker,
            "timestamp": s.created_at // 1000 + GREGORIAN_OFFSET_S,
            "version": s.version,
        }
    return {"subscriptions": tree}


# ---- helpers ---------------------------------------------------------------------


async def principal(request: web.Request) -> Principal:
    caller = await services_of(request).identity.principal(bearer_token(request))
    request[USER_JID] = caller.user.jid if caller.user else "admin"
    return caller


def _family2(request: web.Request) -> Services:
    services = services_of(request)
    assert services.provisioning is not None and services.states is not None
    return services


async def _data(request: web.Request) -> dict[str, Any]:
    """Kazoo request bodies wrap the object in `data`."""
    body = await read_json_object(request)
    data = body.get("data")
    if not isinstance(data, dict):
        raise BadRequest('the body must be {"data": {...}}', "data", "required")
    return data


def _account_id(request: web.Request):
    return parse_account_id(request.match_info["account_id"])


# ---- accounts --------------------------------------------------------------------


async def put_account(request: web.Request) -> web.Response:
    caller = await principal(request)
    data = await _data(request)
    account = await _family2(request).provisioning.create_account(
        caller, CreateAccount(data.get("name"), data.get("realm"))  # type: ignore[arg-type]
    )
    return kazoo_envelope(request, account_json(account), 201)


async def list_accounts(request: web.Request) -> web.Response:
    caller = await principal(request)
    found = await _family2(request).provisioning.list_accounts(caller)
    return kazoo_envelope(request, [account_json(a) for a in found])


async def get_account(request: web.Request) -> web.Response:
    caller = await principal(request)
    account = await _family2(request).provisioning.account(caller, _account_id(request))
    return kazoo_envelope(request, account_json(account))


async def delete_account(request: web.Request) -> web.Response:
    caller = await principal(request)
    account = await _family2(request).provisioning.delete_account(caller, _account_id(request))
    return kazoo_envelope(request, account_json(account))


# ---- users -----------------------------------------------------------------------


async def put_user(request: web.Request) -> web.Response:
    caller = await principal(request)
    data = await _data(request)
    user = await _family2(request).provisioning.create_user(
        caller,
        _account_id(request),
        CreateAccountUser(
            data.get("username"),  # type: ignore[arg-type]
            data.get("presence_id"),
            data.get("email"),
        ),
    )
    return kazoo_envelope(request, user_json(user), 201)


async def list_users(request: web.Request) -> web.Response:
    caller = await principal(request)
    found = await _family2(request).provisioning.list_users(caller, _account_id(request))
    return kazoo_envelope(request, [user_json(u) for u in found])


async def get_user(request: web.Request) -> web.Response:
    caller = await principal(request)
    user = await _family2(request).provisioning.user(
        caller, _account_id(request), parse_user_id(request.match_info["user_id"], "user_id")
    )
    return kazoo_envelope(request, user_json(user))


async def delete_user(request: web.Request) -> web.Response:
    caller = await principal(request)
    user = await _family2(request).provisioning.delete_user(
        caller, _account_id(request), parse_user_id(request.match_info["user_id"], "user_id")
    )
    return kazoo_envelope(request, user_json(user))


async def post_user_presence(request: web.Request) -> web.Response:
    caller = await principal(request)
    change = StateChange.from_body(await _data(request))
    await _family2(request).states.change_user(
        caller,
        _account_id(request),
        parse_user_id(request.match_info["user_id"], "user_id"),
        change,
    )
    return kazoo_envelope(request, COMMAND_SENT, 202)


# ---- devices ---------------------------------------------------------------------


async def put_device(request: web.Request) -> web.Response:
    caller = await principal(request)
    data = await _data(request)
    sip = data.get("sip")
    if not isinstance(sip, dict):
        raise BadRequest("sip.username is required", "sip.username", "required")
    device = await _family2(request).provisioning.create_device(
        caller,
        _account_id(request),
        CreateDevice(
            data.get("name"),  # type: ignore[arg-type]
            sip.get("username"),  # type: ignore[arg-type]
            data.get("presence_id"),
            data.get("owner_id"),
        ),
    )
    return kazoo_envelope(request, device_json(device), 201)


async def list_devices(request: web.Request) -> web.Response:
    caller = await principal(request)
    found = await _family2(request).provisioning.list_devices(caller, _account_id(request))
    return kazoo_envelope(request, [device_json(d) for d in found])


async def get_device(request: web.Request) -> web.Response:
    caller = await principal(request)
    device = await _family2(request).provisioning.device(
        caller, _account_id(request), parse_device_id(request.match_info["device_id"])
    )
    return kazoo_envelope(request, device_json(device))


async def delete_device(request: web.Request) -> web.Response:
    caller = await principal(request)
    device = await _family2(request).provisioning.delete_device(
        caller, _account_id(request), parse_device_id(request.match_info["device_id"])
    )
    return kazoo_envelope(request, device_json(device))


async def post_device_presence(request: web.Request) -> web.Response:
    caller = await principal(request)
    change = StateChange.from_body(await _data(request))
    await _family2(request).states.change_device(
        caller, _account_id(request), parse_device_id(request.match_info["device_id"]), change
    )
    return kazoo_envelope(request, COMMAND_SENT, 202)


# ---- presence --------------------------------------------------------------------


_EVENT = re.compile(r"[a-z0-9-]{1,64}")


def _event_filter(request: web.Request) -> str | None:
    event = request.query.get("event")
    if event is not None and not _EVENT.fullmatch(event):
        raise BadRequest("event must be a word such as presence or dialog", "event", "pattern")
    return event


async def list_presence(request: web.Request) -> web.Response:
    caller = await principal(request)
    services = _family2(request)
    found = await services.states.listing(caller, _account_id(request), event=_event_filter(request))
    return kazoo_envelope(request, subscriptions_json(found, services.component_jid))


async def get_extension_presence(request: web.Request) -> web.Response:
    caller = await principal(request)
    services = _family2(request)
    found = await services.states.listing(
        caller,
        _account_id(request),
        extension=request.match_info["extension"],
        event=_event_filter(request),
    )
    return kazoo_envelope(request, subscriptions_json(found, services.component_jid))


async def post_extension_presence(request: web.Request) -> web.Response:
    caller = await principal(request)
    change = StateChange.from_body(await _data(request))
    await _family2(request).states.change_extension(
        caller, _account_id(request), request.match_info["extension"], change
    )
    return kazoo_envelope(request, COMMAND_SENT, 202)
