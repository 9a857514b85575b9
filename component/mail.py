"""Sends the mail outbox over SMTP (aiosmtplib), with retries.

Mails are committed with the share that needs them; this task sends the due
ones, deletes them once the server accepted them, and retries failures with
backoff (30 s doubling, at most 1 h) up to `max_attempts`, then moves the mail to
`dead_letters`. Any failure of one mail (the SMTP server's answer, a mail that
cannot be built) is that mail's attempt: it never holds up the mails behind it.
"""

from __future__ import annotations

import asyncio
import logging
from email.message import EmailMessage

import aiosmtplib

from component.clock import Clock
from component.config import SmtpConfig
from component.worker import Backoff, Worker
from storage import Database
from storage import mail as mail_outbox

RETRY = Backoff(30_000, 3_600_000)

log = logging.getLogger(__name__)


class MailDispatcher(Worker):
    task_name = "mail-dispatcher"

    def __init__(self, db: Database, clock: Clock, smtp: SmtpConfig) -> None:
        super().__init__()
        self.db = db
        self.clock = clock
        self.smtp = smtp
        self.sent = 0
        self.dead = 0

    async def _run(self) -> None:
        while True:
            try:
                await self.send_due()
                next_at = await self.db.read(mail_outbox.next_due_at)
            except Exception:
                log.exception("mail: dispatcher failed; retrying in 30 s")
                next_at = self.clock.now_ms() + 30_000
            timeout = None if next_at is None else max(0.0, (next_at - self.clock.now_ms()) / 1000)
            self._wake.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def send_due(self) -> None:
        now = self.clock.now_ms()
        due = await self.db.read(lambda conn: mail_outbox.due(conn, now, 50))
        for mail in due:
            try:
                message = EmailMessage()
                message["From"] = self.smtp.sender
                message["To"] = mail.recipient
                message["Subject"] = mail.subject
                message.set_content(mail.body)
                await aiosmtplib.send(
                    message,
                    hostname=self.smtp.host,
                    port=self.smtp.port,
                    username=self.smtp.username or None,
                    password=self.smtp.password or None,
                    use_tls=self.smtp.tls,
                    start_tls=self.smtp.starttls,
                    timeout=self.smtp.timeout_s,
                )
            except Exception as exc:  # noqa: BLE001 - this mail's attempt, whatever failed
                await self._failed(mail, exc)
                continue
            await self.db.write(lambda tx, mail_id=mail.id: mail_outbox.delete(tx, mail_id))
            self.sent += 1
            log.info("mail: invitation sent to %s (mail %d)", mail.recipient, mail.id)

    async def _failed(self, mail: mail_outbox.Mail, exc: Exception) -> None:
        # The exception's class only: its text can carry the address or server details.
        error = type(exc).__name__
        now = self.clock.now_ms()
        if mail.attempts + 1 >= self.smtp.max_attempts:
            await self.db.write(lambda tx: mail_outbox.give_up(tx, mail, error, now))
            self.dead += 1
            log.error(
                "mail: giving up on mail %d to %s after %d attempts: %s; kept in dead_letters",
                mail.id, mail.recipient, mail.attempts + 1, error,
            )
            return
        delay_ms = RETRY.delay_ms(mail.attempts)
        await self.db.write(lambda tx: mail_outbox.retry_later(tx, mail.id, now + delay_ms, error))
        log.warning(
            "mail: sending mail %d to %s failed (%s); retry in %d s",
            mail.id, mail.recipient, error, delay_ms // 1000,
        )
