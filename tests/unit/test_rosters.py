"""Rosters belong to their users (component.rosters): the merge rule of one roster
change, the check that ends a consent whose direction a user removed in a stock
client, and resync."""

from __future__ import annotations

from typing import Any

import pytest

from component.actions import PresenceSharing
from component.commands import (
    CreatePresenceRequest,
    ShareAnswer,
    ShareDevice,
    Transition,
    TransitionPresenceRequest,
)
from component.device_sharing import DeviceSharing
from component.model import BareJid, User
from component.rosters import Reconciled, RosterChange, RosterItem, Rosters, RosterStep, plan
from storage import Conn, Database, outbox
from storage import rosters as records
from storage.rosters import RosterRecord
from unit_rig import CommitCounter, clear_outbox, outbox_rows

COMPONENT = "presence.example.test"
ALICE, BOB = "alice@example.test", "bob@example.test"
HALL = f"1001@{COMPONENT}"


def change(direction: str, add: bool, name: str | None = "bob") -> RosterChange:
    return RosterChange(ALICE, BOB, direction, add, name if add else None)


def record(created: bool, granted: str) -> RosterRecord:
    return RosterRecord(ALICE, BOB, created, granted)


# ---- plan(): one change, the rest of the item is the user's ----------------------------------


@pytest.mark.parametrize(
    ("step", "current", "before", "expected"),
    [
        # A new item: created with the consent's direction, named after the contact.
        (change("to", True), None, None,
         RosterStep(record(True, "to"), RosterItem(BOB, "to", "bob"), creates=True)),
        # The user's item: name, groups and the pending request stay, the direction joins.
        (change("to", True), RosterItem(BOB, "none", "Bobby", ("Friends",), "subscribe"), None,
         RosterStep(record(False, "to"), RosterItem(BOB, "to", "Bobby", ("Friends",), "subscribe"))),
        (change("to", True), RosterItem(BOB, "from", "Bobby", ("Friends",)), None,
         RosterStep(record(False, "to"), RosterItem(BOB, "both", "Bobby", ("Friends",)))),
        # Already there (a repeated delivery, or the user had it): nothing to set.
        (change("to", True), RosterItem(BOB, "to", "Bobby"), record(False, "to"),
         RosterStep(record(False, "to"))),
        (change("from", True), RosterItem(BOB, "to", "bob"), record(True, "to"),
         RosterStep(record(True, "both"), RosterItem(BOB, "both", "bob"))),
        # Removing keeps the other direction, the name and the groups.
        (change("to", False), RosterItem(BOB, "both", "Bobby", ("Friends",)), record(False, "both"),
         RosterStep(record(False, "from"), RosterItem(BOB, "from", "Bobby", ("Friends",)))),
        # The user's item with no direction left stays, as the user's.
        (change("to", False), RosterItem(BOB, "to", "Bobby", ("Friends",)), record(False, "to"),
         RosterStep(record(False, "none"), RosterItem(BOB, "none", "Bobby", ("Friends",)))),
        # The service's item with no direction left goes.
        (change("to", False), RosterItem(BOB, "to", "bob"), record(True, "to"),
         RosterStep(record(False, "none"), remove=True)),
        # ... unless the user asked for a subscription of its own meanwhile.
        (change("to", False), RosterItem(BOB, "to", "bob", (), "subscribe"), record(True, "to"),
         RosterStep(record(True, "none"), RosterItem(BOB, "none", "bob", (), "subscribe"))),
        # Gone already (the user removed it): nothing to do, nothing created any more.
        (change("to", False), None, record(True, "to"), RosterStep(record(False, "none"))),
        (change("from", False), RosterItem(BOB, "to", "bob"), record(True, "to"),
         RosterStep(record(True, "to"))),
    ],
)
def test_plan_changes_one_direction_and_keeps_the_rest(
    step: RosterChange, current: RosterItem | None, before: RosterRecord | None, expected: RosterStep
) -> None:
    assert plan(step, current, before) == expected


def test_a_roster_row_must_name_a_direction_and_an_operation() -> None:
    assert RosterChange.from_row(ALICE, {"jid": BOB, "direction": "to", "op": "add", "name": "bob"}) == (
        RosterChange(ALICE, BOB, "to", True, "bob")
    )
    for payload in (
        {"jid": BOB, "subscription": "to", "name": "bob"},  # the pre-issue-9 shape
        {"jid": BOB, "direction": "both", "op": "add"},
        {"jid": BOB, "direction": "to", "op": "set"},
        {"direction": "to", "op": "add"},
    ):
        with pytest.raises(ValueError):
            RosterChange.from_row(ALICE, payload)


# ---- reconcile: a direction the user removed ends the consent --------------------------------


@pytest.fixture
def rosters(db: Database, clock, commits: CommitCounter) -> Rosters:
    return Rosters(db, clock, COMPONENT, on_commit=commits)


async def accepted(sharing: PresenceSharing, sender: User, receiver: User):
    request = await sharing.create(CreatePresenceRequest(sender, to_jid=receiver.jid))
    return await sharing.transition(TransitionPresenceRequest(receiver, request.id, Transition.ACCEPT))


async def applied(db: Database, owner: str, contact: str, granted: str, created: bool = True) -> None:
    """As the dispatcher leaves it once the roster rows are delivered: rows gone, record stored."""

    async def body(tx: Conn) -> None:
        await tx.execute("DELETE FROM outbox WHERE kind = 'roster'")
        await records.save(tx, RosterRecord(owner, contact, created, granted), 0)

    await db.write(body)


def messages_of(rows: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str, str]]:
    return [
        (to, p["handshake"]["action"], p["handshake"]["status"]) for kind, to, p in rows if kind == "message"
    ]


def roster_rows(rows: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str, str, str]]:
    return [(to, p["jid"], p["direction"], p["op"]) for kind, to, p in rows if kind == "roster"]


async def test_the_sharer_removing_the_watcher_interrupts_the_request(
    rosters: Rosters, sharing: PresenceSharing, db: Database, alice: User, bob: User, commits: CommitCounter
) -> None:
    request = await accepted(sharing, alice, bob)
    await applied(db, ALICE, BOB, "to")
    await applied(db, BOB, ALICE, "from")
    await clear_outbox(db)
    seen = (await rosters.granted(BareJid(BOB)))[0]
    assert set(seen) == {ALICE}
    before = commits.count

    # bob removed alice from his roster in his client (Prosody removed both halves).
    ended = (await rosters.reconcile(BareJid(BOB), {}, seen)).ended

    assert ended == [f"presence request {request.id} interrupted (alice@example.test -> bob@example.test)"]
    async with db.reader.execute("SELECT count(*) FROM presence_requests") as cur:
        assert (await cur.fetchone())[0] == 0
    rows = await outbox_rows(db)
    assert messages_of(rows) == [(ALICE, "delete", "interrupted"), (BOB, "delete", "interrupted")]
    assert roster_rows(rows) == [(ALICE, BOB, "to", "remove"), (BOB, ALICE, "from", "remove")]
    assert await records.get(db.reader, BOB, ALICE) is None  # the user removed the item itself
    assert commits.count == before + 1


async def test_the_watcher_unsubscribing_cancels_the_request(
    rosters: Rosters, sharing: PresenceSharing, db: Database, alice: User, bob: User
) -> None:
    request = await accepted(sharing, alice, bob)
    await applied(db, ALICE, BOB, "to")
    await clear_outbox(db)
    # alice sent `unsubscribe`: her item stays, without `to`.
    live = {BOB: RosterItem(BOB, "none", "bob")}
    ended = (await rosters.reconcile(BareJid(ALICE), live, (await rosters.granted(BareJid(ALICE)))[0])).ended
    assert ended == [f"presence request {request.id} canceled (alice@example.test -> bob@example.test)"]
    assert messages_of(await outbox_rows(db)) == [(ALICE, "delete", "canceled"), (BOB, "delete", "canceled")]
    kept = await records.get(db.reader, ALICE, BOB)
    assert (kept.created, kept.granted) == (True, "none")  # the delivery of the removal deletes it


async def test_a_roster_that_still_holds_the_direction_ends_nothing(
    rosters: Rosters, sharing: PresenceSharing, db: Database, alice: User, bob: User
) -> None:
    await accepted(sharing, alice, bob)
    await applied(db, ALICE, BOB, "to")
    await clear_outbox(db)
    live = {BOB: RosterItem(BOB, "both", "Bobby", ("Friends",))}
    assert await rosters.reconcile(BareJid(ALICE), live, (await rosters.granted(BareJid(ALICE)))[0]) == Reconciled([])
    assert await outbox_rows(db) == []


async def test_items_in_flight_or_changed_since_the_read_are_left_alone(
    rosters: Rosters, sharing: PresenceSharing, db: Database, alice: User, bob: User
) -> None:
    await accepted(sharing, alice, bob)  # its roster rows are still queued
    seen = {BOB: 1}
    await db.write(lambda tx: records.save(tx, RosterRecord(ALICE, BOB, True, "to"), 0))
    # Queued: not applied yet; the check says to look again.
    assert await rosters.reconcile(BareJid(ALICE), {}, seen) == Reconciled([], deferred=True)

    await applied(db, ALICE, BOB, "to")  # applied after the roster was read: a newer version
    assert await rosters.reconcile(BareJid(ALICE), {}, seen) == Reconciled([], deferred=True)
    async with db.reader.execute("SELECT status FROM presence_requests") as cur:
        assert [r[0] for r in await cur.fetchall()] == ["accepted"]


async def test_a_check_before_the_grant_is_applied_knows_it_must_look_again(
    rosters: Rosters, sharing: PresenceSharing, db: Database, alice: User, bob: User
) -> None:
    """The user unsubscribed right after the accept, before the dispatcher applied (and
    recorded) the grant: nothing to compare yet, but the check must not stop there."""
    await accepted(sharing, alice, bob)
    assert await rosters.granted(BareJid(ALICE)) == ({}, True)
    await applied(db, ALICE, BOB, "to")
    seen, in_flight = await rosters.granted(BareJid(ALICE))
    assert (set(seen), in_flight) == ({BOB}, False)


async def test_the_invitee_removing_the_device_ends_its_share(
    rosters: Rosters, device_sharing: DeviceSharing, db: Database, home
) -> None:
    shared = await device_sharing.share(
        ShareDevice.from_fields(home.alice, {"device_id": home.hall.id, "mode": "app", "user": BOB, "expire": 600}, 86_400)
    )
    await device_sharing.accept(ShareAnswer(home.bob, shared.invite_code))
    await applied(db, BOB, HALL, "to")
    await clear_outbox(db)
    ended = (await rosters.reconcile(BareJid(BOB), {}, (await rosters.granted(BareJid(BOB)))[0])).ended
    assert ended == [f"device share {shared.invite_code[:6]}… of device {home.hall.id} canceled"]
    (share,) = await device_sharing.list(home.bob)
    assert (share.state.value, share.reason) == ("cancel", "ended by the invited user from an XMPP client")
    rows = await outbox_rows(db)
    assert [(to, p["devicesharing"]["status"]) for kind, to, p in rows if kind == "message"] == [
        (ALICE, "cancel"), (BOB, "cancel"),
    ]
    assert roster_rows(rows) == [(BOB, HALL, "to", "remove")]
    async with db.reader.execute("SELECT count(*) FROM subscriptions") as cur:
        assert (await cur.fetchone())[0] == 0


# ---- resync ------------------------------------------------------------------------------


async def test_resync_queues_every_granted_direction_and_removes_stale_ones(
    rosters: Rosters, sharing: PresenceSharing, device_sharing: DeviceSharing, db: Database, home
) -> None:
    await accepted(sharing, home.carol, home.bob)
    shared = await device_sharing.share(
        ShareDevice.from_fields(home.alice, {"device_id": home.hall.id, "mode": "app", "user": BOB, "expire": 600}, 86_400)
    )
    await device_sharing.accept(ShareAnswer(home.bob, shared.invite_code))
    # A direction the service once granted that nothing grants any more (a lost row).
    await db.write(lambda tx: records.save(tx, RosterRecord(ALICE, "dave@example.test", True, "both"), 0))
    await clear_outbox(db)

    report = await rosters.resync(page=1)  # pages of one: every page boundary is crossed

    assert (report.grants, report.removals, report.owners) == (3, 2, 3)
    rows = await outbox_rows(db)
    assert sorted(roster_rows(rows)) == sorted([
        ("carol@example.test", BOB, "to", "add"),
        (BOB, "carol@example.test", "from", "add"),
        (BOB, HALL, "to", "add"),
        (ALICE, "dave@example.test", "from", "remove"),
        (ALICE, "dave@example.test", "to", "remove"),
    ])
    # The share's subscription is re-opened with the device's current state.
    assert ("presence", BOB, {"extension": "1001", "state": "terminated", "sequence": 2}) in rows

    await clear_outbox(db)
    again = await rosters.resync()
    assert (again.grants, again.removals) == (3, 2)  # idempotent: the dispatcher skips what holds
    assert await outbox.count(db.reader) > 0
