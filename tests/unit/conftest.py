"""Fixtures for the unit tier: a real database with the real migrations, an
injected FixedClock and a fake password verifier (the XMPP server's job).

`db` is parametrised over both engines: every test that uses it (directly or through
the action fixtures) runs once on a SQLite file (`[sqlite]`) and once on PostgreSQL
(`[postgresql]`, marked `postgresql`, on the session's private cluster, see
tests/conftest.py). A test that names `db_path`, or is marked `sqlite_only` (query
plans, pragmas), is about SQLite itself and runs on SQLite only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from component.actions import Identity, PresenceSharing
from component.clock import FixedClock
from component.commands import CreateAccount, CreateAccountUser, CreateDevice, Principal
from component.device_sharing import DeviceSharing, SharingSettings
from component.model import Account, BareJid, Device, User
from component.provisioning import Provisioning
from component.subscriptions import PresenceStates
from storage import Database
from storage.postgres import PostgresDatabase
from unit_rig import SERVED, TOKEN_TTL_S, CommitCounter, FakeVerifier


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "presence.sqlite3"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    engines = [pytest.param("sqlite", id="sqlite")]
    if "db_path" not in metafunc.fixturenames and not metafunc.definition.get_closest_marker("sqlite_only"):
        engines.append(pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql))
    metafunc.parametrize("backend", engines)


@pytest.fixture(scope="session")
def unit_pg_url(postgres) -> str:
    """One database for the unit tier's PostgreSQL runs, emptied before each test."""
    return postgres.new_database("unit")


async def _empty(database: PostgresDatabase) -> None:
    async with database.pool.acquire() as raw:
        tables = [
            r[0] for r in await raw.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'schema_version'"
            )
        ]
        if tables:
            await raw.execute(
                "TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"
            )


@pytest.fixture
async def db(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Database]:
    if backend == "postgresql":
        database: Database = PostgresDatabase(request.getfixturevalue("unit_pg_url"))  # type: ignore[assignment]
        await database.open()
        await _empty(database)  # type: ignore[arg-type]
    else:
        database = Database(request.getfixturevalue("db_path"))
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
def provisioning(db: Database, clock: FixedClock, commits: CommitCounter) -> Provisioning:
    return Provisioning(db, clock, SERVED, "presence.example.test", on_commit=commits)


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


# ---- family 3 (device sharing) -------------------------------------------------------

SHARE_SETTINGS = SharingSettings(
    component_jid="presence.example.test",
    max_expire_s=86_400,
    max_pending_per_device=3,
    email_enabled=True,
    public_url="https://presence.example.test/api/",
)


@dataclass(frozen=True)
class Home:
    """One account (realm example.test): alice manages the hall phone (extension 1001),
    bob manages the desk phone (extension 1002); both are provisioned with an e-mail
    address. carol is a user of the served domain that was never provisioned."""

    account: Account
    hall: Device
    desk: Device
    alice: User
    bob: User
    carol: User


@pytest.fixture
def mail_wakes() -> CommitCounter:
    return CommitCounter()


@pytest.fixture
def device_sharing(
    db: Database, clock: FixedClock, commits: CommitCounter, mail_wakes: CommitCounter
) -> DeviceSharing:
    return DeviceSharing(db, clock, SERVED, SHARE_SETTINGS, on_commit=commits, on_mail=mail_wakes)


@pytest.fixture
async def home(provisioning: Provisioning, alice: User, bob: User, carol: User) -> Home:
    admin = Principal(None)
    account = await provisioning.create_account(admin, CreateAccount("Example", "example.test"))
    await provisioning.create_user(admin, account.id, CreateAccountUser("alice", email="alice@mail.test"))
    await provisioning.create_user(admin, account.id, CreateAccountUser("bob", email="Bob@Mail.test"))
    hall = await provisioning.create_device(
        admin, account.id, CreateDevice("Hall phone", "1001", owner_id=alice.id)
    )
    desk = await provisioning.create_device(
        admin, account.id, CreateDevice("Desk phone", "1002", owner_id=bob.id)
    )
    return Home(account, hall, desk, alice, bob, carol)
