"""The outbox dispatcher against a fake Transport (the XMPP side) and a real outbox table."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from component.delivery import OutboxDispatcher, TransportGone
from storage import Conn, Database, outbox
from storage.outbox import OutboxRow


class FakeTransport:
    """Records what the dispatcher hands to XMPP, and how many rows were still stored then."""

    def __init__(self, db: Database, roster: bool = True, gone_after_sets: int | None = None) -> None:
        self.db = db
        self.ready = True
        self.roster = roster
        self.gone_after_sets = gone_after_sets
        self.log: list[tuple[str, Any]] = []
        self.barrier_reached = asyncio.Event()

    def roster_allowed(self, owner: str) -> bool:
        return self.roster

    def send_management(self, row: OutboxRow) -> None:
        self.log.append(("message", (row.id, row.recipient, row.payload)))

    async def set_roster_item(self, row: OutboxRow) -> None:
        sets = sum(1 for kind, _ in self.log if kind == "roster")
        if self.gone_after_sets is not None and sets >= self.gone_after_sets:
            raise TransportGone()
        await asyncio.sleep(0)  # let other owners' sets interleave, as real IQs do
        self.log.append(("roster", (row.id, row.recipient, row.payload)))

    async def barrier(self) -> None:
        self.log.append(("barrier", await outbox.count(self.db.reader)))
        self.barrier_reached.set()


def msg(n: int) -> dict[str, Any]:
    return {"handshake": {"id": f"r{n}", "action": "create", "type": "sent", "status": "pending"}}


def item(contact: str, subscription: str) -> dict[str, Any]:
    return {"jid": contact, "subscription": subscription, "name": contact.split("@")[0]}


ROWS = [
    ("message", "alice@example.test", msg(1)),
    ("roster", "alice@example.test", item("bob@example.test", "to")),
    ("roster", "bob@example.test", item("alice@example.test", "from")),
    ("message", "bob@example.test", msg(2)),
    ("roster", "alice@example.test", item("bob@example.test", "remove")),
    ("roster", "bob@example.test", item("alice@example.test", "remove")),
    ("message", "alice@example.test", msg(3)),
]


@pytest.fixture
async def stored(db: Database) -> list[OutboxRow]:
    async def add_rows(tx: Conn) -> None:
        for kind, recipient, payload in ROWS:
            await outbox.add(tx, kind, recipient, payload, 0)

    await db.write(add_rows)
    return await outbox.next_batch(db.reader, 0, 100)


def per_recipient(log: list[tuple[str, Any]], kind: str) -> dict[str, list[int]]:
    order: dict[str, list[int]] = {}
    for got_kind, (row_id, recipient, _payload) in (e for e in log if e[0] == kind):
        assert got_kind == kind
        order.setdefault(recipient, []).append(row_id)
    return order


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
    assert per_recipient(transport.log, "roster") == {
        "alice@example.test": [ids[1], ids[4]],
        "bob@example.test": [ids[2], ids[5]],
    }
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
    assert await outbox.next_batch(db.reader, 0, 100) == stored
    assert dispatcher.delivered == 0
    assert not any(kind == "barrier" for kind, _ in broken.log)

    # After the reconnect everything goes again, with the same row ids (stanza ids ph-N).
    healthy = FakeTransport(db)
    dispatcher.transport = healthy
    await dispatcher.drain()
    assert [e[1][0] for e in healthy.log if e[0] == "message"] == [stored[i].id for i in (0, 3, 6)]
    assert await outbox.count(db.reader) == 0


async def test_rows_are_kept_when_the_barrier_fails(db: Database, stored: list[OutboxRow]) -> None:
    class NoBarrier(FakeTransport):
        async def barrier(self) -> None:
            raise TransportGone()

    dispatcher = OutboxDispatcher(db, NoBarrier(db))
    with pytest.raises(TransportGone):
        await dispatcher.drain()
    assert await outbox.count(db.reader) == len(ROWS)


async def test_roster_rows_are_dropped_without_the_roster_privilege(
    db: Database, stored: list[OutboxRow]
) -> None:
    transport = FakeTransport(db, roster=False)
    await OutboxDispatcher(db, transport).drain()
    assert [kind for kind, _ in transport.log] == ["message", "message", "message", "barrier"]
    assert await outbox.count(db.reader) == 0


async def test_rows_of_an_unknown_kind_are_dropped(db: Database) -> None:
    await db.write(lambda tx: outbox.add(tx, "carrier-pigeon", "alice@example.test", {}, 0))
    transport = FakeTransport(db)
    await OutboxDispatcher(db, transport).drain()
    assert transport.log == [("barrier", 1)]
    assert await outbox.count(db.reader) == 0


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
        async def barrier(self) -> None:
            self.barrier_reached.set()
            await release.wait()
            await super().barrier()

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
