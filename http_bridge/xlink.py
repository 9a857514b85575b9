"""Family 3, Xlink paths: device sharing by invitation (`share/device`).

The token goes in `Access-Token` (any of the three header styles works). Errors
use Xlink's `{"error": {"code", "msg"}}` with its numeric codes; the HTTP status
is the code's first three digits.
"""

from __future__ import annotations

import io
import re

import segno
from aiohttp import web

from component.commands import ShareAnswer, ShareDevice
from component.errors import BadRequest
from component.device_sharing import DeviceSharing, redeem_uri, share_fields
from component.model import User, parse_invite_code
from http_bridge.context import USER_JID, services_of
from http_bridge.envelopes import json_response
from http_bridge.inputs import bearer_token, read_json_object

P = "/v2/share/device"
QR_SCALE = 8  # pixels per module: a 33-module code is a 328 px image with its quiet zone

# An invite code is the credential of a share (whoever holds a qrcode share's code may
# accept it): paths that carry one are logged with its first 6 characters only, as
# component/device_sharing.py writes codes in its own lines. By shape, not by route, so a
# path that matches no route (a typo, a 404) is redacted too.
_CODE_IN_PATH = re.compile(rf"^({P}/(?:delete|qrcode)/)([^/.]{{6}})[^/.]+")


def redact_invite_codes(path: str) -> str:
    """`path` as it may be logged: an invite code in it cut to `abcdef…`."""
    found = _CODE_IN_PATH.match(path)  # a match first: sub() with a template costs every path
    if found is None:
        return path
    return f"{found[1]}{found[2]}…{path[found.end():]}"


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post(P, share)
    for action in ("cancel", "accept", "deny"):
        r.add_post(f"{P}/{action}", _answer_handler(action))
    r.add_get(f"{P}/list", list_shares)
    r.add_delete(f"{P}/delete/{{invite_code}}", delete)
    r.add_get(f"{P}/qrcode/{{invite_code}}.{{fmt:png|svg}}", qrcode)


async def caller(request: web.Request) -> User:
    user = await services_of(request).identity.authenticate(bearer_token(request))
    request[USER_JID] = user.jid
    return user


def _sharing(request: web.Request) -> DeviceSharing:
    sharing = services_of(request).device_sharing
    assert sharing is not None
    return sharing


def _ok() -> web.Response:
    """Xlink answers its commands with 200 and no content."""
    return web.Response(status=200)


async def share(request: web.Request) -> web.Response:
    user = await caller(request)
    body = await read_json_object(request)
    sharing = _sharing(request)
    created = await sharing.share(ShareDevice.from_fields(user, body, sharing.settings.max_expire_s))
    return json_response({"invite_code": created.invite_code})


def _answer_handler(action: str):
    """cancel / accept / deny: the same body, the action of the same name, 200 empty."""

    async def handler(request: web.Request) -> web.Response:
        user = await caller(request)
        answer = ShareAnswer.from_fields(user, await read_json_object(request))
        await getattr(_sharing(request), action)(answer)
        return _ok()

    handler.__name__ = f"{action}_share"
    return handler


async def list_shares(request: web.Request) -> web.Response:
    user = await caller(request)
    found = await _sharing(request).list(user)
    return json_response([share_fields(s) for s in found])


async def delete(request: web.Request) -> web.Response:
    user = await caller(request)
    await _sharing(request).delete(user, parse_invite_code(request.match_info["invite_code"]))
    return _ok()


QR_CONTENTS = ("code", "uri")


async def qrcode(request: web.Request) -> web.Response:
    """The invite code as a QR image, for the share's manager only: the code alone
    (`?content=code`, the default, as Xlink apps read it), or the XMPP URI that opens the
    service's shares command for it (`?content=uri`, for a phone's XMPP client)."""
    user = await caller(request)
    invite_code = parse_invite_code(request.match_info["invite_code"])
    content = request.query.get("content", "code")
    if content not in QR_CONTENTS:
        raise BadRequest("content must be code or uri", "content", "enum")
    sharing = _sharing(request)
    found = await sharing.invite_for_qr(user, invite_code)
    text = found.invite_code
    if content == "uri":
        text = redeem_uri(sharing.settings.component_jid, found.invite_code)
    code = segno.make(text, error="m")
    out = io.BytesIO()
    fmt = request.match_info["fmt"]
    code.save(out, kind=fmt, scale=QR_SCALE, border=4)
    content_type = "image/png" if fmt == "png" else "image/svg+xml"
    return web.Response(
        body=out.getvalue(),
        content_type=content_type,
        headers={"Cache-Control": "no-store"},  # the image is the secret
    )
