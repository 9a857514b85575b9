"""Rosters belong to their users: how the service changes them, and notices changes.

DESIGN "Consent rules": the service changes only the subscription direction a
consent is about. Each roster outbox row adds or removes one direction of one item
(component.notifications). The dispatcher reads the item first and `plan()` decides
the one change to make: the user's name, groups, pending request and other direction
are kept; an item the service created is removed once it holds no direction. What
was applied is recorded per item (storage.rosters), so that this stays decidable
after restarts, and so that a direction the user removed from a stock client can be
noticed (`Rosters.reconcile`, run when the user comes online or goes offline) and the
consent ended as the matching transition would. `Rosters.resync` re-derives every
granted item from the database (`python -m component resync`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from component.actions import end_accepted, roster_changes, write_outbox
from component.clock import Clock
from component.device_sharing import end_share_by_invitee, grant_access
from component.model import BareJid, RequestStatus, User
from component.notifications import Notification, roster_revoke
from component.subscriptions import held_shares
from storage import Conn, Database, accounts, outbox, presence_requests, shares, users
from storage import rosters as records
from storage.rosters import RosterRecord

log = logging.getLogger(__name__)

TO, FROM = "to", "from"
_DIRECTIONS = {"none": frozenset(), TO: frozenset({TO}), FROM: frozenset({FROM}), "both": frozenset({TO, FROM})}


def directions(subscription: str | None) -> frozenset[str]:
    """RFC 6121 section 2.1.2.5: the directions a subscription value holds."""
    return _DIRECTIONS.get(subscription or "none", frozenset())


def subscription(held: frozenset[str] | set[str]) -> str:
    if held >= {TO, FROM}:
        return "both"
    return next(iter(held)) if held else "none"


@dataclass(frozen=True)
class RosterItem:
    """One item of a user's roster as the server holds it (RFC 6121 section 2.1)."""

    jid: str
    subscription: str = "none"
    name: str | None = None
    groups: tuple[str, ...] = ()
    ask: str | None = None  # "subscribe": the user's own subscription request is pending


# `/healthz` `roster` and RosterBackend.status: the backend works, does not work now, or
# is `none` (messages and IQs only: roster changes are not made).
GRANTED, UNAVAILABLE, OFF = "granted", "unavailable", "off"


class RosterBackend(Protocol):
    """Where users' rosters are read and changed (DESIGN "Servers and rosters",
    `[roster] backend`): XEP-0356 privileged IQs on the component stream, ejabberd's
    mod_http_api, or nowhere. The outbox dispatcher reaches it through its Transport
    (component.delivery); the merge rules (`plan`) and the delivery guarantees are the
    same for every backend. Each method raises component.delivery's TransportGone,
    RosterRefused (no access now: the change waits) or RosterFailed (this change
    failed: retried, then moved aside)."""

    name: str  # "xep0356" | "ejabberd_api" | "none"

    @property
    def status(self) -> str:
        """GRANTED, UNAVAILABLE or OFF."""

    def allowed(self, owner: str) -> bool:
        """Whether `owner`'s roster can be read and changed now."""

    async def items(self, owner: str) -> Mapping[str, RosterItem]:
        """`owner`'s whole roster as the server holds it."""

    async def set_item(self, owner: str, item: RosterItem) -> None:
        """Write the whole item (name, groups and subscription), as read and merged."""

    async def remove_item(self, owner: str, contact: str) -> None:
        """Remove the item; an absent item is done."""

    async def session_started(self) -> None:
        """The component's session is (again) up: check that the backend works."""

    def session_ended(self) -> None: ...

    async def close(self) -> None: ...


class NoRosters:
    """`backend = "none"`: messages and IQs only; the dispatcher drops roster rows."""

    name = "none"
    status = OFF

    def allowed(self, owner: str) -> bool:
        return False

    async def items(self, owner: str) -> dict[str, RosterItem]:
        return {}

    async def set_item(self, owner: str, item: RosterItem) -> None:
        return None

    async def remove_item(self, owner: str, contact: str) -> None:
        return None

    async def session_started(self) -> None:
        log.info("roster: [roster] backend = \"none\": users' rosters are not changed")

    def session_ended(self) -> None:
        return None

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class RosterChange:
    """One roster outbox row: add or remove `direction` of `contact` in `owner`'s roster."""

    owner: str
    contact: str
    direction: str
    add: bool
    name: str | None = None

    @classmethod
    def from_row(cls, recipient: str, payload: dict[str, object]) -> RosterChange:
        direction = payload.get("direction")
        op = payload.get("op")
        if direction not in (TO, FROM) or op not in ("add", "remove") or not payload.get("jid"):
            raise ValueError(f"not a roster change: {payload!r}")
        name = payload.get("name")
        return cls(recipient, str(payload["jid"]), str(direction), op == "add", str(name) if name else None)


@dataclass(frozen=True)
class RosterStep:
    """What to do to one item: set `item`, or `remove` it, or neither; and the record
    of what the service holds afterwards."""

    record: RosterRecord
    item: RosterItem | None = None
    remove: bool = False
    creates: bool = False


def plan(change: RosterChange, current: RosterItem | None, record: RosterRecord | None) -> RosterStep:
    """The one change that applies `change` to the item as it is now (`current`, None
    when absent), given what the service did to it before (`record`)."""
    granted = set(directions(record.granted if record else None))
    created = record.created if record else False
    if change.add:
        granted.add(change.direction)
        if current is None:
            item = RosterItem(change.contact, change.direction, change.name)
            return RosterStep(
                RosterRecord(change.owner, change.contact, True, subscription(granted)), item, creates=True
            )
        held = directions(current.subscription) | {change.direction}
        item = replace(current, subscription=subscription(held))
        after = RosterRecord(change.owner, change.contact, created, subscription(granted))
        return RosterStep(after, item if item != current else None)
    granted.discard(change.direction)
    if current is None:  # nothing left to change; what the service created is gone
        return RosterStep(RosterRecord(change.owner, change.contact, False, subscription(granted)))
    held = directions(current.subscription) - {change.direction}
    if not held and created and current.ask is None:
        return RosterStep(RosterRecord(change.owner, change.contact, False, "none"), remove=True)
    item = replace(current, subscription=subscription(held))
    after = RosterRecord(change.owner, change.contact, created, subscription(granted))
    return RosterStep(after, item if item != current else None)


@dataclass(frozen=True)
class Reconciled:
    """What a roster check ended (for the log), and whether it left items for later
    because their changes were still in flight."""

    ended: list[str]
    deferred: bool = False


@dataclass(frozen=True)
class ResyncReport:
    grants: int
    removals: int
    owners: int


class Rosters:
    """The roster side of consent, across families: client-side ends and resync."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        component_jid: str,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.component_jid = component_jid
        self.on_commit = on_commit
        self.ended_from_clients = 0  # consents a user ended from a stock client (/metrics)

    async def granted(self, owner: BareJid) -> tuple[dict[str, int], bool]:
        """The items of `owner` where the service holds a direction, with their record's
        version (read before the roster, so that `reconcile` can tell a direction the
        user removed from one the dispatcher changed meanwhile), and whether roster
        changes for `owner` are still queued (a check now could miss them)."""

        async def read(conn: Conn) -> tuple[dict[str, int], bool]:
            found = await records.for_owner(conn, owner)
            queued = await outbox.roster_contacts_queued(conn, owner)
            return {r.contact: r.version for r in found if r.granted != "none"}, bool(queued)

        return await self.db.read(read)

    async def reconcile(
        self, owner: BareJid, live: Mapping[str, RosterItem], seen: dict[str, int]
    ) -> Reconciled:
        """End each consent whose direction is missing from `owner`'s roster as read
        (`live`) though the service granted and applied it: the user removed the
        contact, or unsubscribed, from a stock client (DESIGN "Consent ends from either
        side, from any client"). Items whose changes are still queued, or that changed
        since `seen`, are left for the next check (`deferred`)."""
        now = self.clock.now_ms()

        async def check(tx: Conn) -> tuple[list[str], list[Notification], bool]:
            user = await users.by_jid(tx, owner)
            if user is None:
                return [], [], False
            queued = await outbox.roster_contacts_queued(tx, owner)
            ended: list[str] = []
            notes: list[Notification] = []
            deferred = False
            for record in await records.for_owner(tx, owner):
                if record.contact in queued or seen.get(record.contact) != record.version:
                    # In flight, or changed since the roster was read: look again later.
                    deferred = deferred or record.contact in queued or record.granted != "none"
                    continue
                item = live.get(record.contact)
                lost = directions(record.granted) - directions(item.subscription if item else None)
                if not lost:
                    continue
                for direction in sorted(lost):
                    what, changes = await self._end(tx, user, record.contact, direction, now)
                    if what:
                        ended.append(what)
                    notes += changes
                left = directions(record.granted) - lost
                await records.save(
                    tx, replace(record, granted=subscription(left), created=record.created and item is not None), now
                )
            await write_outbox(tx, notes, now)
            return ended, notes, deferred

        ended, notes, deferred = await self.db.write(check)
        self.ended_from_clients += len(ended)
        for what in ended:
            log.info("consent ended from %s's roster: %s", owner, what)
        if notes:
            self.on_commit()
        return Reconciled(ended, deferred)

    async def _end(
        self, tx: Conn, user: User, contact: str, direction: str, now: int
    ) -> tuple[str | None, list[Notification]]:
        """End the consent that gave `direction` of `contact` to `user`'s roster."""
        local, _, domain = contact.partition("@")
        if domain == self.component_jid:
            if direction != TO:
                return None, []
            notes: list[Notification] = []
            ended = []
            for share, _realm in await held_shares(tx, user, local):
                changes = await end_share_by_invitee(tx, share, self.component_jid, now)
                if changes:
                    ended.append(f"device share {share.invite_code[:6]}… of device {share.device_id} canceled")
                notes += changes
            return "; ".join(ended) or None, notes
        other = await users.by_jid(tx, BareJid(contact))
        if other is None:
            return None, []
        if direction == TO:  # the user was watching `contact`: it withdrew its request
            request = await presence_requests.accepted_between(tx, user.id, other.id)
            status = RequestStatus.CANCELED
        else:  # `contact` was watching the user: the user stopped sharing
            request = await presence_requests.accepted_between(tx, other.id, user.id)
            status = RequestStatus.INTERRUPTED
        if request is None:
            return None, []
        notes = await end_accepted(tx, request, status, now)
        if not notes:
            return None, []
        return (
            f"presence request {request.id} {status.value} "
            f"({request.from_user.jid} -> {request.to_user.jid})"
        ), notes

    # ---- resync ------------------------------------------------------------------------

    async def resync(self, page: int = 500) -> ResyncReport:
        """Queue, for every consent in the database, the roster directions it grants,
        and the removal of every direction the service once granted that no consent
        holds any more. Idempotent: the dispatcher changes only items that differ."""
        now = self.clock.now_ms()
        grants = removals = 0
        owners: set[str] = set()

        after = ""
        while True:
            async def requests(tx: Conn, after: str = after) -> tuple[str, int]:
                found = await presence_requests.accepted_page(tx, after, page)
                notes: list[Notification] = []
                for request in found:
                    notes += roster_changes(request, granted=True)
                await write_outbox(tx, notes, now)
                owners.update(n.recipient for n in notes)
                return (found[-1].id if found else ""), len(notes)

            after, count = await self.db.write(requests)
            grants += count
            if not after:
                break

        after = ""
        while True:
            async def device_shares(tx: Conn, after: str = after) -> tuple[str, int]:
                found = await shares.accepted_page(tx, after, page)
                notes: list[Notification] = []
                for share in found:
                    device = await accounts.device_by_id(tx, share.device_id)
                    if device is not None and share.to_user is not None:
                        # Also re-opens the subscription and sends the current state.
                        notes += await grant_access(tx, share, device, self.component_jid, now)
                await write_outbox(tx, notes, now)
                owners.update(n.recipient for n in notes)
                return (found[-1].invite_code if found else ""), sum(n.kind == "roster" for n in notes)

            after, count = await self.db.write(device_shares)
            grants += count
            if not after:
                break

        key = ("", "")
        while True:
            async def stale(tx: Conn, key: tuple[str, str] = key) -> tuple[tuple[str, str] | None, int]:
                found = await records.page(tx, key, page)
                notes: list[Notification] = []
                for record in found:
                    for direction in sorted(directions(record.granted) - await self._held(tx, record)):
                        notes.append(roster_revoke(BareJid(record.owner), record.contact, direction))
                await write_outbox(tx, notes, now)
                owners.update(n.recipient for n in notes)
                return ((found[-1].owner, found[-1].contact) if found else None), len(notes)

            next_key, count = await self.db.write(stale)
            removals += count
            if next_key is None:
                break
            key = next_key

        log.info(
            "resync: queued %d roster grant(s) and %d removal(s) for %d user(s)",
            grants, removals, len(owners),
        )
        if grants or removals:
            self.on_commit()
        return ResyncReport(grants, removals, len(owners))

    async def _held(self, tx: Conn, record: RosterRecord) -> frozenset[str]:
        """The directions of `record`'s item that a consent in the database grants."""
        owner = await users.by_jid(tx, BareJid(record.owner))
        if owner is None:
            return frozenset()
        local, _, domain = record.contact.partition("@")
        if domain == self.component_jid:
            return frozenset({TO}) if await held_shares(tx, owner, local) else frozenset()
        other = await users.by_jid(tx, BareJid(record.contact))
        if other is None:
            return frozenset()
        held = set()
        if await presence_requests.accepted_between(tx, owner.id, other.id):
            held.add(TO)
        if await presence_requests.accepted_between(tx, other.id, owner.id):
            held.add(FROM)
        return frozenset(held)

