"""Family 3 rules (DESIGN.md, "device sharing"): share, accept, deny, cancel, delete, list,
expiry and the sweeper, run by the actions over a real database with a fixed clock."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from component.clock import FixedClock, iso_ms
from component.commands import (
    CreateDevice,
    Principal,
    ShareAnswer,
    ShareDevice,
    StateAction,
    StateChange,
)
from component.device_sharing import DeviceSharing, share_fields
from component.errors import (
    AlreadyAccepted,
    AlreadyCanceled,
    BadRequest,
    DeviceNotFound,
    DomainError,
    LimitReached,
    MissingField,
    ShareNotFound,
    ShareNotUsable,
    UserNotFound,
)
from component.model import (
    DeviceShare,
    InviteCode,
    ShareMode,
    ShareState,
    User,
    new_account_id,
    new_invite_code,
    new_object_id,
)
from component.provisioning import Provisioning
from component.subscriptions import PresenceStates
from storage import Database
from unit_rig import SERVED, CommitCounter, clear_outbox, outbox_rows

if TYPE_CHECKING:  # conftest is not importable by name: the stanza tier has one too
    from conftest import Home

START = FixedClock().now_ms()
COMPONENT = "presence.example.test"
HOUR = 3600
SHARE_FIELDS = {
    "invite_code", "from_id", "from_user", "to_id", "to_user", "device_id", "state",
    "create_date", "expire_date", "mode", "authority", "reason",
}


# ---- helpers ------------------------------------------------------------------------------


async def share(ds: DeviceSharing, caller: User, **fields: Any) -> DeviceShare:
    fields.setdefault("expire", HOUR)
    return await ds.share(ShareDevice.from_fields(caller, fields, ds.settings.max_expire_s))


async def share_app(ds: DeviceSharing, home: Home, user: str | None = None, expire: int = HOUR) -> DeviceShare:
    return await share(
        ds, home.alice, device_id=home.hall.id, mode="app", user=user or home.bob.id, expire=expire
    )


def answer(caller: User, code: str, reason: str | None = None) -> ShareAnswer:
    fields: dict[str, object] = {"invite_code": code}
    if reason is not None:
        fields["reason"] = reason
    return ShareAnswer.from_fields(caller, fields)


async def rows(db: Database, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with db.reader.execute(sql, params) as cur:
        return [tuple(r) for r in await cur.fetchall()]


async def share_rows(db: Database) -> list[tuple[Any, ...]]:
    return await rows(
        db,
        "SELECT invite_code, device_id, from_user_id, to_user_id, to_email, mode, authority, state,"
        " create_date, expire_date, reason, updated_at, hidden_by_sender, hidden_by_receiver"
        " FROM device_shares ORDER BY create_date, invite_code",
    )


async def state_of(db: Database, code: str) -> tuple[Any, ...]:
    (row,) = await rows(
        db, "SELECT state, to_user_id, reason, updated_at FROM device_shares WHERE invite_code = ?", code
    )
    return row


async def mail_rows(db: Database) -> list[tuple[Any, ...]]:
    return await rows(
        db, "SELECT recipient, subject, body, attempts, next_try_at, created_at FROM mail_outbox ORDER BY id"
    )


async def subscription_rows(db: Database) -> list[tuple[Any, ...]]:
    return await rows(
        db,
        "SELECT realm, extension, event, subscriber, created_at, notify_sequence, notify_body, version"
        " FROM subscriptions ORDER BY realm, extension, subscriber",
    )


def msg(
    to: str, s: DeviceShare, action: str, status: str, side: str,
    peer: str | None = None, device: str | None = "Hall phone",
) -> tuple[str, str, dict[str, Any]]:
    """A management message's row: the Xlink child's attributes, the other party (for the
    manager, by default the share's e-mail address) and the device's name."""
    if peer is None and side == "sent":
        peer = s.to_email
    return (
        "message",
        to,
        {
            "devicesharing": {
                "id": s.invite_code,
                "action": action,
                "status": status,
                "device_id": s.device_id,
                "mode": s.mode.value,
                "type": side,
            },
            "peer": peer,
            "device": device,
        },
    )


def both(
    s: DeviceShare, action: str, status: str, to: User | None = None, device: str | None = "Hall phone"
) -> list[tuple[str, str, dict[str, Any]]]:
    """The management messages of a change: the manager's, then the invited user's."""
    receiver = to or s.to_user
    assert receiver is not None
    return [
        msg(s.from_user.jid, s, action, status, "sent", receiver.jid, device),
        msg(receiver.jid, s, action, status, "received", s.from_user.jid, device),
    ]


def code_of(exc: pytest.ExceptionInfo[DomainError]) -> int:
    return exc.value.wire.xlink_code


# ---- share by app ---------------------------------------------------------------------------


async def test_sharing_with_a_user_id_records_the_share_and_tells_both(
    device_sharing: DeviceSharing, home: Home, db: Database, commits: CommitCounter, mail_wakes: CommitCounter
) -> None:
    created = await share(
        device_sharing, home.alice, device_id=home.hall.id, mode="app", user=home.bob.id, expire=7200,
        authority="R",
    )
    assert created == DeviceShare(
        invite_code=created.invite_code,
        device_id=home.hall.id,
        from_user=home.alice,
        to_user=home.bob,
        to_email=None,
        mode=ShareMode.APP,
        authority="R",
        state=ShareState.PENDING,
        create_date=START,
        expire_date=START + 7_200_000,
        reason=None,
        updated_at=START,
    )
    assert await share_rows(db) == [
        (created.invite_code, home.hall.id, home.alice.id, home.bob.id, None, "app", "R", "pending",
         START, START + 7_200_000, None, START, 0, 0)
    ]
    assert await outbox_rows(db) == both(created, "create", "pending")
    assert await mail_rows(db) == []
    assert (commits.count, mail_wakes.count) == (1, 0)


@pytest.mark.parametrize(
    "named",
    ["bob@example.test", "Bob@EXAMPLE.test", "bob@mail.test", "BOB@Mail.Test"],
    ids=["jid", "jid-case", "email", "email-case"],
)
async def test_an_app_share_names_the_user_by_jid_or_provisioned_email(
    device_sharing: DeviceSharing, home: Home, db: Database, named: str
) -> None:
    created = await share_app(device_sharing, home, named)
    assert (created.to_user, created.to_email) == (home.bob, None)
    assert await rows(db, "SELECT to_user_id, to_email FROM device_shares") == [(home.bob.id, None)]


async def test_an_app_share_with_a_never_seen_jid_of_a_served_domain_creates_the_user(
    device_sharing: DeviceSharing, home: Home, db: Database
) -> None:
    created = await share_app(device_sharing, home, "dave@example.test")
    assert created.to_user is not None and created.to_user.jid == "dave@example.test"
    assert re.fullmatch(r"[0-9a-f]{24}", created.to_user.id)
    assert await rows(db, "SELECT id FROM users WHERE jid = 'dave@example.test'") == [(created.to_user.id,)]
    assert await outbox_rows(db) == both(created, "create", "pending")


@pytest.mark.parametrize(
    "named",
    ["0123456789abcdef01234567", "nobody@mail.test", "dave@elsewhere.test", "bob"],
    ids=["unknown-id", "unprovisioned-email", "other-domain", "bare-word"],
)
async def test_an_app_share_with_an_unknown_user_is_4041011(
    device_sharing: DeviceSharing, home: Home, db: Database, commits: CommitCounter, named: str
) -> None:
    with pytest.raises(UserNotFound) as exc:
        await share_app(device_sharing, home, named)
    assert code_of(exc) == 4041011
    assert await share_rows(db) == []
    assert await outbox_rows(db) == []
    assert commits.count == 0


@pytest.mark.parametrize("named", ["alice-id", "alice@example.test", "alice@mail.test"])
async def test_the_manager_cannot_share_with_itself(
    device_sharing: DeviceSharing, home: Home, db: Database, named: str
) -> None:
    with pytest.raises(BadRequest) as exc:
        await share_app(device_sharing, home, home.alice.id if named == "alice-id" else named)
    assert (code_of(exc), exc.value.field, exc.value.rule) == (4001001, "user", "self")
    assert await share_rows(db) == []


# ---- share by e-mail and by QR code ---------------------------------------------------------


async def test_an_email_share_to_a_provisioned_address_names_its_user_and_mails_the_code(
    device_sharing: DeviceSharing, home: Home, db: Database, mail_wakes: CommitCounter
) -> None:
    created = await share(device_sharing, home.alice, device_id=home.hall.id, mode="email", user="Bob@mail.TEST")
    assert (created.to_user, created.to_email, created.mode) == (home.bob, "bob@mail.test", ShareMode.EMAIL)
    assert await rows(db, "SELECT to_user_id, to_email, mode FROM device_shares") == [
        (home.bob.id, "bob@mail.test", "email")
    ]
    assert await outbox_rows(db) == both(created, "create", "pending")
    [(recipient, subject, body, attempts, next_try_at, created_at)] = await mail_rows(db)
    assert (recipient, subject, attempts, next_try_at, created_at) == (
        "bob@mail.test", 'alice@example.test shares "Hall phone" with you', 0, START, START
    )
    assert f"Invite code: {created.invite_code}\n" in body
    assert mail_wakes.count == 1


async def test_an_email_share_to_an_unknown_address_waits_for_whoever_accepts(
    device_sharing: DeviceSharing, home: Home, db: Database, mail_wakes: CommitCounter
) -> None:
    created = await share(device_sharing, home.alice, device_id=home.hall.id, mode="email", user="zoe@mail.test")
    assert (created.to_user, created.to_email) == (None, "zoe@mail.test")
    assert await share_rows(db) == [
        (created.invite_code, home.hall.id, home.alice.id, None, "zoe@mail.test", "email", "RW", "pending",
         START, START + HOUR * 1000, None, START, 0, 0)
    ]
    # Nobody to tell but the manager until someone accepts.
    assert await outbox_rows(db) == [msg("alice@example.test", created, "create", "pending", "sent")]
    [(recipient, subject, body, attempts, next_try_at, _)] = await mail_rows(db)
    assert (recipient, subject, attempts, next_try_at) == (
        "zoe@mail.test", 'alice@example.test shares "Hall phone" with you', 0, START
    )
    assert f"Invite code: {created.invite_code}\n" in body
    assert "POST https://presence.example.test/api/v2/share/device/accept\n" in body
    assert f'{{"invite_code": "{created.invite_code}"}}' in body
    assert f"The invitation expires at {iso_ms(START + HOUR * 1000)}." in body
    assert f"xmpp:{COMPONENT}?command;node=urn:xmpp:presence-consent:cmd:shares:{created.invite_code}\n" in body
    assert mail_wakes.count == 1


async def test_email_shares_are_refused_when_email_is_not_configured(
    device_sharing: DeviceSharing, db: Database, clock: FixedClock, home: Home
) -> None:
    no_mail = DeviceSharing(db, clock, SERVED, replace(device_sharing.settings, email_enabled=False))
    with pytest.raises(BadRequest) as exc:
        await share(no_mail, home.alice, device_id=home.hall.id, mode="email", user="zoe@mail.test")
    assert (code_of(exc), exc.value.field, exc.value.rule) == (4001001, "mode", "enum")
    assert await share_rows(db) == []
    assert await mail_rows(db) == []


@pytest.mark.parametrize("address", ["zoe", "zoe@", "zoe@mail", "a b@mail.test", "x" * 250 + "@mail.test"])
async def test_an_email_share_needs_an_address(device_sharing: DeviceSharing, home: Home, db: Database, address: str) -> None:
    with pytest.raises(BadRequest) as exc:
        await share(device_sharing, home.alice, device_id=home.hall.id, mode="email", user=address)
    assert (code_of(exc), exc.value.field) == (4001001, "user")
    assert await share_rows(db) == []


async def test_a_qrcode_share_names_no_user(
    device_sharing: DeviceSharing, home: Home, db: Database, mail_wakes: CommitCounter
) -> None:
    created = await share(device_sharing, home.alice, device_id=home.hall.id, mode="qrcode", expire=60)
    assert await share_rows(db) == [
        (created.invite_code, home.hall.id, home.alice.id, None, None, "qrcode", "RW", "pending",
         START, START + 60_000, None, START, 0, 0)
    ]
    assert await outbox_rows(db) == [msg("alice@example.test", created, "create", "pending", "sent")]
    assert await mail_rows(db) == []
    assert mail_wakes.count == 0


async def test_a_qrcode_share_naming_a_user_is_refused(device_sharing: DeviceSharing, home: Home, db: Database) -> None:
    with pytest.raises(BadRequest) as exc:
        await share(device_sharing, home.alice, device_id=home.hall.id, mode="qrcode", user=home.bob.id)
    assert (code_of(exc), exc.value.field, exc.value.rule) == (4001001, "user", "forbidden")
    assert await share_rows(db) == []


# ---- who may share --------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["bobs", "unknown", "malformed", "ownerless"])
async def test_only_the_devices_manager_may_share_it(
    device_sharing: DeviceSharing, home: Home, provisioning: Provisioning, db: Database, device: str
) -> None:
    device_id = {
        "bobs": home.desk.id,
        "unknown": new_account_id(),
        "malformed": "not-a-device",
    }.get(device)
    if device == "ownerless":
        ownerless = await provisioning.create_device(Principal(None), home.account.id, CreateDevice("Lobby", "1003"))
        device_id = ownerless.id
    with pytest.raises(DeviceNotFound) as exc:
        await share(device_sharing, home.alice, device_id=device_id, mode="app", user=home.carol.id)
    assert code_of(exc) == 4041008
    assert await share_rows(db) == []
    assert await outbox_rows(db) == []


async def test_another_user_cannot_share_the_managers_device(device_sharing: DeviceSharing, home: Home) -> None:
    with pytest.raises(DeviceNotFound):
        await share(device_sharing, home.carol, device_id=home.hall.id, mode="qrcode")


# ---- field validation -----------------------------------------------------------------------

OK_FIELDS = {"device_id": "0" * 32, "expire": 60, "mode": "app", "user": "bob@example.test"}


@pytest.mark.parametrize(
    ("change", "error", "field", "rule"),
    [
        ({"device_id": None}, MissingField, "device_id", "required"),
        ({"device_id": ""}, MissingField, "device_id", "required"),
        ({"expire": None}, MissingField, "expire", "required"),
        ({"expire": ""}, MissingField, "expire", "required"),
        ({"mode": None}, MissingField, "mode", "required"),
        ({"mode": ""}, MissingField, "mode", "required"),
        ({"user": None}, MissingField, "user", "required"),
        ({"mode": "email", "user": ""}, MissingField, "user", "required"),
        ({"mode": "sms"}, BadRequest, "mode", "enum"),
        ({"mode": "APP"}, BadRequest, "mode", "enum"),
        ({"expire": 0}, BadRequest, "expire", "range"),
        ({"expire": -5}, BadRequest, "expire", "range"),
        ({"expire": 86_401}, BadRequest, "expire", "range"),
        ({"expire": True}, BadRequest, "expire", "range"),
        ({"expire": "ten"}, BadRequest, "expire", "range"),
        ({"expire": "60s"}, BadRequest, "expire", "range"),
        ({"expire": "-60"}, BadRequest, "expire", "range"),
        ({"expire": 1.5}, BadRequest, "expire", "range"),
        ({"expire": 86_401.0}, BadRequest, "expire", "range"),
        ({"expire": float("inf")}, BadRequest, "expire", "range"),
        ({"device_id": 12}, BadRequest, "device_id", "type"),
        ({"authority": "X"}, BadRequest, "authority", "enum"),
        ({"authority": None}, BadRequest, "authority", "enum"),
        ({"user": 42}, BadRequest, "user", "type"),
        ({"user": "u" * 255}, BadRequest, "user", "type"),
        ({"color": "red"}, BadRequest, "color", "unknown"),
    ],
)
def test_share_fields_are_validated(
    change: dict[str, Any], error: type[DomainError], field: str, rule: str
) -> None:
    fields = {**OK_FIELDS, **change}
    caller = User(new_object_id(), "alice@example.test")  # type: ignore[arg-type]
    with pytest.raises(error) as exc:
        ShareDevice.from_fields(caller, fields, 86_400)
    assert type(exc.value) is error
    assert (exc.value.field, exc.value.rule) == (field, rule)
    assert code_of(exc) == (4001002 if error is MissingField else 4001001)


# 60.0 is the JSON number 60 as some encoders write it (and JSON Schema's `integer`, which
# openapi.yaml says expire is): it was refused.
@pytest.mark.parametrize(
    ("given", "seconds"), [(1, 1), ("60", 60), (60.0, 60), (86_400, 86_400), ("86400", 86_400), ("0060", 60)]
)
def test_expire_takes_whole_seconds_up_to_the_maximum(given: object, seconds: int) -> None:
    caller = User(new_object_id(), "alice@example.test")  # type: ignore[arg-type]
    cmd = ShareDevice.from_fields(caller, {**OK_FIELDS, "expire": given}, 86_400)
    assert (cmd.expire, cmd.authority, cmd.user) == (seconds, "RW", "bob@example.test")


@pytest.mark.parametrize(
    ("fields", "error", "field", "rule"),
    [
        ({}, MissingField, "invite_code", "required"),
        ({"invite_code": ""}, MissingField, "invite_code", "required"),
        ({"invite_code": "short"}, BadRequest, "invite_code", "pattern"),
        ({"invite_code": "a/b" * 8}, BadRequest, "invite_code", "pattern"),
        ({"invite_code": 12345678901234567890}, BadRequest, "invite_code", "pattern"),
        ({"invite_code": "A" * 32, "reason": "r" * 257}, BadRequest, "reason", "maxLength"),
        ({"invite_code": "A" * 32, "reason": 7}, BadRequest, "reason", "maxLength"),
        ({"invite_code": "A" * 32, "why": "no"}, BadRequest, "why", "unknown"),
    ],
)
def test_answer_fields_are_validated(
    fields: dict[str, Any], error: type[DomainError], field: str, rule: str
) -> None:
    caller = User(new_object_id(), "bob@example.test")  # type: ignore[arg-type]
    with pytest.raises(error) as exc:
        ShareAnswer.from_fields(caller, fields)
    assert type(exc.value) is error
    assert (exc.value.field, exc.value.rule) == (field, rule)


def test_a_reason_of_256_characters_is_accepted() -> None:
    caller = User(new_object_id(), "bob@example.test")  # type: ignore[arg-type]
    cmd = ShareAnswer.from_fields(caller, {"invite_code": "A" * 32, "reason": "r" * 256})
    assert (cmd.invite_code, cmd.reason) == ("A" * 32, "r" * 256)


# ---- invite codes and limits ----------------------------------------------------------------


def test_invite_codes_are_unique_url_safe_and_at_least_128_bits() -> None:
    codes = [new_invite_code() for _ in range(5000)]
    assert len(set(codes)) == len(codes)
    for code in codes:
        # 32 characters of the URL-safe base64 alphabet: 32 * 6 = 192 random bits.
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", code), code
    assert len(codes[0]) * 6 >= 128


async def test_stored_invite_codes_have_that_shape(device_sharing: DeviceSharing, home: Home, db: Database) -> None:
    first = await share_app(device_sharing, home)
    second = await share_app(device_sharing, home)
    assert first.invite_code != second.invite_code
    for code in (first.invite_code, second.invite_code):
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", code)


async def test_a_device_has_at_most_max_pending_shares(
    device_sharing: DeviceSharing, home: Home, db: Database, clock: FixedClock
) -> None:
    made = [await share_app(device_sharing, home, expire=60) for _ in range(3)]
    with pytest.raises(LimitReached) as exc:
        await share_app(device_sharing, home)
    assert code_of(exc) == 4291000
    assert len(await share_rows(db)) == 3
    # Another device of the same manager has its own budget... (bob's desk is bob's)
    await share(device_sharing, home.bob, device_id=home.desk.id, mode="qrcode")
    # A cancelled share frees its place.
    await device_sharing.cancel(answer(home.alice, made[0].invite_code))
    await share_app(device_sharing, home)
    with pytest.raises(LimitReached):
        await share_app(device_sharing, home)
    # An expired share no longer counts, swept or not.
    clock.advance(60_000)
    await share_app(device_sharing, home)
    assert [r[0] for r in await rows(db, "SELECT count(*) FROM device_shares")] == [6]


# ---- accept -----------------------------------------------------------------------------------


async def test_accept_gives_the_user_the_devices_presence(
    device_sharing: DeviceSharing, home: Home, db: Database, clock: FixedClock, commits: CommitCounter,
    states: PresenceStates,
) -> None:
    created = await share_app(device_sharing, home)
    await clear_outbox(db)
    clock.advance(5_000)
    done = await device_sharing.accept(answer(home.bob, created.invite_code))
    now = START + 5_000
    assert done == replace(created, state=ShareState.ACCEPT, updated_at=now)
    assert await state_of(db, created.invite_code) == ("accept", home.bob.id, None, now)
    assert await outbox_rows(db) == [
        *both(created, "update", "accept"),
        ("roster", "bob@example.test", {"jid": f"1001@{COMPONENT}", "direction": "to", "op": "add", "name": "Hall phone"}),
        ("presence", "bob@example.test", {"extension": "1001", "state": "terminated", "sequence": 1}),
    ]
    assert await subscription_rows(db) == [
        ("example.test", "1001", "presence", "bob@example.test", now, 1, "terminated", 1)
    ]
    listed = await states.listing(Principal(None), home.account.id)
    assert [(s.realm, s.extension, s.event, s.subscriber, s.notify_sequence) for s in listed] == [
        ("example.test", "1001", "presence", "bob@example.test", 1)
    ]
    assert commits.count == 2


async def test_accept_shows_the_extensions_current_state(
    device_sharing: DeviceSharing, home: Home, db: Database, states: PresenceStates
) -> None:
    await states.change_device(Principal(None), home.account.id, home.hall.id, StateChange(StateAction.SET, "confirmed"))
    created = await share_app(device_sharing, home)
    await clear_outbox(db)
    await device_sharing.accept(answer(home.bob, created.invite_code))
    assert ("presence", "bob@example.test", {"extension": "1001", "state": "confirmed", "sequence": 1}) in (
        await outbox_rows(db)
    )


async def test_only_the_invited_user_answers_an_app_share(
    device_sharing: DeviceSharing, home: Home, db: Database
) -> None:
    created = await share_app(device_sharing, home)
    await clear_outbox(db)
    for caller in (home.carol, home.alice):
        for act in (device_sharing.accept, device_sharing.deny):
            with pytest.raises(ShareNotFound) as exc:
                await act(answer(caller, created.invite_code))
            assert code_of(exc) == 4041018
    assert await state_of(db, created.invite_code) == ("pending", home.bob.id, None, START)
    assert await outbox_rows(db) == []


async def test_only_the_named_user_answers_a_known_email_share(device_sharing: DeviceSharing, home: Home, db: Database) -> None:
    created = await share(device_sharing, home.alice, device_id=home.hall.id, mode="email", user="bob@mail.test")
    with pytest.raises(ShareNotFound):
        await device_sharing.accept(answer(home.carol, created.invite_code))
    await device_sharing.accept(answer(home.bob, created.invite_code))
    assert await state_of(db, created.invite_code) == ("accept", home.bob.id, None, START)


@pytest.mark.parametrize("mode", ["qrcode", "email"])
async def test_a_code_share_goes_to_the_first_who_answers(
    device_sharing: DeviceSharing, home: Home, db: Database, mode: str
) -> None:
    fields = {"user": "zoe@mail.test"} if mode == "email" else {}
    created = await share(device_sharing, home.alice, device_id=home.hall.id, mode=mode, **fields)
    await clear_outbox(db)
    # Not the manager itself.
    with pytest.raises(BadRequest) as exc:
        await device_sharing.accept(answer(home.alice, created.invite_code))
    assert (code_of(exc), exc.value.field, exc.value.rule) == (4001001, "invite_code", "self")
    done = await device_sharing.accept(answer(home.carol, created.invite_code))
    assert (done.to_user, done.state) == (home.carol, ShareState.ACCEPT)
    assert await state_of(db, created.invite_code) == ("accept", home.carol.id, None, START)
    assert await outbox_rows(db) == [
        *both(created, "update", "accept", to=home.carol),
        ("roster", "carol@example.test", {"jid": f"1001@{COMPONENT}", "direction": "to", "op": "add", "name": "Hall phone"}),
        ("presence", "carol@example.test", {"extension": "1001", "state": "terminated", "sequence": 1}),
    ]
    # The code is now carol's. Another holder of a QR code learns why it no longer works;
    # an e-mailed code was carol's once she answered: bob is a stranger to it.
    with pytest.raises(AlreadyAccepted if mode == "qrcode" else ShareNotFound) as other:
        await device_sharing.accept(answer(home.bob, created.invite_code))
    assert code_of(other) == (4031009 if mode == "qrcode" else 4041018)
    with pytest.raises(AlreadyAccepted) as replay:
        await device_sharing.accept(answer(home.carol, created.invite_code))
    assert code_of(replay) == 4031009
    assert [s.invite_code for s in await device_sharing.list(home.carol)] == [created.invite_code]


async def test_a_denied_code_share_is_the_deniers(device_sharing: DeviceSharing, home: Home, db: Database) -> None:
    created = await share(device_sharing, home.alice, device_id=home.hall.id, mode="qrcode")
    await device_sharing.deny(answer(home.carol, created.invite_code, "not mine"))
    assert await state_of(db, created.invite_code) == ("deny", home.carol.id, "not mine", START)
    for holder in (home.bob, home.carol):
        with pytest.raises(ShareNotUsable) as exc:
            await device_sharing.accept(answer(holder, created.invite_code))
        assert code_of(exc) == 4031012


async def test_deny_records_the_reason_and_grants_nothing(
    device_sharing: DeviceSharing, home: Home, db: Database, clock: FixedClock
) -> None:
    created = await share_app(device_sharing, home)
    await clear_outbox(db)
    clock.advance(1_000)
    done = await device_sharing.deny(answer(home.bob, created.invite_code, "no thanks"))
    assert done == replace(created, state=ShareState.DENY, reason="no thanks", updated_at=START + 1_000)
    assert await state_of(db, created.invite_code) == ("deny", home.bob.id, "no thanks", START + 1_000)
    assert await outbox_rows(db) == both(created, "update", "deny")
    assert await subscription_rows(db) == []


@pytest.mark.parametrize(
    ("first", "then", "error", "code"),
    [
        ("accept", "accept", AlreadyAccepted, 4031009),
        ("accept", "deny", AlreadyAccepted, 4031009),
        ("deny", "accept", ShareNotUsable, 4031012),
        ("deny", "deny", ShareNotUsable, 4031012),
        ("cancel", "accept", AlreadyCanceled, 4031008),
        ("cancel", "deny", AlreadyCanceled, 4031008),
    ],
)
async def test_answers_are_not_replayed(
    device_sharing: DeviceSharing, home: Home, db: Database, first: str, then: str,
    error: type[DomainError], code: int,
) -> None:
    created = await share_app(device_sharing, home)
    by = home.alice if first == "cancel" else home.bob
    await getattr(device_sharing, first)(answer(by, created.invite_code))
    before = (await share_rows(db), await outbox_rows(db), await subscription_rows(db))
    with pytest.raises(error) as exc:
        await getattr(device_sharing, then)(answer(home.bob, created.invite_code))
    assert code_of(exc) == code
    assert (await share_rows(db), await outbox_rows(db), await subscription_rows(db)) == before


async def test_an_unknown_invite_code_is_4041018(device_sharing: DeviceSharing, home: Home) -> None:
    for act in (device_sharing.accept, device_sharing.deny, device_sharing.cancel):
        with pytest.raises(ShareNotFound) as exc:
            await act(answer(home.alice, new_invite_code()))
        assert code_of(exc) == 4041018


# ---- expiry -----------------------------------------------------------------------------------


async def test_a_share_is_overtime_on_read_as_soon_as_it_expires(
    device_sharing: DeviceSharing, home: Home, db: Database, clock: FixedClock
) -> None:
    created = await share_app(device_sharing, home, expire=60)
    clock.advance(59_999)
    assert [s.state for s in await device_sharing.list(home.bob)] == [ShareState.PENDING]
    clock.advance(1)
    assert [s.state for s in await device_sharing.list(home.bob)] == [ShareState.OVERTIME]
    assert [s.state for s in await device_sharing.list(home.alice)] == [ShareState.OVERTIME]
    assert [share_fields(s)["state"] for s in await device_sharing.list(home.alice)] == ["overtime"]
    # Nothing written yet: the read applied expiry, the sweeper has not run.
    assert await state_of(db, created.invite_code) == ("pending", home.bob.id, None, START)


async def test_accepting_just_before_expiry_works(
    device_sharing: DeviceSharing, home: Home, db: Database, clock: FixedClock
) -> None:
    created = await share_app(device_sharing, home, expire=60)
    clock.advance(59_999)
    await device_sharing.accept(answer(home.bob, created.invite_code))
    clock.advance(10 * HOUR * 1000)
    # An accepted share does not expire.
    assert [s.state for s in await device_sharing.list(home.bob)] == [ShareState.ACCEPT]
    assert await device_sharing.sweep() == 0


@pytest.mark.parametrize("act", ["accept", "deny"])
async def test_answering_an_expired_share_persists_overtime_and_tells_both(
    device_sharing: DeviceSharing, home: Home, db: Database, clock: FixedClock, commits: CommitCounter, act: str
) -> None:
    created = await share_app(device_sharing, home, expire=60)
    await clear_outbox(db)
    clock.advance(61_000)
    with pytest.raises(ShareNotUsable) as exc:
        await getattr(device_sharing, act)(answer(home.bob, created.invite_code))
    assert code_of(exc) == 4031012
    assert await state_of(db, created.invite_code) == ("overtime", home.bob.id, None, START + 61_000)
    assert await outbox_rows(db) == both(created, "update", "overtime")
    assert await subscription_rows(db) == []
    assert commits.count == 2  # the refusal's commit is dispatched too
    with pytest.raises(ShareNotUsable):
        await device_sharing.accept(answer(home.bob, created.invite_code))
    assert await outbox_rows(db) == both(created, "update", "overtime")


async def test_cancelling_an_expired_share_persists_overtime(
    device_sharing: DeviceSharing, home: Home, db: Database, clock: FixedClock
) -> None:
    created = await share_app(device_sharing, home, expire=60)
    await clear_outbox(db)
    clock.advance(60_000)
    with pytest.raises(ShareNotUsable):
        await device_sharing.cancel(answer(home.alice, created.invite_code))
    assert await state_of(db, created.invite_code) == ("overtime", home.bob.id, None, START + 60_000)
    assert await outbox_rows(db) == both(created, "update", "overtime")


async def test_sweep_persists_overtime_for_every_expired_pending_share(
    device_sharing: DeviceSharing, home: Home, db: Database, clock: FixedClock, commits: CommitCounter
) -> None:
    short = await share_app(device_sharing, home, expire=60)
    qr = await share(device_sharing, home.alice, device_id=home.hall.id, mode="qrcode", expire=120)
    long = await share_app(device_sharing, home, expire=HOUR)
    accepted = await share(device_sharing, home.bob, device_id=home.desk.id, mode="app", user=home.carol.id, expire=60)
    await device_sharing.accept(answer(home.carol, accepted.invite_code))
    await clear_outbox(db)
    commits.count = 0
    assert await device_sharing.sweep() == 0
    clock.advance(120_000)
    assert await device_sharing.sweep() == 2
    now = START + 120_000
    assert await rows(db, "SELECT invite_code, state, updated_at FROM device_shares ORDER BY invite_code") == sorted([
        (short.invite_code, "overtime", now),
        (qr.invite_code, "overtime", now),
        (long.invite_code, "pending", START),
        (accepted.invite_code, "accept", START),
    ])
    assert await outbox_rows(db) == [
        *both(short, "update", "overtime"),
        msg("alice@example.test", qr, "update", "overtime", "sent"),
    ]
    assert commits.count == 1
    assert await device_sharing.sweep() == 0
    assert len(await outbox_rows(db)) == 3


async def test_sweep_works_in_batches(device_sharing: DeviceSharing, home: Home, db: Database, clock: FixedClock) -> None:
    for _ in range(3):
        await share_app(device_sharing, home, expire=60)
    await share(device_sharing, home.bob, device_id=home.desk.id, mode="qrcode", expire=60)
    clock.advance(60_000)
    assert await device_sharing.sweep(batch=2) == 4
    assert await rows(db, "SELECT DISTINCT state FROM device_shares") == [("overtime",)]


@pytest.mark.parametrize("change", ["device-deleted", "manager-removed"])
async def test_deleting_the_device_or_its_manager_invalidates_its_pending_shares(
    device_sharing: DeviceSharing, home: Home, db: Database, provisioning: Provisioning, clock: FixedClock,
    change: str,
) -> None:
    """DESIGN "Deleting ends access": at once, in the delete's transaction, both told."""
    created = await share_app(device_sharing, home)
    await clear_outbox(db)
    if change == "device-deleted":
        await provisioning.delete_device(Principal(None), home.account.id, home.hall.id)
    else:
        await provisioning.delete_user(Principal(None), home.account.id, home.alice.id)
    assert await state_of(db, created.invite_code) == ("invalid", home.bob.id, None, START)
    assert await outbox_rows(db) == both(created, "update", "invalid")
    clock.advance(1_000)
    with pytest.raises(ShareNotUsable) as exc:
        await device_sharing.accept(answer(home.bob, created.invite_code))
    assert code_of(exc) == 4031012
    assert await subscription_rows(db) == []
    for act in (device_sharing.accept, device_sharing.deny):
        with pytest.raises(ShareNotUsable):
            await act(answer(home.bob, created.invite_code))
    with pytest.raises(ShareNotUsable):
        await device_sharing.cancel(answer(home.alice, created.invite_code))
    assert [s.state for s in await device_sharing.list(home.alice)] == [ShareState.INVALID]
    assert len(await outbox_rows(db)) == 2
    # The manager can no longer share it either.
    with pytest.raises(DeviceNotFound):
        await share_app(device_sharing, home)


# ---- cancel -----------------------------------------------------------------------------------


async def test_the_manager_cancels_a_pending_share(
    device_sharing: DeviceSharing, home: Home, db: Database, clock: FixedClock
) -> None:
    created = await share_app(device_sharing, home)
    await clear_outbox(db)
    clock.advance(2_000)
    done = await device_sharing.cancel(answer(home.alice, created.invite_code, "changed my mind"))
    assert done == replace(created, state=ShareState.CANCEL, reason="changed my mind", updated_at=START + 2_000)
    assert await state_of(db, created.invite_code) == ("cancel", home.bob.id, "changed my mind", START + 2_000)
    assert await outbox_rows(db) == both(created, "update", "cancel")
    with pytest.raises(AlreadyCanceled) as exc:
        await device_sharing.cancel(answer(home.alice, created.invite_code))
    assert code_of(exc) == 4031008


async def test_cancelling_an_accepted_share_revokes_access(
    device_sharing: DeviceSharing, home: Home, db: Database, clock: FixedClock, states: PresenceStates
) -> None:
    created = await share_app(device_sharing, home)
    await device_sharing.accept(answer(home.bob, created.invite_code))
    await clear_outbox(db)
    clock.advance(3_000)
    await device_sharing.cancel(answer(home.alice, created.invite_code))
    assert await state_of(db, created.invite_code) == ("cancel", home.bob.id, None, START + 3_000)
    assert await outbox_rows(db) == [
        *both(created, "update", "cancel"),
        ("presence", "bob@example.test", {"extension": "1001", "type": "unavailable"}),
        ("roster", "bob@example.test", {"jid": f"1001@{COMPONENT}", "direction": "to", "op": "remove"}),
    ]
    assert await subscription_rows(db) == []
    assert await states.listing(Principal(None), home.account.id) == []


async def test_a_code_share_accepted_then_cancelled_revokes_the_acceptor(
    device_sharing: DeviceSharing, home: Home, db: Database
) -> None:
    created = await share(device_sharing, home.alice, device_id=home.hall.id, mode="qrcode")
    await device_sharing.accept(answer(home.carol, created.invite_code))
    await clear_outbox(db)
    await device_sharing.cancel(answer(home.alice, created.invite_code))
    assert await outbox_rows(db) == [
        *both(created, "update", "cancel", to=home.carol),
        ("presence", "carol@example.test", {"extension": "1001", "type": "unavailable"}),
        ("roster", "carol@example.test", {"jid": f"1001@{COMPONENT}", "direction": "to", "op": "remove"}),
    ]
    assert await subscription_rows(db) == []


async def test_cancelling_one_of_two_accepted_shares_keeps_access(
    device_sharing: DeviceSharing, home: Home, db: Database
) -> None:
    first = await share_app(device_sharing, home)
    second = await share_app(device_sharing, home)
    await device_sharing.accept(answer(home.bob, first.invite_code))
    await device_sharing.accept(answer(home.bob, second.invite_code))
    await clear_outbox(db)
    await device_sharing.cancel(answer(home.alice, first.invite_code))
    # The second share still grants the device: nothing is revoked.
    assert await outbox_rows(db) == both(first, "update", "cancel")
    assert [r[3] for r in await subscription_rows(db)] == ["bob@example.test"]
    await clear_outbox(db)
    await device_sharing.cancel(answer(home.alice, second.invite_code))
    assert await outbox_rows(db) == [
        *both(second, "update", "cancel"),
        ("presence", "bob@example.test", {"extension": "1001", "type": "unavailable"}),
        ("roster", "bob@example.test", {"jid": f"1001@{COMPONENT}", "direction": "to", "op": "remove"}),
    ]
    assert await subscription_rows(db) == []


async def test_only_the_manager_cancels(device_sharing: DeviceSharing, home: Home, db: Database) -> None:
    created = await share_app(device_sharing, home)
    await device_sharing.accept(answer(home.bob, created.invite_code))
    before = (await share_rows(db), await outbox_rows(db), await subscription_rows(db))
    for caller in (home.bob, home.carol):
        with pytest.raises(ShareNotFound) as exc:
            await device_sharing.cancel(answer(caller, created.invite_code))
        assert code_of(exc) == 4041018
    assert (await share_rows(db), await outbox_rows(db), await subscription_rows(db)) == before


async def test_a_denied_share_cannot_be_cancelled(device_sharing: DeviceSharing, home: Home) -> None:
    created = await share_app(device_sharing, home)
    await device_sharing.deny(answer(home.bob, created.invite_code))
    with pytest.raises(ShareNotUsable) as exc:
        await device_sharing.cancel(answer(home.alice, created.invite_code))
    assert code_of(exc) == 4031012


# ---- delete and list --------------------------------------------------------------------------


async def test_delete_hides_the_share_from_the_callers_history_only(
    device_sharing: DeviceSharing, home: Home, db: Database
) -> None:
    created = await share_app(device_sharing, home)
    await clear_outbox(db)
    await device_sharing.delete(home.alice, created.invite_code)
    assert await device_sharing.list(home.alice) == []
    assert [s.invite_code for s in await device_sharing.list(home.bob)] == [created.invite_code]
    assert await rows(db, "SELECT state, hidden_by_sender, hidden_by_receiver FROM device_shares") == [("pending", 1, 0)]
    # Deleting from the history changes nothing else: bob can still accept.
    await device_sharing.accept(answer(home.bob, created.invite_code))
    await device_sharing.delete(home.bob, created.invite_code)
    assert await device_sharing.list(home.bob) == []
    assert await rows(db, "SELECT state, hidden_by_sender, hidden_by_receiver FROM device_shares") == [("accept", 1, 1)]
    # Again is harmless.
    await device_sharing.delete(home.bob, created.invite_code)


async def test_delete_of_someone_elses_or_an_unknown_share_is_4041018(
    device_sharing: DeviceSharing, home: Home, db: Database
) -> None:
    created = await share_app(device_sharing, home)
    for caller, code in ((home.carol, created.invite_code), (home.alice, new_invite_code())):
        with pytest.raises(ShareNotFound) as exc:
            await device_sharing.delete(caller, InviteCode(code))
        assert code_of(exc) == 4041018
    assert await rows(db, "SELECT hidden_by_sender, hidden_by_receiver FROM device_shares") == [(0, 0)]


async def test_list_shows_sent_and_received_newest_first(
    device_sharing: DeviceSharing, home: Home, clock: FixedClock
) -> None:
    to_bob = await share_app(device_sharing, home, expire=600)
    clock.advance(1_000)
    qr = await share(device_sharing, home.alice, device_id=home.hall.id, mode="qrcode", expire=60, authority="R")
    clock.advance(1_000)
    to_alice = await share(device_sharing, home.bob, device_id=home.desk.id, mode="app", user="alice@example.test")
    await device_sharing.deny(answer(home.alice, to_alice.invite_code, "busy"))

    def fields(s: DeviceShare, **over: Any) -> dict[str, Any]:
        out = {
            "invite_code": s.invite_code,
            "from_id": s.from_user.id,
            "from_user": s.from_user.jid,
            "to_id": s.to_user.id if s.to_user else None,
            "to_user": s.to_user.jid if s.to_user else None,
            "device_id": s.device_id,
            "state": "pending",
            "create_date": iso_ms(s.create_date),
            "expire_date": iso_ms(s.expire_date),
            "mode": s.mode.value,
            "authority": s.authority,
            "reason": None,
        }
        return {**out, **over}

    alices = [share_fields(s) for s in await device_sharing.list(home.alice)]
    assert alices == [
        fields(to_alice, state="deny", reason="busy"),
        fields(qr, authority="R"),
        fields(to_bob),
    ]
    assert alices[2]["create_date"] == "2026-01-01T00:00:00.000Z"
    assert alices[2]["expire_date"] == "2026-01-01T00:10:00.000Z"
    assert all(set(a) == SHARE_FIELDS for a in alices)
    assert [share_fields(s) for s in await device_sharing.list(home.bob)] == [
        fields(to_alice, state="deny", reason="busy"),
        fields(to_bob),
    ]
    assert await device_sharing.list(home.carol) == []


async def test_an_unknown_email_share_lists_the_address_as_to_user(device_sharing: DeviceSharing, home: Home) -> None:
    created = await share(device_sharing, home.alice, device_id=home.hall.id, mode="email", user="zoe@mail.test")
    [listed] = [share_fields(s) for s in await device_sharing.list(home.alice)]
    assert (listed["to_id"], listed["to_user"], listed["mode"]) == (None, "zoe@mail.test", "email")
    assert listed["invite_code"] == created.invite_code


async def test_invite_for_qr_is_the_managers_only(device_sharing: DeviceSharing, home: Home) -> None:
    created = await share(device_sharing, home.alice, device_id=home.hall.id, mode="qrcode")
    assert (await device_sharing.invite_for_qr(home.alice, created.invite_code)).invite_code == created.invite_code
    for caller, code in ((home.bob, created.invite_code), (home.alice, new_invite_code())):
        with pytest.raises(ShareNotFound):
            await device_sharing.invite_for_qr(caller, InviteCode(code))
