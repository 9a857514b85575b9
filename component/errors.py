"""The one error table.

Every domain error names, once, how it appears on each wire: the XMPP error
condition and type (RFC 6120 section 8.3), the HTTP status, and the Rainbow
`errorDetailsCode`. Adapters look the error up here and never re-decide.
The message given to a domain error is shown to the caller, so it must never
carry internals (paths, SQL, exception text).
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import ClassVar


@dataclass(frozen=True)
class WireError:
    xmpp_type: str
    xmpp_condition: str
    http_status: int
    rainbow_code: int
    # Kazoo's top-level "message" ("invalid data", "bad identifier", ...).
    kazoo_message: str = ""
    # Xlink's numeric code; its first three digits are the HTTP status on Xlink paths.
    xlink_code: int = 0

    @property
    def xlink_status(self) -> int:
        return self.xlink_code // 10000 if self.xlink_code else self.http_status

    @property
    def http_reason(self) -> str:
        return HTTPStatus(self.http_status).phrase

    @property
    def kazoo_text(self) -> str:
        return self.kazoo_message or self.http_reason.lower()


MAX_DETAIL = 300


class DomainError(Exception):
    """A refusal the caller caused; its text is safe to show to that caller."""

    wire: ClassVar[WireError]
    # Seconds after which the same call may succeed (HTTP `Retry-After`), when known.
    retry_after_s: int | None = None

    def __init__(self, detail: str, field: str | None = None, rule: str | None = None) -> None:
        """`field` and `rule` name the offending input where there is one (Kazoo's
        per-field error `data`: {field: {rule: {"message": detail}}})."""
        # A text may quote the caller's input (a JID, an id): an oversized input is not
        # echoed back whole, whatever wire the error goes out on.
        if len(detail) > MAX_DETAIL:
            detail = detail[: MAX_DETAIL - 1] + "…"
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.rule = rule


class BadRequest(DomainError):
    wire = WireError("modify", "bad-request", 400, 400000, "invalid data", 4001001)


class Unauthorized(DomainError):
    wire = WireError("auth", "not-authorized", 401, 401000, "invalid credentials", 4031003)


class Forbidden(DomainError):
    wire = WireError("auth", "forbidden", 403, 403100, "forbidden", 4031003)


class NotFound(DomainError):
    wire = WireError("cancel", "item-not-found", 404, 404001, "bad identifier", 4041018)


class Duplicate(DomainError):
    wire = WireError("cancel", "conflict", 409, 409661, "conflicting documents", 4001001)


class WrongState(DomainError):
    wire = WireError("cancel", "conflict", 409, 409663, "", 4031012)


class PayloadTooLarge(DomainError):
    wire = WireError("modify", "policy-violation", 413, 413000, "", 4131000)


class LimitReached(DomainError):
    wire = WireError("wait", "resource-constraint", 429, 429000, "", 4291000)


class TooManyLogins(DomainError):
    """Too many failed logins for this JID from this address, or from this address:
    refused without asking the XMPP server until `retry_after_s` has passed."""

    # RFC 6120 section 8.3.3.12: policy-violation covers rate limits.
    wire = WireError("wait", "policy-violation", 429, 429000, "", 4291000)

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class ServiceUnavailable(DomainError):
    """A dependency (the XMPP server for logins) cannot be reached right now."""

    wire = WireError("wait", "service-unavailable", 503, 503000, "", 5031000)


# ---- family 3 (Xlink) refinements: same XMPP/REST meaning, Xlink's own codes ----


class MissingField(BadRequest):
    wire = WireError("modify", "bad-request", 400, 400000, "invalid data", 4001002)


class DeviceNotFound(NotFound):
    wire = WireError("cancel", "item-not-found", 404, 404001, "bad identifier", 4041008)


class UserNotFound(NotFound):
    wire = WireError("cancel", "item-not-found", 404, 404001, "bad identifier", 4041011)


class ShareNotFound(NotFound):
    """Unknown invite code, or one the caller has no part in."""

    wire = WireError("cancel", "item-not-found", 404, 404001, "bad identifier", 4041018)


class AlreadyCanceled(WrongState):
    wire = WireError("cancel", "conflict", 409, 409663, "", 4031008)


class AlreadyAccepted(WrongState):
    wire = WireError("cancel", "conflict", 409, 409663, "", 4031009)


class ShareNotUsable(WrongState):
    """Expired (overtime), denied, invalid: the invite code no longer works."""

    wire = WireError("cancel", "conflict", 409, 409663, "", 4031012)


# Used by adapters for failures that are not DomainErrors: logged with their
# traceback, answered with this fixed text.
INTERNAL = WireError("wait", "internal-server-error", 500, 500000, "", 5001000)
INTERNAL_TEXT = "Internal error"
