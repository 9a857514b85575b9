"""Domain actions: the rules, run identically for XMPP stanzas and REST calls.

Each state change is one transaction that also writes the outbox rows announcing
it; `on_commit` then wakes the outbox dispatcher. Actions raise DomainErrors
(component.errors) and never build XML or HTTP responses.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Protocol

from component.clock import Clock
from component.commands import (
    CreatePresenceRequest,
    ListPresenceRequests,
    Principal,
    Transition,
    TransitionPresenceRequest,
)
from component.errors import (
    BadRequest,
    Duplicate,
    Forbidden,
    LimitReached,
    NotFound,
    ServiceUnavailable,
    TooManyLogins,
    Unauthorized,
    WrongState,
)
from component.login_limits import LoginLimiter, LoginLimits
from component.token_cache import TokenCache
from component.model import (
    BareJid,
    Page,
    PresenceRequest,
    RequestId,
    RequestStatus,
    User,
    jid_domain,
    new_object_id,
    parse_bare_jid,
)
from component.notifications import (
    Notification,
    handshake_messages,
    roster_grant,
    roster_revoke,
)
from storage import Conn, Database, outbox, presence_requests, tokens, users

log = logging.getLogger(__name__)


class PasswordVerifier(Protocol):
    async def verify(self, jid: BareJid, password: str) -> bool:
        """True if the XMPP server accepts the password; raises ServiceUnavailable if unreachable."""


async def write_outbox(
    tx: Conn, notifications: Iterable[Notification], now_ms: int
) -> None:
    await outbox.add_many(tx, [(n.kind, n.recipient, n.payload) for n in notifications], now_ms)


def _token_bytes(token: str) -> bytes:
    """Total on every str: a lone surrogate (from a header that was not UTF-8) is
    encoded too rather than raising, so no token can make a hash or a comparison fail."""
    return token.encode("utf-8", "surrogatepass")


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(_token_bytes(token)).digest()


class Identity:
    """Who the caller is: XMPP senders, logins and tokens."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        served_domains: frozenset[str],
        verifier: PasswordVerifier,
        token_ttl_s: int,
        admin_token: str = "",
        login_limits: LoginLimits = LoginLimits(),
        max_tokens_per_user: int = 20,
        token_cache_s: float = 5.0,
    ) -> None:
        """`token_cache_s`: how long a token found valid in storage is trusted without
        asking storage again (component/token_cache.py says what stays immediate)."""
        self.db = db
        self._admin_token = admin_token
        self.clock = clock
        self.served_domains = served_domains
        self.verifier = verifier
        self.token_ttl_ms = token_ttl_s * 1000
        self.login_limiter = LoginLimiter(clock, login_limits)
        self.max_tokens_per_user = max_tokens_per_user
        self.token_cache = TokenCache(int(token_cache_s * 1000))
        # Logins by outcome, for /metrics: accepted, refused (wrong login or password),
        # limited (429), forbidden (a domain not served), unavailable (503).
        self.logins: Counter[str] = Counter()

    def check_served(self, jid: BareJid) -> None:
        if jid_domain(jid) not in self.served_domains:
            raise Forbidden(f"users of {jid_domain(jid)} are not served here")

    async def user_for_jid(self, jid: BareJid) -> User:
        """The user behind a stanza's (server-stamped) sender, created on first sight."""
        self.check_served(jid)
        user = await self.db.read(lambda conn: users.seen_by_jid(conn, jid))
        if user is not None:
            return user
        now = self.clock.now_ms()
        return await self.db.write(lambda tx: users.get_or_create(tx, jid, now))

    async def login(self, jid_text: str, password: str, address: str | None = None) -> tuple[str, User]:
        """Verify the password against the XMPP server (never stored) and issue a token
        (see `_login`); every outcome is counted."""
        try:
            issued = await self._login(jid_text, password, address)
        except TooManyLogins:
            self.logins["limited"] += 1
            raise
        except Unauthorized:
            self.logins["refused"] += 1
            raise
        except Forbidden:
            self.logins["forbidden"] += 1
            raise
        except ServiceUnavailable:
            self.logins["unavailable"] += 1
            raise
        self.logins["accepted"] += 1
        return issued

    async def _login(self, jid_text: str, password: str, address: str | None) -> tuple[str, User]:
        """Verify the password against the XMPP server (never stored) and issue a token.

        `address` is the client's network address. Failed logins are limited per
        (JID, address) and per address (DESIGN "Operations", `LoginLimits`): beyond
        the budget the login is refused with TooManyLogins before the XMPP server is
        asked, so refused attempts take no login check slot.
        """
        try:
            jid = parse_bare_jid(jid_text, "login")
        except BadRequest as exc:
            raise Unauthorized("invalid login or password") from exc
        self.check_served(jid)
        client = address or "-"
        attempt = await self.login_limiter.acquire(jid, address)
        if isinstance(attempt, int):
            log.warning(
                "login refused for %s from %s: too many failed logins, retry in %d s", jid, client, attempt
            )
            raise TooManyLogins(f"too many failed logins; try again in {attempt} s", retry_after_s=attempt)
        verdict: bool | None = None
        try:
            verdict = bool(password) and await self.verifier.verify(jid, password)
        finally:
            # No verdict (the server unreachable, the request gone) counts as nothing.
            self.login_limiter.settle(attempt, verdict)
        if not verdict:
            log.info("login refused for %s from %s: wrong password", jid, client)
            raise Unauthorized("invalid login or password")
        token = secrets.token_urlsafe(32)
        now = self.clock.now_ms()
        token_hash = _token_hash(token)

        async def issue(tx: Conn) -> tuple[User, int]:
            user = await users.get_or_create(tx, jid, now)
            await tokens.insert(tx, token_hash, user.id, now, now + self.token_ttl_ms)
            # A bounded number of live sessions per user: the oldest make room.
            revoked = await tokens.keep_newest(tx, user.id, self.max_tokens_per_user)
            return user, revoked

        user, revoked = await self.db.write(issue)
        if revoked:
            self.token_cache.forget_user(user.id)
        log.info(
            "login accepted for %s from %s (user %s)%s", jid, client, user.id,
            f"; {revoked} oldest token(s) revoked (max_tokens_per_user)" if revoked else "",
        )
        return token, user

    async def accounts_to_check(self, every_s: float, limit: int = 100) -> list[User]:
        """Users holding a live token whose XMPP account was not checked for `every_s`."""
        now = self.clock.now_ms()
        return await self.db.read(
            lambda conn: users.due_for_check(conn, now, int(every_s * 1000), limit)
        )

    async def account_checked(self, user: User, exists: bool | None) -> int:
        """Record what the XMPP server said of the user's account (None: it could not
        tell). An account that is gone loses its tokens: a token acts for an account, and
        a JID created again later is somebody else. Returns how many tokens went."""
        now = self.clock.now_ms()

        async def record(tx: Conn) -> int:
            await users.mark_checked(tx, user.id, now)
            return await tokens.revoke_all(tx, user.id) if exists is False else 0

        revoked = await self.db.write(record)
        if revoked:
            self.token_cache.forget_user(user.id)
            log.info("the XMPP account %s is gone: %d token(s) revoked (user %s)", user.jid, revoked, user.id)
        return revoked

    async def housekeeping(self, batch: int = 1000) -> int:
        """Forget expired tokens and the users that were only named as targets and that
        nothing refers to any more. Returns how many users went."""
        now = self.clock.now_ms()

        async def purge(tx: Conn) -> int:
            await tokens.purge_expired(tx, now)
            return await users.forget_unreferenced(tx, batch)

        forgotten = await self.db.write(purge)
        if forgotten:
            log.info("users: %d named but never seen, no longer referred to, forgotten", forgotten)
        return forgotten

    async def authenticate(self, token: str | None) -> User:
        if not token:
            raise Unauthorized("missing token")
        token_hash, now = _token_hash(token), self.clock.now_ms()
        user = self.token_cache.get(token_hash, now)
        if user is not None:
            return user
        generation = self.token_cache.generation
        found = await self.db.read(lambda conn: tokens.holder(conn, token_hash, now))
        if found is None:
            raise Unauthorized("invalid or expired token")
        user, expires_at = found
        self.token_cache.put(token_hash, user, expires_at, now, generation)
        return user

    async def principal(self, token: str | None) -> Principal:
        """A family 2 caller: the admin token, or a user's token."""
        if token and self._admin_token and hmac.compare_digest(
            _token_bytes(token), _token_bytes(self._admin_token)
        ):
            return Principal(None)
        return Principal(await self.authenticate(token))

    async def logout(self, token: str) -> None:
        token_hash = _token_hash(token)
        try:
            await self.db.write(lambda tx: tokens.delete(tx, token_hash))
        finally:
            # After the commit (a check that read the token before it must not keep it);
            # also when the write failed: forgetting is always safe.
            self.token_cache.forget(token_hash)


# Which party may apply a transition, from which state, and what it announces.
_RULES: dict[Transition, tuple[str, RequestStatus, RequestStatus, str]] = {
    # transition: (party, required status, resulting status, message action)
    Transition.ACCEPT: ("receiver", RequestStatus.PENDING, RequestStatus.ACCEPTED, "update"),
    Transition.DECLINE: ("receiver", RequestStatus.PENDING, RequestStatus.DECLINED, "delete"),
    Transition.CANCEL: ("sender", RequestStatus.PENDING, RequestStatus.CANCELED, "delete"),
    Transition.INTERRUPT: ("receiver", RequestStatus.ACCEPTED, RequestStatus.INTERRUPTED, "delete"),
}


class PresenceSharing:
    """Family 1: user A asks user B to share B's presence; B accepts, declines or stops."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        served_domains: frozenset[str],
        on_commit: Callable[[], None] = lambda: None,
        max_pending_sent: int = 1000,
        max_unseen_targets: int = 1000,
    ) -> None:
        self.db = db
        self.clock = clock
        self.served_domains = served_domains
        self.on_commit = on_commit
        self.max_pending_sent = max_pending_sent
        self.max_unseen_targets = max_unseen_targets

    async def create(self, cmd: CreatePresenceRequest) -> PresenceRequest:
        now = self.clock.now_ms()

        async def create(tx: Conn) -> PresenceRequest:
            if cmd.to_jid is not None:
                if jid_domain(cmd.to_jid) not in self.served_domains:
                    raise BadRequest(f"toJid must be a user of a served domain, not {cmd.to_jid}")
                target = await name_target(tx, cmd.caller, cmd.to_jid, now, self.max_unseen_targets)
            else:
                assert cmd.to_user_id is not None
                found = await users.by_id(tx, cmd.to_user_id)
                if found is None:
                    raise NotFound(f"user {cmd.to_user_id} not found")
                target = found
            if target.id == cmd.caller.id:
                raise BadRequest("cannot ask yourself to share presence")
            linked, pending = await presence_requests.link_and_pending_sent(tx, cmd.caller.id, target.id)
            if linked:
                raise Duplicate(f"a pending or accepted request to {target.jid} already exists")
            if pending >= self.max_pending_sent:
                raise LimitReached(
                    f"at most {self.max_pending_sent} pending requests may be sent at once"
                )
            request = PresenceRequest(
                id=RequestId(new_object_id()),
                from_user=cmd.caller,
                to_user=target,
                status=RequestStatus.PENDING,
                request_date=now,
            )
            await presence_requests.insert(tx, request)
            await write_outbox(tx, handshake_messages(request, "create", "pending"), now)
            return request

        request = await self.db.write(create)
        log.info(
            "presence request %s created: %s asks %s",
            request.id,
            request.from_user.jid,
            request.to_user.jid,
        )
        self.on_commit()
        return request

    async def transition(self, cmd: TransitionPresenceRequest) -> PresenceRequest:
        party, required, result, action = _RULES[cmd.transition]
        now = self.clock.now_ms()

        async def transition(tx: Conn) -> tuple[PresenceRequest, PresenceRequest]:
            request = await self._visible(tx, cmd.caller, cmd.request_id)
            actor = request.to_user if party == "receiver" else request.from_user
            if actor.id != cmd.caller.id:
                raise Forbidden(f"only the request's {party} may {cmd.transition.value} it")
            if request.status != required:
                raise WrongState(
                    f"request {request.id} is {request.status.value}; "
                    f"{cmd.transition.value} needs it {required.value}"
                )
            if cmd.transition is Transition.ACCEPT:
                changed = await presence_requests.mark_accepted(tx, request.id, now)
            else:
                changed = await presence_requests.delete_in_status(tx, request.id, required)
            if not changed:  # lost a race that the lock should already prevent
                raise WrongState(f"request {request.id} changed meanwhile")
            done = _with_status(request, result, now)
            notes = handshake_messages(done, action, result.value)
            if cmd.transition is Transition.ACCEPT:
                notes += roster_changes(done, granted=True)
            elif cmd.transition is Transition.INTERRUPT:
                notes += roster_changes(done, granted=False)
            await write_outbox(tx, notes, now)
            return request, done

        request, done = await self.db.write(transition)
        log.info(
            "presence request %s %s by %s (%s -> %s)",
            request.id,
            result.value,
            cmd.caller.jid,
            request.from_user.jid,
            request.to_user.jid,
        )
        self.on_commit()
        return done

    async def get(self, caller: User, request_id: RequestId) -> PresenceRequest:
        return await self.db.read(lambda conn: self._visible(conn, caller, request_id))

    async def list(self, cmd: ListPresenceRequests) -> Page[PresenceRequest]:

        async def page(conn: Conn) -> Page[PresenceRequest]:
            after = None
            if cmd.after is not None:
                anchor = await self._visible(conn, cmd.caller, cmd.after)
                after = (anchor.request_date, anchor.id)
            items, total = await presence_requests.list_for(
                conn,
                cmd.caller.id,
                cmd.box,
                cmd.statuses,
                cmd.limit,
                cmd.offset,
                cmd.descending,
                after,
            )
            return Page(items=items, total=total, limit=cmd.limit, offset=cmd.offset)

        return await self.db.read(page)

    async def _visible(
        self, conn: Conn, caller: User, request_id: RequestId
    ) -> PresenceRequest:
        """The request, if the caller is one of its two parties; 404 otherwise (no oracle)."""
        request = await presence_requests.get(conn, request_id)
        if request is None or caller.id not in (request.from_user.id, request.to_user.id):
            raise NotFound(f"presence request {request_id} not found")
        return request

async def name_target(tx: Conn, caller: User, jid: BareJid, now: int, max_unseen: int) -> User:
    """The user `caller` names (a request's toJid, a share's user), created unseen if the
    service never saw it; a caller may have at most `max_unseen` such users at once
    (they are forgotten once nothing refers to them)."""
    target, created = await users.named(tx, jid, caller.id, now)
    if created and await users.unseen_named_by(tx, caller.id) > max_unseen:
        raise LimitReached(
            f"at most {max_unseen} users that never logged in may be named at once", "toJid", "limit"
        )
    return target


def roster_changes(request: PresenceRequest, granted: bool) -> list[Notification]:
    """The one direction `request` is about, added (accept) or removed (interrupt, or
    its end from a client): the sender's item for the receiver gets or loses `to`, the
    receiver's item for the sender `from`. Everything else in both items (name, groups,
    the reverse direction) is the users' own and stays (DESIGN "Consent rules")."""
    sender, receiver = request.from_user, request.to_user
    if granted:
        return [roster_grant(sender.jid, receiver.jid, "to"), roster_grant(receiver.jid, sender.jid, "from")]
    return [roster_revoke(sender.jid, receiver.jid, "to"), roster_revoke(receiver.jid, sender.jid, "from")]


async def end_accepted(
    tx: Conn, request: PresenceRequest, status: RequestStatus, now: int
) -> list[Notification]:
    """End an accepted request as the matching transition would (its direction left a
    roster in a stock client): deleted, both parties told `delete`/`status`, the
    direction removed from both rosters. [] if the request is no longer accepted."""
    if not await presence_requests.delete_in_status(tx, request.id, RequestStatus.ACCEPTED):
        return []
    done = _with_status(request, status, now)
    return handshake_messages(done, "delete", status.value) + roster_changes(done, granted=False)


def _with_status(request: PresenceRequest, status: RequestStatus, now: int) -> PresenceRequest:
    dates = {
        RequestStatus.ACCEPTED: "acceptation_date",
        RequestStatus.DECLINED: "declination_date",
        RequestStatus.CANCELED: "cancellation_date",
    }
    changes: dict[str, object] = {"status": status}
    if status in dates:
        changes[dates[status]] = now
    return replace(request, **changes)  # type: ignore[arg-type]
