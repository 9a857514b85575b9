"""Typed commands: what an adapter (XMPP stanza or HTTP request) asks an action to do.

Each checks its own invariants, so an action never sees a malformed command.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from component.errors import BadRequest
from component.model import BareJid, RequestId, RequestStatus, STORED_STATUSES, User, UserId


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
