"""The outbox dispatcher against a fake Transport (the XMPP side: rosters held in
memory, as the server would) and a real outbox table."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from component.clock import FixedClock
from component.delivery import OutboxDispatcher, RosterFailed, RosterRefused, TransportGone
from component.rosters import RosterItem
from storage import Conn, Database, dead_letters, outbox
from storage import rosters as records
from storage.outbox import OutboxRow


class FakeTransport:
    """Records what the dispatcher hands to XMPP, and how many rows were still stored
    then; holds each user's roster like the server does."""

    def __init__(self, db: Database, roster: bool = True, gone_after_sets: int | None = None) -> None:
        self.db = db
        self.ready = True
        self.generation = 1
        self.roster = roster
        self.gone_after_sets = gone_after_sets
        self.log: list[tuple[str, Any]] = []
        self.barrier_reached = asyncio.Event()
        self.rosters: dict[str, dict[str, RosterItem]] = {}
        self.refuse: set[str] = set()  # owners whose roster IQs get `forbidden`
        self.fail: set[str] = set()  # owners whose roster IQs fail for good
        self.reads = 0

    rosters_off = False

    @property
    def roster_ready(self) -> bool:
        return self.roster

    def roster_allowed(self, owner: str) -> bool:
        return self.roster

    def send_management(self, row: OutboxRow) -> None:
        self.log.append(("message", (row.id, row.recipient, row.payload)))

    def send_presence(self, row: OutboxRow) -> None:
        self.log.append(("presence", (row.id, row.recipient, row.payload)))

    def _check(self, owner: str) -> None:
        sets = sum(1 for kind, _ in self.log if kind == "roster")
        if self.gone_after_sets is not None and sets >= self.gone_after_sets:
            raise TransportGone()
        if owner in self.refuse:
            raise RosterRefused("forbidden")
        if owner in self.fail:
            raise RosterFailed("item-not-found")

    async def roster_item(self, owner: str, contact: str) -> RosterItem | None:
        self.reads += 1  # tried, whatever the answer
        self._check(owner)
        await asyncio.sleep(0)  # let other items' changes interleave, as real IQs do
        return self.rosters.get(owner, {}).get(contact)

    async def set_roster_item(self, owner: str, item: RosterItem) -> None:
        self._check(owner)
        await asyncio.sleep(0)
        self.rosters.setdefault(owner, {})[item.jid] = item
        self.log.append(("roster", (owner, item.jid, item.subscription)))

    async def remove_roster_item(self, owner: str, contact: str) -> None:
        self._check(owner)
        await asyncio.sleep(0)
        self.rosters.get(owner, {}).pop(contact, None)
        self.log.append(("roster", (owner, contact, "remove")))

    async def barrier(self, generation: int) -> None:
        if generation != self.generation:
            raise TransportGone()
        self.log.append(("barrier", await outbox.count(self.db.reader)))
        self.barrier_reached.set()


def msg(n: int) -> dict[str, Any]:
    return {"handshake": {"id": f"r{n}", "action": "create", "type": "sent", "status": "pending"}}


def grant(contact: str, direction: str) -> dict[str, Any]:
    return {"jid": contact, "direction": direction, "op": "add", "name": contact.split("@")[0]}


def revoke(contact: str, direction: str) -> dict[str, Any]:
    return {"jid": contact, "direction": direction, "op": "remove"}


ALICE, BOB = "alice@example.test", "bob@example.test"

ROWS = [
    ("message", ALICE, msg(1)),
    ("roster", ALICE, grant(BOB, "to")),
    ("roster", BOB, grant(ALICE, "from")),
    ("message", BOB, msg(2)),
    ("roster", ALICE, revoke(BOB, "to")),
    ("roster", BOB, revoke(ALICE, "from")),
    ("message", ALICE, msg(3)),
]


async def add_rows(db: Database, rows: list[tuple[str, str, dict[str, Any]]]) -> None:
    async def body(tx: Conn) -> None:
        for kind, recipient, payload in rows:
            await outbox.add(tx, kind, recipient, payload, 0)

    await db.write(body)


@pytest.fixture
async def stored(db: Database) -> list[OutboxRow]:
    await add_rows(db, ROWS)
    return await outbox.next_batch(db.reader, 0, 100)


def roster_log(log: list[tuple[str, Any]]) -> list[tuple[str, str, str]]:
    return [entry for kind, entry in log if kind == "roster"]


async def test_rows_are_delivered_in_order_per_recipient_then_deleted(
    db: Database, stored: list[OutboxRow]
) -> None:
    transport = FakeTransport(db)
    dispatcher = OutboxDispatcher(db, transport)
    await dispatcher.drain()
    ids = [r.id for r in stored]
    assert [e for e in transport.log if e[0] == "message"] == [
        ("message", (ids[0], "alice@example.test", msg(1))),
        ("message", (ids[3], "bob@example.test", msg(2))),
        ("message", (ids[6], "alice@example.test", msg(3))),
    ]
    # Each item's changes in commit order: created, then removed (the service created them).
    assert [e for e in roster_log(transport.log) if e[0] == ALICE] == [
        (ALICE, BOB, "to"), (ALICE, BOB, "remove"),
    ]
    assert [e for e in roster_log(transport.log) if e[0] == BOB] == [
        (BOB, ALICE, "from"), (BOB, ALICE, "remove"),
    ]
    assert transport.rosters == {ALICE: {}, BOB: {}}
    # Every row was still stored when the barrier ran, and the barrier came last.
    assert transport.log[-1] == ("barrier", len(ROWS))
    assert await outbox.count(db.reader) == 0
    assert dispatcher.delivered == len(ROWS)


async def test_rows_are_kept_when_the_stream_goes_away_mid_batch(
    db: Database, stored: list[OutboxRow]
) -> None:
    broken = FakeTransport(db, gone_after_sets=1)
    dispatcher = OutboxDispatcher(db, broken)
    with pytest.raises(TransportGone):
        await dispatcher.drain()
    # Every row is kept; those in flight are marked to go alone next time.
    kept = await outbox.next_batch(db.reader, 0, 100)
    assert [r.id for r in kept] == [r.id for r in stored]
    assert all(r.suspect and r.attempts == 0 for r in kept)
    assert dispatcher.delivered == 0
    assert not any(kind == "barrier" for kind, _ in broken.log)

    # After the reconnect everything goes again, with the same row ids (stanza ids ph-N),
    # each alone and confirmed before the next: none of them broke the stream.
    healthy = FakeTransport(db)
    healthy.rosters = broken.rosters
    dispatcher.transport = healthy
    await dispatcher.drain()
    assert [e[1][0] for e in healthy.log if e[0] == "message"] == [stored[i].id for i in (0, 3, 6)]
    assert [kind for kind, _ in healthy.log].count("barrier") == len(ROWS)
    assert await outbox.count(db.reader) == 0
    assert dispatcher.dead == 0


async def test_rows_are_kept_when_the_barrier_fails(db: Database, stored: list[OutboxRow]) -> None:
    class NoBarrier(FakeTransport):
        async def barrier(self, generation: int) -> None:
            raise TransportGone()

    dispatcher = OutboxDispatcher(db, NoBarrier(db))
    with pytest.raises(TransportGone):
        await dispatcher.drain()
    assert await outbox.count(db.reader) == len(ROWS)


async def test_roster_rows_wait_without_the_roster_privilege(
    db: Database, stored: list[OutboxRow]
) -> None:
    """Messages go; roster rows stay in the outbox, untouched, until the server grants
    roster access, then go in order (issue #9: they used to be deleted as delivered)."""
    transport = FakeTransport(db, roster=False)
    dispatcher = OutboxDispatcher(db, transport)
    await dispatcher.drain()
    assert [kind for kind, _ in transport.log] == ["message", "message", "message", "barrier"]
    assert [r.id for r in await outbox.next_batch(db.reader, 0, 100)] == [stored[i].id for i in (1, 2, 4, 5)]
    assert transport.reads == 0

    transport.roster = True  # the advertisement came
    transport.log.clear()
    await dispatcher.drain()
    # In order per roster item (two items run as two chains: on PostgreSQL, whose reads
    # take real round trips, the chains interleave differently than on SQLite).
    applied = roster_log(transport.log)
    assert [e for e in applied if e[:2] == (ALICE, BOB)] == [(ALICE, BOB, "to"), (ALICE, BOB, "remove")]
    assert [e for e in applied if e[:2] == (BOB, ALICE)] == [(BOB, ALICE, "from"), (BOB, ALICE, "remove")]
    assert len(applied) == 4
    assert await outbox.count(db.reader) == 0


async def test_rows_of_an_unknown_kind_are_moved_aside(db: Database) -> None:
    await db.write(lambda tx: outbox.add(tx, "carrier-pigeon", "alice@example.test", {}, 0))
    transport = FakeTransport(db)
    await OutboxDispatcher(db, transport).drain()
    assert transport.log == [("barrier", 1)]
    assert await outbox.count(db.reader) == 0
    (dead,) = await dead_letters.recent(db.reader)
    assert (dead.kind, dead.attempts, dead.last_error) == ("carrier-pigeon", 1, "unknown kind 'carrier-pigeon'")


async def test_batches_are_confirmed_in_windows_until_the_outbox_is_empty(
    db: Database, stored: list[OutboxRow]
) -> None:
    transport = FakeTransport(db)
    await OutboxDispatcher(db, transport, batch_size=3, confirm_window=3).drain()
    assert [e for e in transport.log if e[0] == "barrier"] == [
        ("barrier", 7), ("barrier", 4), ("barrier", 1),
    ]
    assert await outbox.count(db.reader) == 0


async def test_a_wide_window_confirms_every_batch_with_one_barrier(
    db: Database, stored: list[OutboxRow]
) -> None:
    """Batches are sent back to back; the rows stay stored until the single barrier."""
    transport = FakeTransport(db)
    await OutboxDispatcher(db, transport, batch_size=3, confirm_window=100).drain()
    assert [e for e in transport.log if e[0] == "barrier"] == [("barrier", 7)]
    assert await outbox.count(db.reader) == 0


async def test_rows_committed_during_a_confirmation_are_sent_before_it_ends(
    db: Database, stored: list[OutboxRow]
) -> None:
    """The confirmation (roster answers, barrier, delete) runs in the background: a row
    committed meanwhile goes out at once, and is confirmed after it."""
    release = asyncio.Event()

    class SlowBarrier(FakeTransport):
        async def barrier(self, generation: int) -> None:
            self.barrier_reached.set()
            await release.wait()
            await super().barrier(generation)

    transport = SlowBarrier(db)
    dispatcher = OutboxDispatcher(db, transport)
    drain = asyncio.create_task(dispatcher.drain())
    await asyncio.wait_for(transport.barrier_reached.wait(), 5)
    await db.write(lambda tx: outbox.add(tx, "message", "carol@example.test", msg(4), 0))
    dispatcher.wake()
    for _ in range(100):  # the new row is sent while the first barrier still waits
        if any(e[0] == "message" and e[1][1] == "carol@example.test" for e in transport.log):
            break
        await asyncio.sleep(0.01)
    assert ("message", (stored[-1].id + 1, "carol@example.test", msg(4))) in transport.log
    assert not any(kind == "barrier" for kind, _ in transport.log)
    release.set()
    await asyncio.wait_for(drain, 5)
    # Two confirmations: the first window (all 8 rows still stored), then the new row.
    assert [e for e in transport.log if e[0] == "barrier"] == [("barrier", 8), ("barrier", 1)]
    assert await outbox.count(db.reader) == 0
    assert dispatcher.delivered == len(ROWS) + 1


async def test_nothing_is_delivered_while_the_transport_is_not_ready(
    db: Database, stored: list[OutboxRow]
) -> None:
    transport = FakeTransport(db)
    transport.ready = False
    await OutboxDispatcher(db, transport).drain()
    assert transport.log == []
    assert await outbox.count(db.reader) == len(ROWS)


async def test_wake_runs_the_dispatcher_task(db: Database, stored: list[OutboxRow]) -> None:
    transport = FakeTransport(db)
    dispatcher = OutboxDispatcher(db, transport)
    dispatcher.start()
    try:
        dispatcher.wake()

        async def delivered() -> None:
            await transport.barrier_reached.wait()
            while dispatcher.delivered < len(ROWS):  # the delete commits right after the barrier
                await asyncio.sleep(0.01)

        await asyncio.wait_for(delivered(), 5)
    finally:
        await dispatcher.stop()
    assert await outbox.count(db.reader) == 0


@pytest.mark.parametrize("turns", range(4))
async def test_a_stop_right_after_a_wake_up_ends_the_dispatcher(db: Database, turns: int) -> None:
    """A service's stop hung for good in CI: on Python 3.11 `asyncio.wait_for` drops a
    cancellation that arrives within a few turns of the loop after the awaited event
    is set, so the dispatcher went back to waiting and `stop()` waited for it."""
    transport = FakeTransport(db)
    transport.ready = False  # each wake-up only loops back to waiting
    dispatcher = OutboxDispatcher(db, transport)
    dispatcher.start()
    await asyncio.sleep(0)  # the dispatcher is waiting for a wake-up
    dispatcher.wake()
    for _ in range(turns):
        await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await dispatcher.stop()


# ---- roster merge: the user's item is read first, only one direction changes ------------


async def test_an_existing_item_keeps_its_name_groups_and_other_direction(db: Database) -> None:
    transport = FakeTransport(db)
    transport.rosters[ALICE] = {BOB: RosterItem(BOB, "from", "Bobby", ("Friends",))}
    await add_rows(db, [("roster", ALICE, grant(BOB, "to"))])
    await OutboxDispatcher(db, transport).drain()
    assert transport.rosters[ALICE] == {BOB: RosterItem(BOB, "both", "Bobby", ("Friends",))}
    record = await records.get(db.reader, ALICE, BOB)
    assert (record.created, record.granted) == (False, "to")

    await add_rows(db, [("roster", ALICE, revoke(BOB, "to"))])
    await OutboxDispatcher(db, transport).drain()
    # The item was the user's: it stays, with its name, group and the other direction.
    assert transport.rosters[ALICE] == {BOB: RosterItem(BOB, "from", "Bobby", ("Friends",))}
    assert await records.get(db.reader, ALICE, BOB) is None  # the service holds nothing there


async def test_a_users_item_without_a_direction_is_never_removed(db: Database) -> None:
    transport = FakeTransport(db)
    transport.rosters[ALICE] = {BOB: RosterItem(BOB, "none", "Bobby", ("Friends",))}
    await add_rows(db, [("roster", ALICE, grant(BOB, "to")), ("roster", ALICE, revoke(BOB, "to"))])
    await OutboxDispatcher(db, transport).drain()
    assert roster_log(transport.log) == [(ALICE, BOB, "to"), (ALICE, BOB, "none")]
    assert transport.rosters[ALICE] == {BOB: RosterItem(BOB, "none", "Bobby", ("Friends",))}


async def test_an_item_the_service_created_is_removed_once_it_holds_no_direction(db: Database) -> None:
    transport = FakeTransport(db)
    await add_rows(db, [
        ("roster", ALICE, grant(BOB, "to")),
        ("roster", ALICE, grant(BOB, "from")),
        ("roster", ALICE, revoke(BOB, "to")),
    ])
    await OutboxDispatcher(db, transport).drain()
    assert transport.rosters[ALICE] == {BOB: RosterItem(BOB, "from", "bob")}
    record = await records.get(db.reader, ALICE, BOB)
    assert (record.created, record.granted) == (True, "from")

    # After a restart (a new dispatcher), the record still says who created the item.
    await add_rows(db, [("roster", ALICE, revoke(BOB, "from"))])
    again = FakeTransport(db)
    again.rosters = transport.rosters
    await OutboxDispatcher(db, again).drain()
    assert transport.rosters[ALICE] == {}
    assert roster_log(again.log) == [(ALICE, BOB, "remove")]


async def test_the_creation_is_recorded_before_the_item_is_set(db: Database) -> None:
    """A crash right after the set must not make the item look like the user's."""

    class CrashAfterSet(FakeTransport):
        async def set_roster_item(self, owner: str, item: RosterItem) -> None:
            assert (await records.get(self.db.reader, owner, item.jid)).created
            await super().set_roster_item(owner, item)
            raise TransportGone()

    crashing = CrashAfterSet(db)
    await add_rows(db, [("roster", ALICE, grant(BOB, "to"))])
    with pytest.raises(TransportGone):
        await OutboxDispatcher(db, crashing).drain()
    assert await outbox.count(db.reader) == 1  # delivered again after the restart
    after = FakeTransport(db)
    after.rosters = crashing.rosters
    await add_rows(db, [("roster", ALICE, revoke(BOB, "to"))])
    await OutboxDispatcher(db, after).drain()
    assert after.rosters[ALICE] == {}  # known as created: removed
    assert roster_log(after.log) == [(ALICE, BOB, "remove")]  # the repeated add changed nothing


async def test_delivering_a_row_twice_changes_nothing_the_second_time(db: Database) -> None:
    transport = FakeTransport(db)
    await add_rows(db, [("roster", ALICE, grant(BOB, "to"))])
    await OutboxDispatcher(db, transport).drain()
    await add_rows(db, [("roster", ALICE, grant(BOB, "to"))])
    await OutboxDispatcher(db, transport).drain()
    assert roster_log(transport.log) == [(ALICE, BOB, "to")]
    assert await outbox.count(db.reader) == 0


async def test_a_forbidden_answer_keeps_the_row_and_the_items_later_rows(db: Database) -> None:
    transport = FakeTransport(db)
    transport.refuse.add(ALICE)
    await add_rows(db, [
        ("roster", ALICE, grant(BOB, "to")),
        ("roster", BOB, grant(ALICE, "from")),
        ("roster", ALICE, revoke(BOB, "to")),
        ("message", ALICE, msg(1)),
    ])
    dispatcher = OutboxDispatcher(db, transport)
    await dispatcher.drain()
    assert roster_log(transport.log) == [(BOB, ALICE, "from")]
    assert [(r.recipient, r.payload["op"]) for r in await outbox.next_batch(db.reader, 0, 10)] == [
        (ALICE, "add"), (ALICE, "remove"),
    ]
    transport.refuse.clear()
    transport.log.clear()
    await dispatcher.drain()
    assert roster_log(transport.log) == [(ALICE, BOB, "to"), (ALICE, BOB, "remove")]
    assert await outbox.count(db.reader) == 0


async def test_a_change_the_server_refuses_is_retried_then_moved_aside(db: Database) -> None:
    """It never holds up other rows; its item's later changes keep their order behind it."""
    clock = FixedClock()
    transport = FakeTransport(db)
    transport.fail.add(ALICE)
    await add_rows(db, [
        ("roster", ALICE, grant(BOB, "to")),
        ("message", ALICE, msg(1)),
        ("roster", ALICE, revoke(BOB, "to")),
        ("roster", BOB, grant(ALICE, "from")),
    ])
    dispatcher = OutboxDispatcher(db, transport, clock=clock, max_attempts=3)
    await dispatcher.drain()
    assert [kind for kind, _ in transport.log] == ["message", "roster", "barrier"]  # bob's item went
    left = await outbox.next_batch(db.reader, 0, 10)
    assert [(r.payload["op"], r.attempts, r.next_try_at) for r in left] == [
        ("add", 1, clock.now_ms() + 2_000), ("remove", 0, 0),
    ]
    # Not due yet: nothing is tried, and the removal stays behind the add.
    transport.log.clear()
    await dispatcher.drain()
    assert transport.log == [] and transport.reads == 2
    for spent in (2, 3):
        clock.advance(300_000)
        await dispatcher.drain()
        assert transport.reads == 2 + spent - 1
    # Its attempts spent: kept aside, with why; the next change of the item goes on.
    (dead,) = await dead_letters.recent(db.reader)
    assert (dead.source, dead.kind, dead.recipient, dead.attempts) == ("outbox", "roster", ALICE, 3)
    assert dead.payload == grant(BOB, "to") and dead.last_error == "the server answered item-not-found"
    assert dispatcher.dead == 1
    transport.fail.clear()
    await dispatcher.drain()
    assert await outbox.count(db.reader) == 0


async def test_a_row_that_cannot_be_built_does_not_block_the_others(db: Database) -> None:
    class Picky(FakeTransport):
        def send_management(self, row: OutboxRow) -> None:
            if row.payload["handshake"]["id"] == "r2":
                raise ValueError("not XML")
            super().send_management(row)

    clock = FixedClock()
    transport = Picky(db)
    await add_rows(db, [("message", ALICE, msg(1)), ("message", ALICE, msg(2)), ("message", BOB, msg(3))])
    dispatcher = OutboxDispatcher(db, transport, clock=clock, max_attempts=2)
    await dispatcher.drain()
    assert [e[1][2]["handshake"]["id"] for e in transport.log if e[0] == "message"] == ["r1", "r3"]
    (left,) = await outbox.next_batch(db.reader, 0, 10)
    assert (left.payload, left.attempts) == (msg(2), 1)
    clock.advance(10_000)
    await dispatcher.drain()
    assert await outbox.count(db.reader) == 0
    (dead,) = await dead_letters.recent(db.reader)
    assert (dead.payload, dead.last_error) == (msg(2), "cannot be sent: ValueError")


async def test_a_row_that_breaks_the_stream_is_found_without_blaming_its_neighbours(db: Database) -> None:
    """The server closes the stream whenever it gets row r2 (say, a stanza it refuses):
    after the first loss every row in flight goes alone; only r2 spends attempts."""

    class Breaks(FakeTransport):
        sent_poison = False

        def send_management(self, row: OutboxRow) -> None:
            super().send_management(row)
            if row.payload["handshake"]["id"] == "r2":
                self.sent_poison = True

        async def barrier(self, generation: int) -> None:
            if self.sent_poison:  # the server closed the stream after r2
                self.sent_poison = False
                self.generation += 1
                raise TransportGone()
            await super().barrier(generation)

    clock = FixedClock()
    transport = Breaks(db)
    await add_rows(db, [("message", ALICE, msg(n)) for n in (1, 2, 3)])
    dispatcher = OutboxDispatcher(db, transport, clock=clock, max_attempts=3)
    with pytest.raises(TransportGone):
        await dispatcher.drain()  # all three in flight: all suspect, none counted
    assert [(r.suspect, r.attempts) for r in await outbox.next_batch(db.reader, 0, 10)] == [(True, 0)] * 3
    with pytest.raises(TransportGone):
        await dispatcher.drain()  # r1 alone: delivered; r2 alone: the stream goes again
    left = await outbox.next_batch(db.reader, 0, 10)
    assert [(r.payload["handshake"]["id"], r.suspect, r.attempts) for r in left] == [("r2", True, 1), ("r3", True, 0)]
    await dispatcher.drain()  # r2 is not due yet: r3 goes alone, fine
    for _ in range(2):
        clock.advance(300_000)
        with pytest.raises(TransportGone):
            await dispatcher.drain()
    assert await outbox.count(db.reader) == 0
    (dead,) = await dead_letters.recent(db.reader)
    assert (dead.payload, dead.attempts) == (msg(2), 3)
    assert sorted(e[1][2]["handshake"]["id"] for e in transport.log if e[0] == "message") == [
        "r1", "r1", "r2", "r2", "r2", "r2", "r3", "r3",
    ]


async def test_a_barrier_on_a_new_stream_confirms_nothing_sent_on_the_old_one(db: Database) -> None:
    """The stream was lost and replaced between sending and the barrier."""

    class Replaced(FakeTransport):
        def send_management(self, row: OutboxRow) -> None:
            super().send_management(row)
            self.generation += 1  # lost right after: the next barrier is on a new stream

    transport = Replaced(db)
    await add_rows(db, [("message", ALICE, msg(1))])
    with pytest.raises(TransportGone):
        await OutboxDispatcher(db, transport).drain()
    (kept,) = await outbox.next_batch(db.reader, 0, 10)
    assert kept.suspect and kept.attempts == 0


async def test_rows_committed_elsewhere_are_found_by_the_poll(db: Database) -> None:
    """Without a wake-up (say, `resync` in another process), the poll finds the rows."""
    transport = FakeTransport(db)
    dispatcher = OutboxDispatcher(db, transport, poll_s=0.05)
    dispatcher.start()
    try:
        await add_rows(db, [("message", ALICE, msg(1))])

        async def delivered() -> None:
            while dispatcher.delivered < 1:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(delivered(), 5)
    finally:
        await dispatcher.stop()
