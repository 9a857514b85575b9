"""Sends the mail outbox over SMTP (aiosmtplib), with retries.

Mails are committed with the share that needs them; this task sends the due
ones, deletes them once the server accepted them, and retries failures with
backoff (30 s doubling, at most 1 h) up to `max_attempts`.
"""

from __future__ import annotations

import asyncio
import logging
from email.message import EmailMessage

import aiosmtplib

from component.clock import Clock
from component.config import SmtpConfig
from component.worker import Worker
from storage import Database
from storage import mail as mail_outbox

log = logging.getLogger(__name__)


class MailDispatcher(Worker):
    task_name = "mail-dispatcher"

    def __init__(self, db: Database, clock: Clock, smtp: SmtpConfig) -> None:
        super().__init__()
        self.db = db
        self.clock = clock
        self.smtp = smtp
        self.sent = 0

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
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def send_due(self) -> None:
        now = self.clock.now_ms()
        due = await self.db.read(lambda conn: mail_outbox.due(conn, now, 50))
        for mail in due:
            message = EmailMessage()
            message["From"] = self.smtp.sender
            message["To"] = mail.recipient
            message["Subject"] = mail.subject
            message.set_content(mail.body)
            try:
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
            except (aiosmtplib.SMTPException, OSError) as exc:
                await self._failed(mail.id, mail.attempts, mail.recipient, exc)
                continue
            await self.db.write(lambda tx, mail_id=mail.id: mail_outbox.delete(tx, mail_id))
            self.sent += 1
            log.info("mail: invitation sent to %s (mail %d)", mail.recipient, mail.id)

    async def _failed(self, mail_id: int, attempts: int, recipient: str, exc: Exception) -> None:
        if attempts + 1 >= self.smtp.max_attempts:
            await self.db.write(lambda tx: mail_outbox.delete(tx, mail_id))
            log.error(
                "mail: giving up on mail %d to %s after %d attempts: %s",
                mail_id, recipient, attempts + 1, type(exc).__name__,
            )
            return
        delay_ms = min(30_000 * 2**attempts, 3_600_000)
        retry_at = self.clock.now_ms() + delay_ms
        await self.db.write(lambda tx: mail_outbox.retry_later(tx, mail_id, retry_at))
        log.warning(
            "mail: sending mail %d to %s failed (%s: %s); retry in %d s",
            mail_id, recipient, type(exc).__name__, exc, delay_ms // 1000,
        )
