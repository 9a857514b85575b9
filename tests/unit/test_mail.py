"""The mail outbox and its dispatcher against a real SMTP server (aiosmtpd) on a free
loopback port: delivery, retries with backoff, giving up."""

from __future__ import annotations

import asyncio
import email
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import TYPE_CHECKING, Any

import pytest
from aiosmtpd.controller import Controller

from component.clock import FixedClock
from component.commands import CreateDevice, Principal, ShareDevice
from component.config import SmtpConfig
from component.device_sharing import DeviceSharing
from component.mail import MailDispatcher
from component.model import DeviceShare
from storage import Database, dead_letters
from storage import mail as mail_outbox

if TYPE_CHECKING:  # conftest is not importable by name: the stanza tier has one too
    from conftest import Home

START = FixedClock().now_ms()
SENDER = "presence@example.test"


class Inbox:
    """aiosmtpd handler: keeps every message it accepts."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def messages(self) -> list[EmailMessage]:
        """The accepted messages, decoded (SMTP's CRLF line ends read back as LF by `body`)."""
        return [
            email.message_from_bytes(e.original_content, policy=default_policy)  # type: ignore[misc]
            for e in self.envelopes
        ]


def text_of(message: EmailMessage) -> str:
    return str(message.get_content()).replace("\r\n", "\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def smtp(port: int, max_attempts: int = 3) -> SmtpConfig:
    return SmtpConfig(host="127.0.0.1", port=port, sender=SENDER, timeout_s=5, max_attempts=max_attempts)


async def mail_rows(db: Database) -> list[tuple[Any, ...]]:
    async with db.reader.execute(
        "SELECT recipient, attempts, next_try_at FROM mail_outbox ORDER BY id"
    ) as cur:
        return [tuple(r) for r in await cur.fetchall()]


async def email_share(ds: DeviceSharing, home: Home, address: str = "zoe@mail.test") -> DeviceShare:
    return await ds.share(
        ShareDevice.from_fields(
            home.alice,
            {"device_id": home.hall.id, "mode": "email", "user": address, "expire": 3600},
            ds.settings.max_expire_s,
        )
    )


async def test_the_invitation_is_delivered_then_its_row_deleted(
    device_sharing: DeviceSharing, home: Home, db: Database, clock: FixedClock,
    smtp_server: tuple[Inbox, int],
) -> None:
    inbox, port = smtp_server
    created = await email_share(device_sharing, home)
    dispatcher = MailDispatcher(db, clock, smtp(port))
    await dispatcher.send_due()
    assert dispatcher.sent == 1
    assert await mail_rows(db) == []
    [envelope] = inbox.envelopes
    assert (envelope.mail_from, envelope.rcpt_tos) == (SENDER, ["zoe@mail.test"])
    [message] = inbox.messages()
    assert (message["From"], message["To"], message["Subject"]) == (
        SENDER, "zoe@mail.test", 'alice@example.test shares "Hall phone" with you'
    )
    body = text_of(message)
    code = created.invite_code
    assert body.startswith('alice@example.test invites you to see the presence of the device "Hall phone".\n')
    assert f"Invite code: {code}\n" in body
    assert "The invitation expires at 2026-01-01T01:00:00.000Z.\n" in body
    assert "POST https://presence.example.test/api/v2/share/device/accept\n" in body
    assert f'{{"invite_code": "{code}"}}' in body
    assert "with your token in the Access-Token header" in body
    assert "To decline, send the same body to https://presence.example.test/api/v2/share/device/deny." in body
    assert f"    xmpp:presence.example.test?command;node=urn:xmpp:presence-consent:cmd:shares:{code}\n" in body
    assert 'run the ad-hoc command "Device shares" of presence.example.test and enter the code' in body
    # Nothing left to send: a second round sends nothing.
    await dispatcher.send_due()
    assert len(inbox.envelopes) == 1


async def test_a_known_address_is_mailed_too(
    device_sharing: DeviceSharing, home: Home, db: Database, clock: FixedClock,
    smtp_server: tuple[Inbox, int],
) -> None:
    inbox, port = smtp_server
    created = await email_share(device_sharing, home, "bob@mail.test")
    await MailDispatcher(db, clock, smtp(port)).send_due()
    [message] = inbox.messages()
    assert message["To"] == "bob@mail.test"
    assert f"Invite code: {created.invite_code}\n" in text_of(message)


async def test_a_refused_mail_is_retried_with_backoff_then_moved_aside(
    device_sharing: DeviceSharing, home: Home, db: Database, clock: FixedClock
) -> None:
    await email_share(device_sharing, home)
    dispatcher = MailDispatcher(db, clock, smtp(free_port(), max_attempts=3))  # nothing listens there
    await dispatcher.send_due()
    assert await mail_rows(db) == [("zoe@mail.test", 1, START + 30_000)]
    # Not due yet: untouched.
    clock.advance(29_999)
    await dispatcher.send_due()
    assert await mail_rows(db) == [("zoe@mail.test", 1, START + 30_000)]
    clock.advance(1)
    await dispatcher.send_due()
    assert await mail_rows(db) == [("zoe@mail.test", 2, START + 30_000 + 60_000)]
    clock.advance(60_000)
    await dispatcher.send_due()  # the third failure reaches max_attempts
    assert await mail_rows(db) == []
    assert dispatcher.sent == 0
    (dead,) = await dead_letters.recent(db.reader)
    assert (dead.source, dead.recipient, dead.attempts, dead.last_error) == (
        "mail", "zoe@mail.test", 3, "SMTPConnectError",
    )
    assert dead.payload["subject"] == 'alice@example.test shares "Hall phone" with you'
    assert dispatcher.dead == 1


async def test_a_mail_that_failed_is_sent_once_the_server_is_back(
    device_sharing: DeviceSharing, home: Home, db: Database, clock: FixedClock
) -> None:
    port = free_port()
    await email_share(device_sharing, home)
    dispatcher = MailDispatcher(db, clock, smtp(port))
    await dispatcher.send_due()
    assert await mail_rows(db) == [("zoe@mail.test", 1, START + 30_000)]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        clock.advance(30_000)
        await dispatcher.send_due()
    finally:
        controller.stop()
    assert len(inbox.envelopes) == 1
    assert await mail_rows(db) == []


async def test_the_running_dispatcher_sends_when_woken(
    device_sharing: DeviceSharing, home: Home, db: Database, clock: FixedClock,
    smtp_server: tuple[Inbox, int],
) -> None:
    inbox, port = smtp_server
    dispatcher = MailDispatcher(db, clock, smtp(port))
    dispatcher.start()
    try:
        await email_share(device_sharing, home)
        dispatcher.wake()  # what the composition root wires to DeviceSharing.on_mail
        async with asyncio.timeout(5):
            while dispatcher.sent < 1:
                await asyncio.sleep(0.01)
    finally:
        await dispatcher.stop()
    assert len(inbox.envelopes) == 1
    assert await mail_rows(db) == []


@pytest.mark.parametrize("turns", range(4))
async def test_a_stop_right_after_a_wake_up_ends_the_dispatcher(
    device_sharing: DeviceSharing, home: Home, db: Database, clock: FixedClock, turns: int
) -> None:
    """As the outbox dispatcher's: a stop that meets a wake-up is not dropped while the
    dispatcher waits for a retry that is due later."""
    await email_share(device_sharing, home)
    dispatcher = MailDispatcher(db, clock, smtp(free_port()))  # nothing listens there
    dispatcher.start()
    async with asyncio.timeout(5):
        while (await mail_rows(db))[0][1] == 0:  # the first attempt failed: retry in 30 s
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # past its read of the next due time: waiting
    dispatcher.wake()
    for _ in range(turns):
        await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await dispatcher.stop()


async def test_a_device_name_with_a_line_break_is_one_line_in_the_subject(
    device_sharing: DeviceSharing, home: Home, db: Database, clock: FixedClock,
    provisioning, smtp_server: tuple[Inbox, int],
) -> None:
    """Issue #10: "lobby\nphone" made the Subject header raise, and the mail outbox stuck."""
    inbox, port = smtp_server
    lobby = await provisioning.create_device(
        Principal(None), home.account.id, CreateDevice("lobby\nphone", "1009", owner_id=home.alice.id)
    )
    await device_sharing.share(ShareDevice.from_fields(
        home.alice, {"device_id": lobby.id, "mode": "email", "user": "zoe@mail.test", "expire": 600}, 86_400
    ))
    await MailDispatcher(db, clock, smtp(port)).send_due()
    [message] = inbox.messages()
    assert message["Subject"] == 'alice@example.test shares "lobby phone" with you'


async def test_a_mail_that_cannot_be_built_does_not_hold_up_the_next(
    device_sharing: DeviceSharing, home: Home, db: Database, clock: FixedClock,
    smtp_server: tuple[Inbox, int],
) -> None:
    inbox, port = smtp_server
    await db.write(lambda tx: mail_outbox.add(tx, "bad\r\naddress@mail.test", "hello", "body", START))
    await email_share(device_sharing, home)
    dispatcher = MailDispatcher(db, clock, smtp(port, max_attempts=1))
    await dispatcher.send_due()
    assert [m["To"] for m in inbox.messages()] == ["zoe@mail.test"]
    assert await mail_rows(db) == []
    (dead,) = await dead_letters.recent(db.reader)
    assert (dead.recipient, dead.attempts) == ("bad\r\naddress@mail.test", 1)
