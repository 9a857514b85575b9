"""Fixtures for the stanza tier: the real component, actions and database, no network."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from component.actions import Identity, PresenceSharing
from component.clock import FixedClock
from component.commands import CreateAccount, CreateAccountUser, CreateDevice, Principal
from component.config import ComponentConfig
from component.device_sharing import DeviceSharing, SharingSettings
from component.provisioning import Provisioning
from component.subscriptions import PresenceStates
from component.xmpp import PresenceComponent
from storage import Database
from stanza_rig import COMPONENT, FakeVerifier, Home, Wire


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "presence.sqlite3")
    await database.open()
    yield database
    await database.close()


@pytest.fixture
def config() -> ComponentConfig:
    # A long reconnect delay: a test that drops the session must not see a reconnect attempt.
    return ComponentConfig(
        jid=COMPONENT, secret="s3cret", reconnect_min_s=3600, reconnect_max_s=3600, privilege_wait_s=5
    )


@pytest.fixture
def identity(db: Database, clock: FixedClock, config: ComponentConfig) -> Identity:
    return Identity(db, clock, config.served_domains(), FakeVerifier(), 3600)


@pytest.fixture
def sharing(db: Database, clock: FixedClock, config: ComponentConfig) -> PresenceSharing:
    return PresenceSharing(db, clock, config.served_domains())


@pytest.fixture
def provisioning(db: Database, clock: FixedClock, config: ComponentConfig) -> Provisioning:
    return Provisioning(db, clock, config.served_domains(), COMPONENT)


@pytest.fixture
def states(
    db: Database, clock: FixedClock, config: ComponentConfig, provisioning: Provisioning
) -> PresenceStates:
    return PresenceStates(db, clock, config.served_domains(), provisioning)


@pytest.fixture
def device_sharing(db: Database, clock: FixedClock, config: ComponentConfig) -> DeviceSharing:
    return DeviceSharing(db, clock, config.served_domains(), SharingSettings(component_jid=COMPONENT))


@pytest.fixture
async def comp(
    config: ComponentConfig,
    identity: Identity,
    sharing: PresenceSharing,
    states: PresenceStates,
    device_sharing: DeviceSharing,
) -> AsyncIterator[PresenceComponent]:
    component = PresenceComponent(
        config, identity, sharing, states, device_sharing, max_page_size=50,
        admins=frozenset({"admin@example.test"}),
    )
    yield component
    await component.close()  # its background tasks (account checks) end with the test


@pytest.fixture
def wire(comp: PresenceComponent) -> Wire:
    return Wire(comp)


@pytest.fixture
async def home(provisioning: Provisioning) -> Home:
    admin = Principal(None)
    account = await provisioning.create_account(admin, CreateAccount("Example", "example.test"))
    alice = await provisioning.create_user(admin, account.id, CreateAccountUser("alice", email="alice@mail.test"))
    bob = await provisioning.create_user(admin, account.id, CreateAccountUser("bob"))
    hall = await provisioning.create_device(
        admin, account.id, CreateDevice("Hall phone", "1001", owner_id=alice.user.id)
    )
    return Home(account, hall, alice.user.id, bob.user.id)
