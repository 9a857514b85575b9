"""Fixtures for the unit tier: a real SQLite file with the real migrations, an
injected FixedClock and a fake password verifier (the XMPP server's job)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from component.actions import Identity, PresenceSharing
from component.clock import FixedClock
from component.model import BareJid, User
from component.provisioning import Provisioning
from component.subscriptions import PresenceStates
from storage import Database
from unit_rig import SERVED, TOKEN_TTL_S, CommitCounter, FakeVerifier


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "presence.sqlite3"


@pytest.fixture
async def db(db_path: Path) -> AsyncIterator[Database]:
    database = Database(db_path)
    await database.open()
    yield database
    await database.close()


@pytest.fixture
def verifier() -> FakeVerifier:
    return FakeVerifier()


@pytest.fixture
def identity(db: Database, clock: FixedClock, verifier: FakeVerifier) -> Identity:
    return Identity(db, clock, SERVED, verifier, TOKEN_TTL_S)


@pytest.fixture
def commits() -> CommitCounter:
    return CommitCounter()


@pytest.fixture
def sharing(db: Database, clock: FixedClock, commits: CommitCounter) -> PresenceSharing:
    return PresenceSharing(db, clock, SERVED, on_commit=commits, max_pending_sent=5)


@pytest.fixture
def provisioning(db: Database, clock: FixedClock) -> Provisioning:
    return Provisioning(db, clock, SERVED)


@pytest.fixture
def states(
    db: Database, clock: FixedClock, provisioning: Provisioning, commits: CommitCounter
) -> PresenceStates:
    return PresenceStates(db, clock, SERVED, provisioning, on_commit=commits)


@pytest.fixture
async def alice(identity: Identity) -> User:
    return await identity.user_for_jid(BareJid("alice@example.test"))


@pytest.fixture
async def bob(identity: Identity) -> User:
    return await identity.user_for_jid(BareJid("bob@example.test"))


@pytest.fixture
async def carol(identity: Identity) -> User:
    return await identity.user_for_jid(BareJid("carol@example.test"))
