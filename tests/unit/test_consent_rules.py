"""DESIGN "Consent rules" across families, run by the actions over a real database:
one identity per account, invitation-only devices, shares across served domains,
deletion that ends access."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from component.actions import Identity
from component.clock import FixedClock
from component.commands import (
    CreateAccount,
    CreateDevice,
    CreatePresenceRequest,
    Principal,
    ShareAnswer,
    ShareDevice,
    StateAction,
    StateChange,
)
from component.device_sharing import DeviceSharing, SharingSettings
from component.errors import BadRequest, Duplicate, Forbidden, ShareNotUsable, Unauthorized
from component.model import BareJid, User, parse_bare_jid
from component.provisioning import Provisioning
from component.subscriptions import PresenceStates
from storage import Database, users
from unit_rig import CommitCounter, FakeVerifier, clear_outbox, outbox_rows

if TYPE_CHECKING:
    from conftest import Home

COMPONENT = "presence.example.test"
ADMIN = Principal(None)
BOB = BareJid("bob@example.test")
CAROL = BareJid("carol@example.test")
HALL = f"1001@{COMPONENT}"


async def rows(db: Database, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with db.reader.execute(sql, params) as cur:
        return [tuple(r) for r in await cur.fetchall()]


async def share_hall(ds: DeviceSharing, home: Home, user: str) -> str:
    shared = await ds.share(
        ShareDevice.from_fields(home.alice, {"device_id": home.hall.id, "mode": "app", "user": user, "expire": 600}, 86_400)
    )
    return shared.invite_code


def kinds(rows_: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str, str]]:
    """(kind, recipient, what) of outbox rows, what being a status, presence type or roster op."""
    out = []
    for kind, to, p in rows_:
        if kind == "message":
            out.append((kind, to, p["devicesharing"]["status"] if "devicesharing" in p else p["handshake"]["status"]))
        elif kind == "presence":
            out.append((kind, to, p.get("type", p.get("state"))))
        else:
            out.append((kind, to, f"{p['op']} {p['direction']} {p['jid']}"))
    return out


# ---- one account, one identity ------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "account"),
    [
        ("carol\u200b@example.test", "carol@example.test"),  # zero-width space
        ("carol\u00ad@example.test", "carol@example.test"),  # soft hyphen
        ("car\ufeffol@example.test", "carol@example.test"),  # zero-width no-break space
        ("carol\u200d@example.test", "carol@example.test"),  # zero-width joiner
        ("CAROL@Example.Test", "carol@example.test"),
        ("\uff43\uff41\uff52\uff4f\uff4c@example.test", "carol@example.test"),  # full-width
        ("Stra\u00dfe@example.test", "strasse@example.test"),  # nodeprep case folding
        ("carol@example.test.", "carol@example.test"),
    ],
)
def test_a_jid_is_normalised_as_the_server_does(spelling: str, account: str) -> None:
    assert parse_bare_jid(spelling) == account


@pytest.mark.parametrize(
    "refused",
    [
        "\u202ecarol@example.test",  # a bidi control
        "\U0001f4de@example.test",  # a symbol outside the profile (unassigned in Unicode 3.2)
        "car ol@example.test",
        "carol@example.test/phone",  # a full JID
        "carol@",
        "@example.test",
        "carol",
        "a\u0000b@example.test",
    ],
)
def test_what_the_server_refuses_is_refused(refused: str) -> None:
    with pytest.raises(BadRequest):
        parse_bare_jid(refused)


async def test_every_spelling_of_an_account_logs_in_as_one_user(identity: Identity, verifier: FakeVerifier) -> None:
    _, first = await identity.login("carol@example.test", "carol-pw")
    for spelling in ("carol\u200b@example.test", "carol\u00ad@example.test", "CAROL\ufeff@example.test"):
        _, again = await identity.login(spelling, "carol-pw")
        assert again == first
    # The server is asked about the account it knows, never the raw spelling.
    assert {jid for jid, _ in verifier.calls} == {"carol@example.test"}
    with pytest.raises(Unauthorized):
        await identity.login("\u202ecarol@example.test", "carol-pw")


async def test_a_spelling_is_no_way_around_a_duplicate(sharing, alice: User, carol: User) -> None:
    await sharing.create(CreatePresenceRequest(alice, to_jid=parse_bare_jid("carol@example.test")))
    with pytest.raises(Duplicate):
        await sharing.create(CreatePresenceRequest(alice, to_jid=parse_bare_jid("car\u00adol@example.test")))


# ---- managed devices need an invitation ----------------------------------------------------


async def test_a_managed_device_is_watched_by_invitation_only(
    states: PresenceStates, device_sharing: DeviceSharing, home: Home, db: Database
) -> None:
    # carol was never invited: refused, nothing recorded or sent.
    with pytest.raises(Forbidden):
        await states.subscribe(CAROL, "1001")
    assert await rows(db, "SELECT subscriber FROM subscriptions") == []
    assert await outbox_rows(db) == []
    # The manager may; so may whoever holds an accepted share.
    await states.subscribe(BareJid("alice@example.test"), "1001")
    code = await share_hall(device_sharing, home, BOB)
    await device_sharing.accept(ShareAnswer(home.bob, code))
    await states.subscribe(BOB, "1001")  # a repeated subscribe is confirmed
    assert await rows(db, "SELECT subscriber FROM subscriptions ORDER BY subscriber") == [
        ("alice@example.test",), ("bob@example.test",),
    ]
    # Revoked: a new subscribe is refused again.
    await device_sharing.cancel(ShareAnswer(home.alice, code))
    with pytest.raises(Forbidden):
        await states.subscribe(BOB, "1001")
    assert await rows(db, "SELECT subscriber FROM subscriptions") == [("alice@example.test",)]
    # An extension without a manager stays open to the realm.
    await states.subscribe(CAROL, "*3101")


async def test_making_a_device_managed_ends_the_uninvited_subscriptions(
    states: PresenceStates, provisioning: Provisioning, home: Home, db: Database
) -> None:
    await states.subscribe(CAROL, "1003")
    await states.subscribe(BareJid("alice@example.test"), "1003")
    await clear_outbox(db)
    await provisioning.create_device(ADMIN, home.account.id, CreateDevice("Lobby", "1003", owner_id=home.alice.id))
    assert await rows(db, "SELECT subscriber FROM subscriptions") == [("alice@example.test",)]
    assert kinds(await outbox_rows(db)) == [
        ("presence", CAROL, "unsubscribed"), ("presence", CAROL, "unavailable"),
    ]


async def test_unsubscribing_from_a_shared_device_ends_the_share(
    states: PresenceStates, device_sharing: DeviceSharing, home: Home, db: Database
) -> None:
    code = await share_hall(device_sharing, home, BOB)
    await device_sharing.accept(ShareAnswer(home.bob, code))
    await clear_outbox(db)
    assert await states.unsubscribe(BOB, "1001") is True
    (share,) = await device_sharing.list(home.bob)
    assert (share.state.value, share.reason) == ("cancel", "ended by the invited user from an XMPP client")
    assert kinds(await outbox_rows(db)) == [
        ("message", "alice@example.test", "cancel"),
        ("message", BOB, "cancel"),
        ("presence", BOB, "unavailable"),
        ("roster", BOB, f"remove to {HALL}"),
    ]
    assert await rows(db, "SELECT count(*) FROM subscriptions") == [(0,)]


# ---- shares across served domains ----------------------------------------------------------


@pytest.fixture
def two_domains() -> frozenset[str]:
    return frozenset({"example.test", "other.test"})


async def test_a_share_across_domains_is_keyed_by_the_devices_account(
    db: Database, clock: FixedClock, two_domains: frozenset[str], commits: CommitCounter
) -> None:
    provisioning = Provisioning(db, clock, two_domains, COMPONENT, commits)
    states = PresenceStates(db, clock, two_domains, provisioning, commits)
    sharing = DeviceSharing(db, clock, two_domains, SharingSettings(component_jid=COMPONENT), commits)
    alice = await db.write(lambda tx: users.get_or_create(tx, BareJid("alice@example.test"), 0))
    erin = await db.write(lambda tx: users.get_or_create(tx, BareJid("erin@other.test"), 0))
    account = await provisioning.create_account(ADMIN, CreateAccount("Example", "example.test"))
    hall = await provisioning.create_device(ADMIN, account.id, CreateDevice("Hall", "1001", owner_id=alice.id))
    shared = await sharing.share(
        ShareDevice.from_fields(alice, {"device_id": hall.id, "mode": "app", "user": "erin@other.test", "expire": 60}, 600)
    )
    await sharing.accept(ShareAnswer(erin, shared.invite_code))
    assert await rows(db, "SELECT realm, extension, subscriber FROM subscriptions") == [
        ("example.test", "1001", "erin@other.test"),
    ]
    # erin's server probes the extension when she logs in: found in the device's realm.
    assert (await states.probe(BareJid("erin@other.test"), "1001")).value == "terminated"
    # A subscribe from her client is the same subscription, not one in other.test's realm.
    await states.subscribe(BareJid("erin@other.test"), "1001")
    assert await rows(db, "SELECT realm FROM subscriptions") == [("example.test",)]
    # The device's state changes reach her.
    await clear_outbox(db)
    await states.change_device(ADMIN, account.id, hall.id, StateChange(StateAction.SET, "confirmed"))
    assert kinds(await outbox_rows(db)) == [("presence", "erin@other.test", "confirmed")]
    # Another user of other.test, not invited, gets his own realm's extension 1001 (DESIGN:
    # an extension is the subscriber's realm's), never the shared device's state.
    await states.subscribe(BareJid("frank@other.test"), "1001")
    assert await rows(db, "SELECT realm, subscriber FROM subscriptions ORDER BY subscriber") == [
        ("example.test", "erin@other.test"), ("other.test", "frank@other.test"),
    ]
    await clear_outbox(db)
    await states.change_device(ADMIN, account.id, hall.id, StateChange(StateAction.SET, "early"))
    assert kinds(await outbox_rows(db)) == [("presence", "erin@other.test", "early")]


# ---- deleting ends access ------------------------------------------------------------------


async def test_deleting_a_device_revokes_accepted_shares_and_invalidates_pending_ones(
    provisioning: Provisioning, device_sharing: DeviceSharing, states: PresenceStates, home: Home, db: Database
) -> None:
    accepted = await share_hall(device_sharing, home, BOB)
    await device_sharing.accept(ShareAnswer(home.bob, accepted))
    pending = await share_hall(device_sharing, home, CAROL)
    await clear_outbox(db)

    await provisioning.delete_device(ADMIN, home.account.id, home.hall.id)

    assert {code: state for code, state in await rows(db, "SELECT invite_code, state FROM device_shares")} == {
        accepted: "invalid", pending: "invalid",
    }
    assert sorted(kinds(await outbox_rows(db))) == sorted([
        ("message", "alice@example.test", "invalid"), ("message", BOB, "invalid"),
        ("message", "alice@example.test", "invalid"), ("message", CAROL, "invalid"),
        ("presence", BOB, "unavailable"),
        ("roster", BOB, f"remove to {HALL}"),
    ])
    assert await rows(db, "SELECT count(*) FROM subscriptions") == [(0,)]
    # Cancelling afterwards revokes nothing more: the share no longer works.
    await clear_outbox(db)
    with pytest.raises(ShareNotUsable):
        await device_sharing.cancel(ShareAnswer(home.alice, accepted))
    assert await outbox_rows(db) == []


async def test_unprovisioning_the_manager_ends_its_devices_shares(
    provisioning: Provisioning, device_sharing: DeviceSharing, home: Home, db: Database
) -> None:
    accepted = await share_hall(device_sharing, home, BOB)
    await device_sharing.accept(ShareAnswer(home.bob, accepted))
    await clear_outbox(db)
    await provisioning.delete_user(ADMIN, home.account.id, home.alice.id)
    assert await rows(db, "SELECT state FROM device_shares") == [("invalid",)]
    assert await rows(db, "SELECT owner_id FROM devices WHERE id = ?", home.hall.id) == [(None,)]
    assert ("roster", BOB, f"remove to {HALL}") in kinds(await outbox_rows(db))
    assert await rows(db, "SELECT count(*) FROM subscriptions") == [(0,)]


async def test_deleting_an_account_ends_every_share_and_subscription_of_its_realm(
    provisioning: Provisioning, device_sharing: DeviceSharing, states: PresenceStates, home: Home, db: Database
) -> None:
    accepted = await share_hall(device_sharing, home, BOB)
    await device_sharing.accept(ShareAnswer(home.bob, accepted))
    await states.subscribe(CAROL, "*3101")
    await clear_outbox(db)

    assert await provisioning.delete_account(ADMIN, home.account.id) == home.account

    assert await rows(db, "SELECT state FROM device_shares") == [("invalid",)]
    assert await rows(db, "SELECT count(*) FROM subscriptions") == [(0,)]
    assert await rows(db, "SELECT count(*) FROM devices") == [(0,)]
    assert await rows(db, "SELECT count(*) FROM account_users") == [(0,)]
    assert await rows(db, "SELECT count(*) FROM accounts") == [(0,)]
    ended = kinds(await outbox_rows(db))
    assert ("roster", BOB, f"remove to {HALL}") in ended
    assert ("presence", CAROL, "unsubscribed") in ended and ("presence", CAROL, "unavailable") in ended
    # The users stay (their ids, their family 1 requests).
    assert await rows(db, "SELECT count(*) FROM users") == [(3,)]
