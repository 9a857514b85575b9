"""Which instance is active (component/leadership.py), and the wake-ups across instances
(LISTEN/NOTIFY), on the session's real PostgreSQL cluster."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from component.leadership import Leadership, lock_key
from storage import outbox
from storage.postgres import PostgresDatabase

pytestmark = pytest.mark.postgresql

KEY = lock_key("presence.example.test")


class Candidate:
    def __init__(self, url: str, key: int = KEY) -> None:
        self.elected = asyncio.Event()
        self.lost = asyncio.Event()

        async def on_elected() -> None:
            self.elected.set()

        self.leadership = Leadership(url, key, on_elected, self.lost.set, poll_s=0.1)


@pytest.fixture
def url(postgres) -> str:
    return postgres.new_database("lead")


async def test_one_candidate_leads_and_the_next_takes_over_when_it_stops(url: str) -> None:
    first, second = Candidate(url), Candidate(url)
    first.leadership.start()
    await asyncio.wait_for(first.elected.wait(), 10)
    second.leadership.start()
    await asyncio.sleep(0.5)  # several polls of the second: it must not lead meanwhile
    assert not second.elected.is_set()
    assert (first.leadership.leader, second.leadership.leader) == (True, False)

    await first.leadership.stop()
    await asyncio.wait_for(second.elected.wait(), 10)
    assert second.leadership.leader
    await second.leadership.stop()


async def test_the_lock_goes_with_its_connection_when_the_holder_is_killed(url: str) -> None:
    first, second = Candidate(url), Candidate(url)
    first.leadership.start()
    await asyncio.wait_for(first.elected.wait(), 10)
    second.leadership.start()
    # The holder's backend dies as with a SIGKILLed process: PostgreSQL frees the lock.
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        )
    finally:
        await admin.close()
    await asyncio.wait_for(second.elected.wait(), 10)
    # The old holder notices it lost the connection holding the lock and says so.
    await asyncio.wait_for(first.lost.wait(), 10)
    assert not first.leadership.leader
    await first.leadership.stop()
    await second.leadership.stop()


async def test_different_components_lead_independently(url: str) -> None:
    one, other = Candidate(url, lock_key("a.example.test")), Candidate(url, lock_key("b.example.test"))
    one.leadership.start()
    other.leadership.start()
    await asyncio.wait_for(asyncio.gather(one.elected.wait(), other.elected.wait()), 10)
    await one.leadership.stop()
    await other.leadership.stop()


async def test_a_committed_outbox_row_notifies_listeners_a_rolled_back_one_does_not(url: str) -> None:
    writer, listening = PostgresDatabase(url), PostgresDatabase(url)
    await writer.open()
    await listening.open()
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await listening.listen(("outbox", "mail_outbox"), heard.put_nowait)
    try:
        while not heard.empty():  # the wake-up a (re)connected listener gives itself
            heard.get_nowait()

        class Abandon(Exception):
            pass

        async def add_then_fail(tx) -> None:
            await outbox.add(tx, "message", "alice@example.test", {}, 1)
            raise Abandon()

        with pytest.raises(Abandon):
            await writer.write(add_then_fail)
        await writer.write(lambda tx: outbox.add(tx, "message", "bob@example.test", {}, 2))
        assert await asyncio.wait_for(heard.get(), 10) == "outbox"
        await asyncio.sleep(0.2)
        assert heard.empty()  # one commit, one notification; none for the rollback
    finally:
        await listener.stop()
        await listening.close()
        await writer.close()
