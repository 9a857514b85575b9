"""Domain types shared by every layer: identifiers, users and presence requests.

Nothing here knows about XMPP streams, HTTP or SQL (JIDs are normalised with
slixmpp's stringprep implementation: see `parse_bare_jid`).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, NewType, TypeVar

# The JID parser the server's stringprep profiles need (see parse_bare_jid): a pure
# string function, the one piece of the XMPP library the domain model uses.
from slixmpp.jid import JID, InvalidJID

from component.errors import BadRequest

UserId = NewType("UserId", str)
RequestId = NewType("RequestId", str)
BareJid = NewType("BareJid", str)

_HEX24 = re.compile(r"[0-9a-f]{24}")
# Longest JID text we try to parse (RFC 7622 section 3.1: each part at most 1023 bytes).
_MAX_JID = 3071


def new_object_id() -> str:
    """A 24-hex id (96 random bits), the shape of the ids in the public APIs we mirror."""
    return secrets.token_hex(12)


def is_object_id(value: object) -> bool:
    return isinstance(value, str) and _HEX24.fullmatch(value) is not None


def parse_user_id(value: object, field: str = "userId") -> UserId:
    if not is_object_id(value):
        raise BadRequest(f"{field} must be a 24-character lowercase hex id", field, "pattern")
    return UserId(value)  # type: ignore[arg-type]


def parse_request_id(value: object, field: str = "presenceReqId") -> RequestId:
    if not is_object_id(value):
        raise BadRequest(f"{field} must be a 24-character lowercase hex id", field, "pattern")
    return RequestId(value)  # type: ignore[arg-type]


def parse_bare_jid(value: object, field: str = "jid") -> BareJid:
    """Normalise a bare JID (localpart@domain) exactly as the XMPP server does.

    One account, one identity (DESIGN "Consent rules"): Prosody 0.12 and ejabberd
    apply the RFC 3920/6122 stringprep profiles (nodeprep for the localpart, nameprep
    for the domain), and so does `slixmpp.JID`, whose implementation this uses. What
    they map we map the same way (U+200B, U+00AD, U+FEFF vanish, `Straße` becomes
    `strasse`, full-width letters become ASCII); what they refuse (bidi controls,
    symbols outside the profile, spaces, control characters) is refused here with
    BadRequest. Full JIDs (with a resource) are refused: accounts are bare JIDs.
    """
    refusal = BadRequest(f"{field} must be a bare JID such as user@example.org", field, "pattern")
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_JID:
        raise refusal
    try:
        jid = JID(value.strip())
    except InvalidJID:
        raise refusal from None
    if not jid.user or jid.resource:
        raise refusal
    # RFC 7622 section 3.2: a trailing dot is not part of the domain.
    domain = jid.domain.rstrip(".")
    if not domain:
        raise refusal
    return BareJid(f"{jid.user}@{domain}")


def normalise_domain(value: str) -> str:
    """A domain as the server writes it (nameprep), for comparing with served domains."""
    try:
        return JID(value.strip()).domain.rstrip(".")
    except InvalidJID:
        raise BadRequest(f"{value!r} is not a valid XMPP domain") from None


def jid_domain(jid: BareJid) -> str:
    return jid.partition("@")[2]


@dataclass(frozen=True)
class User:
    id: UserId
    jid: BareJid


class RequestStatus(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    # The three below are never stored: the request is deleted by the transition
    # that produces them, and they only appear in that transition's answer and messages.
    DECLINED = "declined"
    CANCELED = "canceled"
    INTERRUPTED = "interrupted"


STORED_STATUSES = frozenset({RequestStatus.PENDING, RequestStatus.ACCEPTED})


@dataclass(frozen=True)
class PresenceRequest:
    """User `from_user` asked `to_user` to share `to_user`'s presence with them."""

    id: RequestId
    from_user: User
    to_user: User
    status: RequestStatus
    request_date: int  # milliseconds since the epoch, UTC
    acceptation_date: int | None = None
    declination_date: int | None = None
    cancellation_date: int | None = None


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


# ---- family 2: accounts, devices, extensions, subscriptions (Kazoo) -------------

AccountId = NewType("AccountId", str)
DeviceId = NewType("DeviceId", str)
SubscriptionId = NewType("SubscriptionId", str)

_HEX32 = re.compile(r"[0-9a-f]{32}")
# An extension is the localpart of `{extension}@{component}`: digits, `*`, `#`,
# letters and a few separators (parking slots like *3101, SIP usernames).
_EXTENSION = re.compile(r"[A-Za-z0-9*#+._~-]{1,64}")


def new_account_id() -> str:
    """A 32-hex id (128 random bits), the shape of Kazoo's account and device ids."""
    return secrets.token_hex(16)


def parse_account_id(value: object, field: str = "account_id") -> AccountId:
    if not isinstance(value, str) or not _HEX32.fullmatch(value):
        raise BadRequest(f"{field} must be a 32-character lowercase hex id", field, "pattern")
    return AccountId(value)


def parse_device_id(value: object, field: str = "device_id") -> DeviceId:
    if not isinstance(value, str) or not _HEX32.fullmatch(value):
        raise BadRequest(f"{field} must be a 32-character lowercase hex id", field, "pattern")
    return DeviceId(value)


def parse_extension(value: object, field: str = "extension") -> str:
    if not isinstance(value, str) or not _EXTENSION.fullmatch(value):
        raise BadRequest(
            f"{field} must be 1-64 characters of letters, digits and * # + . _ ~ -", field, "pattern"
        )
    return value.lower()


class PresenceState(StrEnum):
    """Kazoo's dialog states for an extension."""

    CONFIRMED = "confirmed"  # busy (on a call)
    EARLY = "early"  # ringing
    TERMINATED = "terminated"  # idle


@dataclass(frozen=True)
class Account:
    id: AccountId
    name: str
    realm: str


@dataclass(frozen=True)
class AccountUser:
    """A user provisioned in an account (same id as in family 1)."""

    user: User
    account_id: AccountId
    username: str
    presence_id: str | None
    email: str | None = None


@dataclass(frozen=True)
class Device:
    id: DeviceId
    account_id: AccountId
    name: str
    sip_username: str
    presence_id: str | None
    owner_id: UserId | None

    @property
    def extension(self) -> str:
        """Kazoo: the device's presence_id if present, otherwise its SIP username."""
        return (self.presence_id or self.sip_username).lower()


# The Kazoo event name of presence subscriptions made over XMPP (and by device shares).
XMPP_EVENT = "presence"


def extension_jid(extension: str, component_jid: str) -> str:
    """`{extension}@{component}`: the JID an extension's presence comes from."""
    return f"{extension}@{component_jid}"


@dataclass(frozen=True)
class Subscription:
    id: SubscriptionId
    realm: str
    extension: str
    event: str
    subscriber: BareJid
    created_at: int
    notify_sequence: int
    notify_body: str | None
    version: int


# ---- family 3: device sharing (Xlink) ---------------------------------------------

InviteCode = NewType("InviteCode", str)

# RFC 5321 limits; a deliberately plain shape (local@domain.tld), no quoted local parts.
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_INVITE_CODE = re.compile(r"[A-Za-z0-9_-]{16,64}")


def new_invite_code() -> InviteCode:
    """192 random bits, URL-safe: unguessable, and fits in a QR code and a URL."""
    return InviteCode(secrets.token_urlsafe(24))


def parse_invite_code(value: object, field: str = "invite_code") -> InviteCode:
    if not isinstance(value, str) or not _INVITE_CODE.fullmatch(value):
        raise BadRequest(f"{field} is not a valid invite code", field, "pattern")
    return InviteCode(value)


def parse_email(value: object, field: str = "email") -> str:
    if not isinstance(value, str) or len(value) > 254 or not _EMAIL.fullmatch(value.strip()):
        raise BadRequest(f"{field} must be an e-mail address", field, "pattern")
    return value.strip().lower()


class ShareMode(StrEnum):
    APP = "app"  # a named user (id, JID or provisioned e-mail)
    QRCODE = "qrcode"  # whoever holds the code (shown as a QR image to the manager)
    EMAIL = "email"  # the code is e-mailed to an address


class ShareState(StrEnum):
    PENDING = "pending"
    ACCEPT = "accept"
    DENY = "deny"
    CANCEL = "cancel"
    OVERTIME = "overtime"  # expired while pending
    INVALID = "invalid"  # the device or its manager changed while pending


@dataclass(frozen=True)
class DeviceShare:
    invite_code: InviteCode
    device_id: DeviceId
    from_user: User  # the device's manager when the share was made
    to_user: User | None  # None until accepted for qrcode and unknown-address email shares
    to_email: str | None
    mode: ShareMode
    authority: str
    state: ShareState
    create_date: int
    expire_date: int
    reason: str | None
    updated_at: int

    def effective_state(self, now_ms: int) -> ShareState:
        """Expiry is enforced on every read, before the sweeper persists it."""
        if self.state is ShareState.PENDING and now_ms >= self.expire_date:
            return ShareState.OVERTIME
        return self.state
