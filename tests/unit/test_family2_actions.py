"""Family 2 rules (DESIGN.md, "presence subscriptions"): provisioning, subscriptions and
presence states, run by the actions over a real database with a fixed clock."""

from __future__ import annotations

from typing import Any

import pytest

from component.actions import Identity
from component.clock import FixedClock
from component.commands import (
    CreateAccount,
    CreateAccountUser,
    CreateDevice,
    Principal,
    StateAction,
    StateChange,
)
from component.errors import BadRequest, Duplicate, Forbidden, NotFound
from component.model import (
    Account,
    AccountId,
    AccountUser,
    BareJid,
    Device,
    DeviceId,
    PresenceState,
    Subscription,
    User,
    UserId,
    new_account_id,
    new_object_id,
)
from component.provisioning import Provisioning
from component.subscriptions import PresenceStates
from storage import Database, users
from unit_rig import CommitCounter, clear_outbox, outbox_rows

START = FixedClock().now_ms()
ADMIN = Principal(None)
TWO_REALMS = frozenset({"example.test", "other.test"})
ALICE = BareJid("alice@example.test")
BOB = BareJid("bob@example.test")
CAROL = BareJid("carol@example.test")


# ---- rigs -------------------------------------------------------------------------------


@pytest.fixture
def wide_provisioning(db: Database, clock: FixedClock) -> Provisioning:
    """Provisioning serving two XMPP domains (two accounts can exist)."""
    return Provisioning(db, clock, TWO_REALMS, "presence.example.test")


@pytest.fixture
def wide_states(db: Database, clock: FixedClock, wide_provisioning: Provisioning) -> PresenceStates:
    return PresenceStates(db, clock, TWO_REALMS, wide_provisioning)


@pytest.fixture
async def account(provisioning: Provisioning) -> Account:
    return await provisioning.create_account(ADMIN, CreateAccount("Example", "example.test"))


def user_principal(jid: str) -> Principal:
    return Principal(User(UserId(new_object_id()), BareJid(jid)))


def state_note(to: str, extension: str, state: str, sequence: int) -> tuple[str, str, dict[str, Any]]:
    return ("presence", to, {"extension": extension, "state": state, "sequence": sequence})


def typed_note(to: str, extension: str, ptype: str) -> tuple[str, str, dict[str, Any]]:
    return ("presence", to, {"extension": extension, "type": ptype})


async def rows(db: Database, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with db.reader.execute(sql, params) as cur:
        return [tuple(r) for r in await cur.fetchall()]


async def subscription_rows(db: Database) -> list[tuple[Any, ...]]:
    return await rows(
        db,
        "SELECT realm, extension, event, subscriber, created_at, notify_sequence, notify_body, version"
        " FROM subscriptions ORDER BY realm, extension, subscriber",
    )


async def state_rows(db: Database) -> list[tuple[Any, ...]]:
    return await rows(
        db, "SELECT realm, extension, state, updated_at FROM extension_states ORDER BY realm, extension"
    )


def refusal(exc: pytest.ExceptionInfo[Any]) -> tuple[str | None, str | None]:
    return exc.value.field, exc.value.rule


SET_CONFIRMED = StateChange(StateAction.SET, "confirmed")
SET_EARLY = StateChange(StateAction.SET, "early")
RESET = StateChange(StateAction.RESET)


# ---- accounts ---------------------------------------------------------------------------


async def test_admin_creates_an_account_for_a_served_realm(provisioning: Provisioning, db: Database) -> None:
    account = await provisioning.create_account(ADMIN, CreateAccount("  Example  ", "Example.Test"))
    assert account == Account(account.id, "Example", "example.test")
    assert len(account.id) == 32 and int(account.id, 16) >= 0
    assert await rows(db, "SELECT id, name, realm, created_at FROM accounts") == [
        (account.id, "Example", "example.test", START)
    ]
    assert await provisioning.account(ADMIN, account.id) == account
    assert await provisioning.list_accounts(ADMIN) == [account]


async def test_only_the_admin_creates_accounts(provisioning: Provisioning, db: Database) -> None:
    with pytest.raises(Forbidden):
        await provisioning.create_account(user_principal("alice@example.test"), CreateAccount("E", "example.test"))
    assert await rows(db, "SELECT id FROM accounts") == []


async def test_an_account_realm_must_be_a_served_domain(provisioning: Provisioning, db: Database) -> None:
    with pytest.raises(BadRequest) as exc:
        await provisioning.create_account(ADMIN, CreateAccount("Elsewhere", "elsewhere.test"))
    assert refusal(exc) == ("realm", "enum")
    assert await rows(db, "SELECT id FROM accounts") == []


async def test_a_realm_has_one_account(provisioning: Provisioning, account: Account, db: Database) -> None:
    with pytest.raises(Duplicate) as exc:
        await provisioning.create_account(ADMIN, CreateAccount("Again", "EXAMPLE.test"))
    assert refusal(exc) == ("realm", "unique")
    assert await rows(db, "SELECT id FROM accounts") == [(account.id,)]


@pytest.mark.parametrize(
    ("name", "realm", "expected"),
    [
        (None, "example.test", ("name", "required")),
        ("  ", "example.test", ("name", "required")),
        (7, "example.test", ("name", "type")),
        ("E", None, ("realm", "required")),
        ("x" * 129, "example.test", ("name", "maxLength")),
    ],
)
def test_create_account_checks_its_fields(name: Any, realm: Any, expected: tuple[str, str]) -> None:
    with pytest.raises(BadRequest) as exc:
        CreateAccount(name, realm)
    assert refusal(exc) == expected


async def test_a_user_token_reads_only_the_account_of_its_domain(wide_provisioning: Provisioning) -> None:
    example = await wide_provisioning.create_account(ADMIN, CreateAccount("Example", "example.test"))
    other = await wide_provisioning.create_account(ADMIN, CreateAccount("Other", "other.test"))
    alice = user_principal("alice@example.test")
    assert await wide_provisioning.list_accounts(ADMIN) == [example, other]
    assert await wide_provisioning.list_accounts(alice) == [example]
    assert await wide_provisioning.list_accounts(user_principal("zed@other.test")) == [other]
    assert await wide_provisioning.account(alice, example.id) == example
    with pytest.raises(Forbidden):
        await wide_provisioning.account(alice, other.id)
    with pytest.raises(Forbidden):
        await wide_provisioning.list_users(alice, other.id)
    with pytest.raises(Forbidden):
        await wide_provisioning.list_devices(alice, other.id)


async def test_an_unknown_account_is_not_found(provisioning: Provisioning) -> None:
    with pytest.raises(NotFound):
        await provisioning.account(ADMIN, AccountId(new_account_id()))


# ---- users ------------------------------------------------------------------------------


async def test_a_provisioned_user_is_the_family_1_user_of_the_same_jid(
    provisioning: Provisioning, account: Account, identity: Identity, alice: User, db: Database,
    clock: FixedClock,
) -> None:
    provisioned = await provisioning.create_user(ADMIN, account.id, CreateAccountUser("Alice", "Desk-7"))
    assert provisioned == AccountUser(alice, account.id, "alice", "desk-7")
    assert await rows(db, "SELECT user_id, account_id, username, presence_id, created_at FROM account_users") == [
        (alice.id, account.id, "alice", "desk-7", START)
    ]
    # The other way round: provisioned first, then seen over XMPP or REST.
    clock.advance(1)
    bob = await provisioning.create_user(ADMIN, account.id, CreateAccountUser("bob"))
    assert bob.user.jid == "bob@example.test" and bob.presence_id is None
    assert await identity.user_for_jid(BOB) == bob.user
    assert await provisioning.list_users(ADMIN, account.id) == [provisioned, bob]
    assert await provisioning.user(ADMIN, account.id, bob.user.id) == bob


async def test_a_user_is_provisioned_once(provisioning: Provisioning, account: Account, db: Database) -> None:
    first = await provisioning.create_user(ADMIN, account.id, CreateAccountUser("alice"))
    with pytest.raises(Duplicate) as exc:
        await provisioning.create_user(ADMIN, account.id, CreateAccountUser("ALICE", "9"))
    assert refusal(exc) == ("username", "unique")
    assert await rows(db, "SELECT user_id, presence_id FROM account_users") == [(first.user.id, None)]


async def test_deleting_a_user_unprovisions_it_and_keeps_the_member(
    provisioning: Provisioning, account: Account, db: Database
) -> None:
    """The Kazoo fields go; the user stays a member of the realm (membership is by domain)."""
    provisioned = await provisioning.create_user(ADMIN, account.id, CreateAccountUser("alice", "9", "a@mail.test"))
    assert await provisioning.delete_user(ADMIN, account.id, provisioned.user.id) == provisioned
    assert await rows(db, "SELECT user_id FROM account_users") == []
    assert await rows(db, "SELECT id, jid FROM users") == [(provisioned.user.id, "alice@example.test")]
    member = AccountUser(provisioned.user, account.id, "alice", None, None)
    assert await provisioning.user(ADMIN, account.id, provisioned.user.id) == member
    assert await provisioning.delete_user(ADMIN, account.id, provisioned.user.id) == member


async def test_users_are_written_by_the_admin_only(
    provisioning: Provisioning, account: Account, db: Database
) -> None:
    alice = user_principal("alice@example.test")
    with pytest.raises(Forbidden):
        await provisioning.create_user(alice, account.id, CreateAccountUser("bob"))
    provisioned = await provisioning.create_user(ADMIN, account.id, CreateAccountUser("bob"))
    with pytest.raises(Forbidden):
        await provisioning.delete_user(alice, account.id, provisioned.user.id)
    assert await provisioning.list_users(alice, account.id) == [provisioned]
    assert await rows(db, "SELECT user_id FROM account_users") == [(provisioned.user.id,)]


@pytest.mark.parametrize(
    ("username", "presence_id", "expected"),
    [
        (None, None, ("username", "required")),
        ("", None, ("username", "required")),
        ("alice", "no spaces", ("presence_id", "pattern")),
        ("alice", "", ("presence_id", "pattern")),
    ],
)
def test_create_user_checks_its_fields(username: Any, presence_id: Any, expected: tuple[str, str]) -> None:
    with pytest.raises(BadRequest) as exc:
        CreateAccountUser(username, presence_id)
    assert refusal(exc) == expected


async def test_a_username_must_make_a_jid(provisioning: Provisioning, account: Account) -> None:
    with pytest.raises(BadRequest) as exc:
        await provisioning.create_user(ADMIN, account.id, CreateAccountUser("al/ice"))
    assert refusal(exc) == ("username", "pattern")


# ---- devices ----------------------------------------------------------------------------


async def test_a_device_is_stored_lowercased_and_its_extension_is_presence_id_else_sip(
    provisioning: Provisioning, account: Account, db: Database, clock: FixedClock
) -> None:
    owner = await provisioning.create_user(ADMIN, account.id, CreateAccountUser("alice"))
    desk = await provisioning.create_device(
        ADMIN, account.id, CreateDevice(" Desk ", "SIP-101", "*3101", owner.user.id)
    )
    assert desk == Device(desk.id, account.id, "Desk", "sip-101", "*3101", owner.user.id)
    assert desk.extension == "*3101"
    clock.advance(1)
    phone = await provisioning.create_device(ADMIN, account.id, CreateDevice("Phone", "Ext.102"))
    assert phone == Device(phone.id, account.id, "Phone", "ext.102", None, None)
    assert phone.extension == "ext.102"
    assert await rows(
        db, "SELECT id, account_id, name, sip_username, presence_id, owner_id, created_at FROM devices ORDER BY name"
    ) == [
        (desk.id, account.id, "Desk", "sip-101", "*3101", owner.user.id, START),
        (phone.id, account.id, "Phone", "ext.102", None, None, START + 1),
    ]
    assert await provisioning.list_devices(ADMIN, account.id) == [desk, phone]
    assert await provisioning.device(ADMIN, account.id, phone.id) == phone


async def test_a_device_owner_may_be_any_user_of_the_realm(
    provisioning: Provisioning, account: Account, alice: User, db: Database
) -> None:
    """DESIGN "Realm membership is by domain": alice logged in (family 1) but was never
    provisioned; she is a member of example.test's account all the same."""
    desk = await provisioning.create_device(ADMIN, account.id, CreateDevice("Desk", "101", None, alice.id))
    assert desk.owner_id == alice.id
    assert await provisioning.user(ADMIN, account.id, alice.id) == AccountUser(alice, account.id, "alice", None)
    assert [u.user for u in await provisioning.list_users(ADMIN, account.id)] == [alice]


async def test_a_device_owner_must_be_a_user_of_the_realm(
    wide_provisioning: Provisioning, db: Database
) -> None:
    account = await wide_provisioning.create_account(ADMIN, CreateAccount("Example", "example.test"))
    stranger = await db.write(lambda tx: users.get_or_create(tx, BareJid("erin@other.test"), START))
    for owner in (stranger.id, UserId(new_object_id())):
        with pytest.raises(NotFound) as exc:
            await wide_provisioning.create_device(ADMIN, account.id, CreateDevice("Desk", "101", None, owner))
        assert refusal(exc) == ("owner_id", "exists")
    with pytest.raises(NotFound):
        await wide_provisioning.user(ADMIN, account.id, stranger.id)
    assert await rows(db, "SELECT id FROM devices") == []


async def test_a_sip_username_is_unique_in_the_account(
    provisioning: Provisioning, account: Account, db: Database
) -> None:
    first = await provisioning.create_device(ADMIN, account.id, CreateDevice("Desk", "sip101"))
    with pytest.raises(Duplicate) as exc:
        await provisioning.create_device(ADMIN, account.id, CreateDevice("Other", "SIP101"))
    assert refusal(exc) == ("sip.username", "unique")
    assert await rows(db, "SELECT id FROM devices") == [(first.id,)]


@pytest.mark.parametrize(
    ("name", "sip", "presence_id", "owner_id", "expected"),
    [
        ("Desk", None, None, None, ("sip.username", "pattern")),
        ("Desk", "a b", None, None, ("sip.username", "pattern")),
        ("Desk", "a@b", None, None, ("sip.username", "pattern")),
        ("Desk", "x" * 65, None, None, ("sip.username", "pattern")),
        ("Desk", "101", "bad/id", None, ("presence_id", "pattern")),
        ("Desk", "101", None, "not-an-id", ("owner_id", "pattern")),
        (None, "101", None, None, ("name", "required")),
    ],
)
def test_create_device_checks_its_fields(
    name: Any, sip: Any, presence_id: Any, owner_id: Any, expected: tuple[str, str]
) -> None:
    with pytest.raises(BadRequest) as exc:
        CreateDevice(name, sip, presence_id, owner_id)
    assert refusal(exc) == expected


async def test_devices_are_written_by_the_admin_only_and_deleted(
    provisioning: Provisioning, account: Account, db: Database
) -> None:
    alice = user_principal("alice@example.test")
    with pytest.raises(Forbidden):
        await provisioning.create_device(alice, account.id, CreateDevice("Desk", "101"))
    device = await provisioning.create_device(ADMIN, account.id, CreateDevice("Desk", "101"))
    with pytest.raises(Forbidden):
        await provisioning.delete_device(alice, account.id, device.id)
    assert await provisioning.delete_device(ADMIN, account.id, device.id) == device
    assert await rows(db, "SELECT id FROM devices") == []
    with pytest.raises(NotFound):
        await provisioning.device(ADMIN, account.id, device.id)
    with pytest.raises(NotFound):
        await provisioning.delete_device(ADMIN, account.id, DeviceId(new_account_id()))


# ---- subscribe / unsubscribe / probe ------------------------------------------------------


async def test_subscribe_records_the_subscription_and_answers_subscribed_then_the_state(
    states: PresenceStates, db: Database, commits: CommitCounter
) -> None:
    subscription = await states.subscribe(ALICE, "*3101")
    assert subscription == Subscription(
        subscription.id, "example.test", "*3101", "presence", ALICE, START, 1, "terminated", 1
    )
    assert await subscription_rows(db) == [
        ("example.test", "*3101", "presence", "alice@example.test", START, 1, "terminated", 1)
    ]
    assert await outbox_rows(db) == [
        typed_note("alice@example.test", "*3101", "subscribed"),
        state_note("alice@example.test", "*3101", "terminated", 1),
    ]
    assert await state_rows(db) == []  # no row: terminated
    assert commits.count == 1


async def test_subscribing_again_keeps_one_row_and_counts_the_notification(
    states: PresenceStates, db: Database, clock: FixedClock
) -> None:
    first = await states.subscribe(ALICE, "*3101")
    await clear_outbox(db)
    clock.advance(60_000)
    again = await states.subscribe(ALICE, "*3101")
    assert again.id == first.id and again.notify_sequence == 2
    assert await subscription_rows(db) == [
        ("example.test", "*3101", "presence", "alice@example.test", START, 2, "terminated", 1)
    ]
    assert await outbox_rows(db) == [
        typed_note("alice@example.test", "*3101", "subscribed"),
        state_note("alice@example.test", "*3101", "terminated", 2),
    ]


async def test_extensions_are_lowercased(states: PresenceStates, db: Database) -> None:
    await states.subscribe(ALICE, "Park.A")
    assert [r[1] for r in await subscription_rows(db)] == ["park.a"]
    assert await states.probe(ALICE, "PARK.a") is PresenceState.TERMINATED


async def test_subscribers_of_unserved_domains_are_refused(states: PresenceStates, db: Database) -> None:
    with pytest.raises(Forbidden):
        await states.subscribe(BareJid("mallory@elsewhere.test"), "*3101")
    assert await subscription_rows(db) == []
    assert await outbox_rows(db) == []


@pytest.mark.parametrize("extension", ["", "a b", "x/y", "a@b", "e" * 65])
async def test_malformed_extensions_are_refused(states: PresenceStates, db: Database, extension: str) -> None:
    with pytest.raises(BadRequest) as exc:
        await states.subscribe(ALICE, extension)
    assert refusal(exc) == ("extension", "pattern")
    assert await subscription_rows(db) == []
    assert await outbox_rows(db) == []


async def test_unsubscribe_removes_the_row_and_sends_unavailable(
    states: PresenceStates, db: Database, commits: CommitCounter
) -> None:
    await states.subscribe(ALICE, "*3101")
    await states.subscribe(BOB, "*3101")
    await clear_outbox(db)
    assert await states.unsubscribe(ALICE, "*3101") is True
    assert [r[3] for r in await subscription_rows(db)] == ["bob@example.test"]
    assert await outbox_rows(db) == [typed_note("alice@example.test", "*3101", "unavailable")]
    assert commits.count == 3
    # Unsubscribing again changes nothing and tells nobody.
    assert await states.unsubscribe(ALICE, "*3101") is False
    assert await outbox_rows(db) == [typed_note("alice@example.test", "*3101", "unavailable")]
    assert commits.count == 3


async def test_probe_answers_the_state_to_subscribers_only(
    states: PresenceStates, account: Account, db: Database
) -> None:
    assert await states.probe(ALICE, "*3101") is None
    await states.subscribe(ALICE, "*3101")
    assert await states.probe(ALICE, "*3101") is PresenceState.TERMINATED
    await states.change_extension(ADMIN, account.id, "*3101", SET_CONFIRMED)
    assert await states.probe(ALICE, "*3101") is PresenceState.CONFIRMED
    assert await states.probe(BOB, "*3101") is None
    with pytest.raises(Forbidden):
        await states.probe(BareJid("mallory@elsewhere.test"), "*3101")


# ---- state changes ------------------------------------------------------------------------


async def test_set_then_reset_an_extension_notifies_every_subscriber(
    states: PresenceStates, account: Account, db: Database, clock: FixedClock, commits: CommitCounter
) -> None:
    await states.subscribe(ALICE, "*3101")
    await states.subscribe(BOB, "*3101")
    await states.subscribe(ALICE, "101")  # another extension: untouched
    await clear_outbox(db)
    clock.advance(1_000)

    assert await states.change_extension(ADMIN, account.id, "*3101", SET_CONFIRMED) == ["*3101"]
    assert await state_rows(db) == [("example.test", "*3101", "confirmed", START + 1_000)]
    assert await outbox_rows(db) == [
        state_note("alice@example.test", "*3101", "confirmed", 2),
        state_note("bob@example.test", "*3101", "confirmed", 2),
    ]
    assert await subscription_rows(db) == [
        ("example.test", "*3101", "presence", "alice@example.test", START, 2, "confirmed", 1),
        ("example.test", "*3101", "presence", "bob@example.test", START, 2, "confirmed", 1),
        ("example.test", "101", "presence", "alice@example.test", START, 1, "terminated", 1),
    ]

    await clear_outbox(db)
    clock.advance(1_000)
    assert await states.change_extension(ADMIN, account.id, "*3101", RESET) == ["*3101"]
    assert await state_rows(db) == [("example.test", "*3101", "terminated", START + 2_000)]
    assert await outbox_rows(db) == [
        state_note("alice@example.test", "*3101", "terminated", 3),
        state_note("bob@example.test", "*3101", "terminated", 3),
    ]
    assert [(r[3], r[5], r[6]) for r in (await subscription_rows(db))[:2]] == [
        ("alice@example.test", 3, "terminated"),
        ("bob@example.test", 3, "terminated"),
    ]
    assert commits.count == 5


async def test_setting_an_extension_without_subscribers_persists_the_state(
    states: PresenceStates, account: Account, db: Database
) -> None:
    await states.change_extension(ADMIN, account.id, "*3101", SET_EARLY)
    assert await state_rows(db) == [("example.test", "*3101", "early", START)]
    assert await outbox_rows(db) == []
    # A later subscriber is told the persisted state.
    await states.subscribe(ALICE, "*3101")
    assert await outbox_rows(db) == [
        typed_note("alice@example.test", "*3101", "subscribed"),
        state_note("alice@example.test", "*3101", "early", 1),
    ]


async def test_a_device_change_uses_its_presence_id_else_its_sip_username(
    states: PresenceStates, provisioning: Provisioning, account: Account, db: Database
) -> None:
    with_id = await provisioning.create_device(ADMIN, account.id, CreateDevice("Desk", "sip101", "*3101"))
    plain = await provisioning.create_device(ADMIN, account.id, CreateDevice("Phone", "SIP102"))
    await states.subscribe(ALICE, "*3101")
    await states.subscribe(ALICE, "sip101")  # the SIP username of a device with a presence_id: untouched
    await states.subscribe(BOB, "sip102")
    await clear_outbox(db)

    assert await states.change_device(ADMIN, account.id, with_id.id, SET_CONFIRMED) == ["*3101"]
    assert await states.change_device(ADMIN, account.id, plain.id, SET_EARLY) == ["sip102"]
    assert await state_rows(db) == [
        ("example.test", "*3101", "confirmed", START),
        ("example.test", "sip102", "early", START),
    ]
    assert await outbox_rows(db) == [
        state_note("alice@example.test", "*3101", "confirmed", 2),
        state_note("bob@example.test", "sip102", "early", 2),
    ]
    await clear_outbox(db)
    await states.change_device(ADMIN, account.id, plain.id, RESET)
    assert await state_rows(db) == [
        ("example.test", "*3101", "confirmed", START),
        ("example.test", "sip102", "terminated", START),
    ]
    assert await outbox_rows(db) == [state_note("bob@example.test", "sip102", "terminated", 3)]
    with pytest.raises(NotFound):
        await states.change_device(ADMIN, account.id, DeviceId(new_account_id()), RESET)


async def test_a_user_change_uses_its_presence_id(
    states: PresenceStates, provisioning: Provisioning, account: Account, db: Database
) -> None:
    user = await provisioning.create_user(ADMIN, account.id, CreateAccountUser("carol", "2001"))
    await provisioning.create_device(ADMIN, account.id, CreateDevice("Desk", "sip101", None, user.user.id))
    await states.subscribe(ALICE, "2001")
    await clear_outbox(db)
    assert await states.change_user(ADMIN, account.id, user.user.id, SET_CONFIRMED) == ["2001"]
    assert await state_rows(db) == [("example.test", "2001", "confirmed", START)]
    assert await outbox_rows(db) == [state_note("alice@example.test", "2001", "confirmed", 2)]


async def test_a_user_without_presence_id_changes_each_device_it_owns(
    states: PresenceStates, provisioning: Provisioning, account: Account, db: Database,
    clock: FixedClock,
) -> None:
    user = await provisioning.create_user(ADMIN, account.id, CreateAccountUser("carol"))
    await provisioning.create_device(ADMIN, account.id, CreateDevice("Desk", "sip101", None, user.user.id))
    clock.advance(1)  # devices are taken in creation order
    await provisioning.create_device(ADMIN, account.id, CreateDevice("Phone", "sip102", "*3102", user.user.id))
    await provisioning.create_device(ADMIN, account.id, CreateDevice("Lobby", "sip103"))  # not carol's
    # carol manages two of them: she may watch them (nobody else was invited).
    await states.subscribe(CAROL, "sip101")
    await states.subscribe(CAROL, "*3102")
    await states.subscribe(BOB, "sip103")
    await clear_outbox(db)

    assert await states.change_user(ADMIN, account.id, user.user.id, SET_EARLY) == ["sip101", "*3102"]
    assert await state_rows(db) == [
        ("example.test", "*3102", "early", START + 1),
        ("example.test", "sip101", "early", START + 1),
    ]
    assert await outbox_rows(db) == [
        state_note("carol@example.test", "sip101", "early", 2),
        state_note("carol@example.test", "*3102", "early", 2),
    ]
    await clear_outbox(db)
    await states.change_user(ADMIN, account.id, user.user.id, RESET)
    assert [r[2] for r in await state_rows(db)] == ["terminated", "terminated"]
    assert await outbox_rows(db) == [
        state_note("carol@example.test", "sip101", "terminated", 3),
        state_note("carol@example.test", "*3102", "terminated", 3),
    ]


async def test_a_user_with_neither_presence_id_nor_device_is_refused(
    states: PresenceStates, provisioning: Provisioning, account: Account, db: Database
) -> None:
    user = await provisioning.create_user(ADMIN, account.id, CreateAccountUser("carol"))
    with pytest.raises(BadRequest) as exc:
        await states.change_user(ADMIN, account.id, user.user.id, RESET)
    assert refusal(exc) == ("presence_id", "required")
    assert await state_rows(db) == []
    with pytest.raises(NotFound):
        await states.change_user(ADMIN, account.id, UserId(new_object_id()), RESET)


async def test_only_the_admin_changes_states(
    states: PresenceStates, provisioning: Provisioning, account: Account, db: Database
) -> None:
    alice = user_principal("alice@example.test")
    device = await provisioning.create_device(ADMIN, account.id, CreateDevice("Desk", "101"))
    user = await provisioning.create_user(ADMIN, account.id, CreateAccountUser("carol", "2001"))
    await states.subscribe(ALICE, "101")
    await clear_outbox(db)
    with pytest.raises(Forbidden):
        await states.change_extension(alice, account.id, "101", SET_CONFIRMED)
    with pytest.raises(Forbidden):
        await states.change_device(alice, account.id, device.id, SET_CONFIRMED)
    with pytest.raises(Forbidden):
        await states.change_user(alice, account.id, user.user.id, SET_CONFIRMED)
    assert await state_rows(db) == []
    assert await outbox_rows(db) == []
    with pytest.raises(NotFound):
        await states.change_extension(ADMIN, AccountId(new_account_id()), "101", RESET)


async def test_change_by_realm_needs_an_account_for_the_realm(
    states: PresenceStates, provisioning: Provisioning, db: Database
) -> None:
    with pytest.raises(NotFound):
        await states.change_by_realm("example.test", "101", SET_CONFIRMED)
    await provisioning.create_account(ADMIN, CreateAccount("Example", "example.test"))
    assert await states.change_by_realm("example.test", "101", SET_CONFIRMED) == ["101"]
    assert await state_rows(db) == [("example.test", "101", "confirmed", START)]


# ---- StateChange.from_body ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "action", "target"),
    [
        ({"reset": True}, StateAction.RESET, "terminated"),
        ({"action": "reset"}, StateAction.RESET, "terminated"),
        ({"action": "reset", "state": "confirmed"}, StateAction.RESET, "terminated"),
        ({"action": "set", "state": "confirmed"}, StateAction.SET, "confirmed"),
        ({"action": "set", "state": "early"}, StateAction.SET, "early"),
        ({"action": "set", "state": "terminated"}, StateAction.SET, "terminated"),
    ],
)
def test_state_change_bodies(data: dict[str, Any], action: StateAction, target: str) -> None:
    change = StateChange.from_body(data)
    assert (change.action, change.target_state) == (action, target)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"action": "toggle"}, ("action", "enum")),
        ({"action": 1}, ("action", "enum")),
        ({}, ("action", "required")),
        ({"reset": False}, ("action", "required")),
        ({"action": "set"}, ("state", "required")),
        ({"action": "set", "state": "busy"}, ("state", "enum")),
        ({"action": "set", "state": 3}, ("state", "type")),
        ("reset", ("data", "type")),
        (["reset"], ("data", "type")),
    ],
)
def test_state_change_refusals_name_the_field_and_rule(data: Any, expected: tuple[str, str]) -> None:
    with pytest.raises(BadRequest) as exc:
        StateChange.from_body(data)
    assert refusal(exc) == expected


# ---- realm scoping and listing --------------------------------------------------------------


async def test_the_same_extension_in_two_realms_is_two_extensions(
    wide_states: PresenceStates, wide_provisioning: Provisioning, db: Database
) -> None:
    example = await wide_provisioning.create_account(ADMIN, CreateAccount("Example", "example.test"))
    other = await wide_provisioning.create_account(ADMIN, CreateAccount("Other", "other.test"))
    zed = BareJid("zed@other.test")
    await wide_states.subscribe(ALICE, "101")
    await wide_states.subscribe(zed, "101")
    await clear_outbox(db)

    await wide_states.change_extension(ADMIN, example.id, "101", SET_CONFIRMED)
    assert await state_rows(db) == [("example.test", "101", "confirmed", START)]
    assert await outbox_rows(db) == [state_note("alice@example.test", "101", "confirmed", 2)]
    assert await wide_states.probe(ALICE, "101") is PresenceState.CONFIRMED
    assert await wide_states.probe(zed, "101") is PresenceState.TERMINATED

    example_subs = await wide_states.listing(ADMIN, example.id)
    other_subs = await wide_states.listing(ADMIN, other.id)
    assert [(s.realm, s.extension, s.subscriber) for s in example_subs] == [("example.test", "101", ALICE)]
    assert [(s.realm, s.extension, s.subscriber) for s in other_subs] == [("other.test", "101", zed)]
    with pytest.raises(Forbidden):
        await wide_states.listing(user_principal("alice@example.test"), other.id)


async def test_listing_filters_by_extension_and_event(
    states: PresenceStates, account: Account
) -> None:
    await states.subscribe(BOB, "*3101")
    await states.subscribe(ALICE, "*3101")
    await states.subscribe(ALICE, "101")
    everything = await states.listing(ADMIN, account.id)
    assert [(s.extension, s.subscriber) for s in everything] == [
        ("*3101", ALICE), ("*3101", BOB), ("101", ALICE),
    ]
    assert await states.listing(ADMIN, account.id, event="presence") == everything
    assert await states.listing(ADMIN, account.id, event="dialog") == []
    one = await states.listing(ADMIN, account.id, extension="*3101")
    assert [(s.extension, s.subscriber) for s in one] == [("*3101", ALICE), ("*3101", BOB)]
    assert await states.listing(ADMIN, account.id, extension="*3101", event="dialog") == []
    assert await states.listing(user_principal("bob@example.test"), account.id) == everything
