"""Typed commands: what an adapter (XMPP stanza or HTTP request) asks an action to do.

Each checks its own invariants, so an action never sees a malformed command.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from component.errors import BadRequest, MissingField
from component.model import (
    STORED_STATUSES,
    BareJid,
    PresenceState,
    RequestId,
    RequestStatus,
    User,
    UserId,
    parse_email,
    parse_extension,
    parse_invite_code,
    parse_user_id,
)


class Transition(StrEnum):
    ACCEPT = "accept"
    DECLINE = "decline"
    CANCEL = "cancel"
    INTERRUPT = "interrupt"


@dataclass(frozen=True)
class CreatePresenceRequest:
    caller: User
    to_user_id: UserId | None = None
    to_jid: BareJid | None = None

    def __post_init__(self) -> None:
        if (self.to_user_id is None) == (self.to_jid is None):
            raise BadRequest("exactly one of toUserId and toJid is required")


@dataclass(frozen=True)
class TransitionPresenceRequest:
    caller: User
    request_id: RequestId
    transition: Transition


Box = Literal["received", "sent"]


@dataclass(frozen=True)
class ListPresenceRequests:
    caller: User
    box: Box
    statuses: frozenset[RequestStatus] = STORED_STATUSES
    limit: int = 100
    offset: int = 0
    descending: bool = False
    # XEP-0059 keyset cursor: the id of the last request of the previous page.
    after: RequestId | None = None

    def __post_init__(self) -> None:
        if self.box not in ("received", "sent"):
            raise BadRequest("box must be received or sent")
        if not self.statuses or not self.statuses <= STORED_STATUSES:
            raise BadRequest("status must be pending and/or accepted")
        if self.limit < 0 or self.offset < 0:
            raise BadRequest("limit and offset must not be negative")


def parse_statuses(values: Iterable[str]) -> frozenset[RequestStatus]:
    """`status` filter values (repeated and/or comma-separated); none means all stored ones."""
    names = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if not names:
        return STORED_STATUSES
    try:
        statuses = frozenset(RequestStatus(name) for name in names)
    except ValueError as exc:
        raise BadRequest("status must be pending and/or accepted") from exc
    if not statuses <= STORED_STATUSES:
        raise BadRequest(
            "status must be pending and/or accepted (declined, canceled and interrupted"
            " requests are deleted)"
        )
    return statuses


def parse_bounded_int(text: str | None, name: str, default: int, low: int, high: int) -> int:
    """A paging number from a query string or attribute; `default` when absent or empty."""
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError as exc:
        raise BadRequest(f"{name} must be an integer") from exc
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return value


# ---- family 2 ----------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who calls a family 2 path: the admin token (user None) or a user's token."""

    user: User | None

    @property
    def is_admin(self) -> bool:
        return self.user is None


# Characters outside XML 1.0's Char production. Free text ends up in stanzas (roster
# item names, share attributes in IQ results); one of these would make the server
# close the component's stream, again at every retry of the same outbox row.
_NOT_XML_CHAR = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(value: str, field: str) -> str:
    if _NOT_XML_CHAR.search(value):
        raise BadRequest(f"{field} contains a control or non-character code point", field, "pattern")
    return value


def _text(value: object, field: str, max_len: int = 128, required: bool = True) -> str | None:
    if value is None:
        if required:
            raise BadRequest(f"{field} is required", field, "required")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string", field, "type")
    if not value.strip() and required:
        raise BadRequest(f"{field} must not be empty", field, "required")
    if len(value) > max_len:
        raise BadRequest(f"{field} must be at most {max_len} characters", field, "maxLength")
    return _xml_text(value, field).strip()


@dataclass(frozen=True)
class CreateAccount:
    name: str
    realm: str

    def __post_init__(self) -> None:
        _text(self.name, "name")
        _text(self.realm, "realm", 253)


@dataclass(frozen=True)
class CreateAccountUser:
    username: str
    presence_id: str | None = None
    # Vouched for by the admin who provisions it: e-mail device shares find the user by it.
    email: str | None = None

    def __post_init__(self) -> None:
        _text(self.username, "username", 256)
        if self.presence_id is not None:
            parse_extension(self.presence_id, "presence_id")
        if self.email is not None:
            parse_email(self.email, "email")


@dataclass(frozen=True)
class CreateDevice:
    name: str
    sip_username: str
    presence_id: str | None = None
    owner_id: UserId | None = None

    def __post_init__(self) -> None:
        _text(self.name, "name")
        parse_extension(self.sip_username, "sip.username")
        if self.presence_id is not None:
            parse_extension(self.presence_id, "presence_id")
        if self.owner_id is not None:
            parse_user_id(self.owner_id, "owner_id")


class StateAction(StrEnum):
    SET = "set"
    RESET = "reset"


@dataclass(frozen=True)
class StateChange:
    """`{"action": "reset"}` / `{"reset": true}` / `{"action": "set", "state": S}`."""

    action: StateAction
    state: str = "terminated"

    def __post_init__(self) -> None:
        if self.state not in PresenceState._value2member_map_:
            raise BadRequest(
                "state must be one of confirmed, early, terminated", "state", "enum"
            )

    @classmethod
    def from_body(cls, data: object) -> StateChange:
        if not isinstance(data, dict):
            raise BadRequest("data must be an object", "data", "type")
        if data.get("reset") is True and "action" not in data:
            return cls(StateAction.RESET)
        action = data.get("action")
        if action == "reset":
            # seeds/002 shows {"action": "reset", "state": ...} for users: still a reset.
            return cls(StateAction.RESET)
        if action == "set":
            if "state" not in data:
                raise BadRequest("state is required with action set", "state", "required")
            if not isinstance(data["state"], str):
                raise BadRequest("state must be a string", "state", "type")
            return cls(StateAction.SET, data["state"])
        if action is None:
            raise BadRequest('action is required ("set" or "reset")', "action", "required")
        raise BadRequest('action must be "set" or "reset"', "action", "enum")

    @property
    def target_state(self) -> str:
        return "terminated" if self.action is StateAction.RESET else self.state


# ---- family 3 ----------------------------------------------------------------------

AUTHORITIES = ("R", "W", "RW")


@dataclass(frozen=True)
class ShareDevice:
    """POST /v2/share/device: the manager invites someone to share a device."""

    caller: User
    device_id: str
    mode: str
    expire: int
    user: str | None = None
    authority: str = "RW"

    @classmethod
    def from_fields(cls, caller: User, fields: dict[str, object], max_expire_s: int) -> ShareDevice:
        """Validate Xlink's request fields: missing -> MissingField (4001002), bad -> 4001001."""
        for name in ("device_id", "expire", "mode"):
            if fields.get(name) in (None, ""):
                raise MissingField(f"{name} is required", name, "required")
        device_id = fields["device_id"]
        if not isinstance(device_id, str):
            raise BadRequest("device_id must be a string", "device_id", "type")
        mode = fields["mode"]
        if mode not in ("app", "qrcode", "email"):
            raise BadRequest("mode must be app, qrcode or email", "mode", "enum")
        expire = fields["expire"]
        if isinstance(expire, str) and expire.isascii() and expire.isdigit():
            expire = int(expire)
        elif isinstance(expire, float) and expire.is_integer():
            expire = int(expire)  # JSON has one number type: 7200.0 is the integer 7200
        if not isinstance(expire, int) or isinstance(expire, bool) or not 1 <= expire <= max_expire_s:
            raise BadRequest(
                f"expire must be a number of seconds from 1 to {max_expire_s}", "expire", "range"
            )
        user = fields.get("user")
        if mode in ("app", "email") and user in (None, ""):
            raise MissingField(f"user is required with mode {mode}", "user", "required")
        if mode == "qrcode" and user not in (None, ""):
            raise BadRequest("a qrcode share names no user", "user", "forbidden")
        if user is not None and (not isinstance(user, str) or len(user) > 254):
            raise BadRequest("user must be a user id, a JID or an e-mail address", "user", "type")
        authority = fields.get("authority", "RW")
        if authority not in AUTHORITIES:
            raise BadRequest("authority must be R, W or RW", "authority", "enum")
        unknown = sorted(set(fields) - {"device_id", "expire", "mode", "user", "authority"})
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(unknown)}", unknown[0], "unknown")
        return cls(caller, device_id, mode, expire, user or None, authority)  # type: ignore[arg-type]


MAX_REASON = 256


@dataclass(frozen=True)
class ShareAnswer:
    """cancel / accept / deny: the invite code, and an optional reason."""

    caller: User
    invite_code: str
    reason: str | None = None

    @classmethod
    def from_fields(cls, caller: User, fields: dict[str, object]) -> ShareAnswer:
        code = fields.get("invite_code")
        if code in (None, ""):
            raise MissingField("invite_code is required", "invite_code", "required")
        reason = fields.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
            raise BadRequest(
                f"reason must be text of at most {MAX_REASON} characters", "reason", "maxLength"
            )
        if reason is not None:
            _xml_text(reason, "reason")
        unknown = sorted(set(fields) - {"invite_code", "reason"})
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(unknown)}", unknown[0], "unknown")
        return cls(caller, parse_invite_code(code), reason or None)
