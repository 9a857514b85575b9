"""Domain types shared by every layer: identifiers, users and presence requests.

Nothing here knows about XMPP libraries, HTTP or SQL.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, NewType, TypeVar

from component.errors import BadRequest

UserId = NewType("UserId", str)
RequestId = NewType("RequestId", str)
BareJid = NewType("BareJid", str)

_HEX24 = re.compile(r"[0-9a-f]{24}")
# RFC 7622 section 3.3.1: characters a localpart may not contain.
_LOCALPART_FORBIDDEN = set("\"&'/:<>@") | {" ", "\t", "\r", "\n"}
_DOMAIN_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def new_object_id() -> str:
    """A 24-hex id (96 random bits), the shape of the ids in the public APIs we mirror."""
    return secrets.token_hex(12)


def is_object_id(value: object) -> bool:
    return isinstance(value, str) and _HEX24.fullmatch(value) is not None


def parse_user_id(value: object, field: str = "userId") -> UserId:
    if not is_object_id(value):
        raise BadRequest(f"{field} must be a 24-character lowercase hex id")
    return UserId(value)  # type: ignore[arg-type]


def parse_request_id(value: object, field: str = "presenceReqId") -> RequestId:
    if not is_object_id(value):
        raise BadRequest(f"{field} must be a 24-character lowercase hex id")
    return RequestId(value)  # type: ignore[arg-type]


def parse_bare_jid(value: object, field: str = "jid") -> BareJid:
    """Normalise a bare JID (localpart@domain), refusing full JIDs and malformed input.

    The localpart is case-folded after NFKC, which matches what servers' nodeprep/
    PRECIS profiles do for every practical account name.
    """
    if not isinstance(value, str) or not value or len(value) > 2047:
        raise BadRequest(f"{field} must be a bare JID such as user@example.org")
    text = unicodedata.normalize("NFKC", value.strip()).lower()
    local, sep, domain = text.partition("@")
    if not sep or not local or "/" in domain or len(local) > 1023:
        raise BadRequest(f"{field} must be a bare JID such as user@example.org")
    if any(ch in _LOCALPART_FORBIDDEN for ch in local):
        raise BadRequest(f"{field} must be a bare JID such as user@example.org")
    domain = domain.rstrip(".")
    labels = domain.split(".")
    if len(domain) > 253 or not all(_DOMAIN_LABEL.fullmatch(label) for label in labels):
        raise BadRequest(f"{field} must be a bare JID such as user@example.org")
    return BareJid(f"{local}@{domain}")


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
