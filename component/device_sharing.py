"""Family 3: a device's manager shares the device with other users by invitation (Xlink).

Accepting gives the user the device's presence: a roster item for the device's
extension JID (XEP-0356) and a subscription that shows in family 2's listing.
Cancelling an accepted share revokes both. Every change is one transaction with
its outbox rows (management messages, roster items, presence, e-mail).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from component.actions import write_outbox
from component.clock import Clock, iso_ms
from component.commands import ShareAnswer, ShareDevice
from component.errors import (
    AlreadyAccepted,
    AlreadyCanceled,
    BadRequest,
    DeviceNotFound,
    DomainError,
    LimitReached,
    ShareNotFound,
    ShareNotUsable,
    UserNotFound,
)
from component.model import (
    Device,
    DeviceShare,
    InviteCode,
    ShareMode,
    ShareState,
    User,
    UserId,
    is_object_id,
    new_invite_code,
    parse_bare_jid,
    parse_device_id,
    parse_email,
)
from component.notifications import (
    Notification,
    extension_presence,
    invite_mail,
    roster_item,
    sharing_messages,
)
from component.subscriptions import XMPP_EVENT, open_subscription
from storage import Conn, Database, accounts, shares, users
from storage import mail as mail_outbox
from storage import subscriptions as subs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SharingSettings:
    component_jid: str
    max_expire_s: int = 30 * 86400
    max_pending_per_device: int = 100
    email_enabled: bool = False
    public_url: str = ""
    list_limit: int = 1000


class DeviceSharing:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        served_domains: frozenset[str],
        settings: SharingSettings,
        on_commit: Callable[[], None] = lambda: None,
        on_mail: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.served_domains = served_domains
        self.settings = settings
        self.on_commit = on_commit
        self.on_mail = on_mail

    # ---- share -------------------------------------------------------------------

    async def share(self, cmd: ShareDevice) -> DeviceShare:
        now = self.clock.now_ms()
        mode = ShareMode(cmd.mode)
        if mode is ShareMode.EMAIL and not self.settings.email_enabled:
            raise BadRequest("e-mail sharing is not configured on this server ([smtp] host)", "mode", "enum")

        async def invite(tx: Conn) -> tuple[DeviceShare, Device, User | None, str | None]:
            device = await self._managed_device(tx, cmd.caller, cmd.device_id)
            to_user, to_email = await self._invitee(tx, cmd, mode, now)
            if to_user is not None and to_user.id == cmd.caller.id:
                raise BadRequest("the manager cannot share a device with itself", "user", "self")
            pending = await shares.count_pending_for_device(tx, device.id, now)
            if pending >= self.settings.max_pending_per_device:
                raise LimitReached(
                    f"at most {self.settings.max_pending_per_device} pending shares per device"
                )
            share = DeviceShare(
                invite_code=new_invite_code(),
                device_id=device.id,
                from_user=cmd.caller,
                to_user=to_user,
                to_email=to_email,
                mode=mode,
                authority=cmd.authority,
                state=ShareState.PENDING,
                create_date=now,
                expire_date=now + cmd.expire * 1000,
                reason=None,
                updated_at=now,
            )
            await shares.insert(tx, share)
            await write_outbox(tx, sharing_messages(share, "create"), now)
            if mode is ShareMode.EMAIL:
                mail = invite_mail(
                    share, device.name, iso_ms(share.expire_date) or "", self.settings.public_url,
                    self.settings.component_jid,
                )
                await mail_outbox.add(tx, mail.recipient, mail.subject, mail.body, now)
            return share, device, to_user, to_email

        share, device, to_user, to_email = await self.db.write(invite)
        log.info(
            "device share %s… created: %s shares device %s by %s with %s",
            share.invite_code[:6], cmd.caller.jid, device.id, mode.value,
            to_user.jid if to_user else (to_email or "the code's holder"),
        )
        self.on_commit()
        if mode is ShareMode.EMAIL:
            self.on_mail()
        return share

    async def _managed_device(self, tx: Conn, caller: User, device_id: str) -> Device:
        """The device, if the caller manages it; 4041008 otherwise (no oracle)."""
        try:
            device = await accounts.device_by_id(tx, parse_device_id(device_id))
        except BadRequest:
            device = None
        if device is None or device.owner_id != caller.id:
            raise DeviceNotFound(f"device {device_id} not found among the devices you manage")
        return device

    async def _invitee(
        self, tx: Conn, cmd: ShareDevice, mode: ShareMode, now: int
    ) -> tuple[User | None, str | None]:
        if mode is ShareMode.QRCODE:
            return None, None
        assert cmd.user is not None
        if mode is ShareMode.EMAIL:
            email = parse_email(cmd.user, "user")
            return await accounts.user_by_email(tx, email), email
        # app: a user id, a JID of a served domain, or a provisioned e-mail address.
        if is_object_id(cmd.user):
            found = await users.by_id(tx, UserId(cmd.user))
        elif "@" in cmd.user and cmd.user.rpartition("@")[2].lower() in self.served_domains:
            found = await users.get_or_create(tx, parse_bare_jid(cmd.user, "user"), now)
        elif "@" in cmd.user:
            found = await accounts.user_by_email(tx, parse_email(cmd.user, "user"))
        else:
            found = None
        if found is None:
            raise UserNotFound(f"user {cmd.user} not found")
        return found, None

    # ---- answers -------------------------------------------------------------------

    async def accept(self, cmd: ShareAnswer) -> DeviceShare:
        return await self._answer(cmd, ShareState.ACCEPT)

    async def deny(self, cmd: ShareAnswer) -> DeviceShare:
        return await self._answer(cmd, ShareState.DENY)

    async def _answer(self, cmd: ShareAnswer, outcome: ShareState) -> DeviceShare:
        now = self.clock.now_ms()

        async def answer(tx: Conn) -> tuple[DeviceShare, DeviceShare | DomainError]:
            share = await self._get(tx, InviteCode(cmd.invite_code))
            if share.to_user is not None:
                if share.to_user.id != cmd.caller.id:
                    if share.mode is not ShareMode.QRCODE:
                        raise ShareNotFound("share not found")
                    # A QR code is for whoever holds it, and someone else already
                    # answered it: tell this holder why the code no longer works.
                    raise not_answerable(share.effective_state(now))
            elif share.from_user.id == cmd.caller.id:
                raise BadRequest("the manager cannot answer its own share", "invite_code", "self")
            device = await accounts.device_by_id(tx, share.device_id)
            refusal = await self._usable(tx, share, device, now)
            if refusal is not None:
                return share, refusal
            assert device is not None
            done = replace(share, state=outcome, to_user=share.to_user or cmd.caller,
                           reason=cmd.reason, updated_at=now)
            if not await shares.update_state(
                tx, share.invite_code, ShareState.PENDING, outcome, now, cmd.caller.id, cmd.reason
            ):
                raise ShareNotUsable("the share changed meanwhile")
            notes = sharing_messages(done, "update")
            if outcome is ShareState.ACCEPT:
                notes += await self._grant(tx, done, device, now)
            await write_outbox(tx, notes, now)
            return share, done

        share, done = await self.db.write(answer)
        if isinstance(done, DomainError):  # raised after the commit that recorded overtime/invalid
            self.on_commit()
            raise done
        log.info(
            "device share %s… %s by %s (device %s)",
            share.invite_code[:6], outcome.value, cmd.caller.jid, share.device_id,
        )
        self.on_commit()
        return done

    async def cancel(self, cmd: ShareAnswer) -> DeviceShare:
        """The manager withdraws a pending share, or revokes an accepted one."""
        now = self.clock.now_ms()

        async def cancel(tx: Conn) -> tuple[DeviceShare, ShareState, DeviceShare | DomainError]:
            share = await self._get(tx, InviteCode(cmd.invite_code))
            if share.from_user.id != cmd.caller.id:
                raise ShareNotFound("share not found")
            state = share.effective_state(now)
            if state is ShareState.CANCEL:
                raise AlreadyCanceled("the share is already canceled")
            if state is ShareState.OVERTIME and share.state is ShareState.PENDING:
                return share, state, await self._expire(tx, share, now)
            if state not in (ShareState.PENDING, ShareState.ACCEPT):
                raise ShareNotUsable(f"the share is {state.value}")
            done = replace(share, state=ShareState.CANCEL, reason=cmd.reason, updated_at=now)
            if not await shares.update_state(
                tx, share.invite_code, state, ShareState.CANCEL, now, None, cmd.reason
            ):
                raise ShareNotUsable("the share changed meanwhile")
            notes = sharing_messages(done, "update")
            if state is ShareState.ACCEPT:
                notes += await self._revoke(tx, done, now)
            await write_outbox(tx, notes, now)
            return share, state, done

        share, state, done = await self.db.write(cancel)
        if isinstance(done, DomainError):  # raised after the commit that recorded overtime
            self.on_commit()
            raise done
        log.info(
            "device share %s… canceled by %s%s", share.invite_code[:6], cmd.caller.jid,
            " (access revoked)" if state is ShareState.ACCEPT else "",
        )
        self.on_commit()
        return done

    async def _usable(
        self, tx: Conn, share: DeviceShare, device: Device | None, now: int
    ) -> DomainError | None:
        """Why the share cannot be answered (recording overtime/invalid), or None."""
        state = share.effective_state(now)
        if state is ShareState.OVERTIME and share.state is ShareState.PENDING:
            return await self._expire(tx, share, now)
        if state is not ShareState.PENDING:
            raise not_answerable(state)
        if device is None or device.owner_id != share.from_user.id:
            # The device was deleted or changed manager since the invitation.
            await shares.update_state(tx, share.invite_code, ShareState.PENDING, ShareState.INVALID, now)
            await write_outbox(tx, sharing_messages(share, "update", ShareState.INVALID.value), now)
            return ShareNotUsable("the share is no longer valid: the device changed")
        return None

    async def _expire(self, tx: Conn, share: DeviceShare, now: int) -> DomainError:
        await shares.update_state(tx, share.invite_code, ShareState.PENDING, ShareState.OVERTIME, now)
        await write_outbox(tx, sharing_messages(share, "update", ShareState.OVERTIME.value), now)
        return ShareNotUsable("the share has expired")

    async def _grant(
        self, tx: Conn, share: DeviceShare, device: Device, now: int
    ) -> list[Notification]:
        """The accepted user gets the device's presence: roster item, subscription, state."""
        assert share.to_user is not None
        account = await accounts.get_account(tx, device.account_id)
        assert account is not None
        user = share.to_user
        _, _, state_note = await open_subscription(
            tx, account.realm, device.extension, user.jid, now
        )
        ext_jid = f"{device.extension}@{self.settings.component_jid}"
        return [roster_item(user.jid, ext_jid, "to", device.name), state_note]

    async def _revoke(self, tx: Conn, share: DeviceShare, now: int) -> list[Notification]:
        """Undo `_grant`: the roster item and the subscription go, presence ends."""
        assert share.to_user is not None
        device = await accounts.device_by_id(tx, share.device_id)
        if device is None:
            return []
        if await shares.count_accepted(tx, share.device_id, share.to_user.id):
            return []  # another accepted share of this device still grants the user access
        account = await accounts.get_account(tx, device.account_id)
        assert account is not None
        user = share.to_user
        await subs.remove(tx, account.realm, device.extension, XMPP_EVENT, user.jid)
        ext_jid = f"{device.extension}@{self.settings.component_jid}"
        return [
            extension_presence(user.jid, device.extension, None, presence_type="unavailable"),
            roster_item(user.jid, ext_jid, "remove"),
        ]

    # ---- reads and history -------------------------------------------------------

    async def list(self, caller: User) -> list[DeviceShare]:
        """Shares the caller sent or received, newest first, expiry applied."""
        now = self.clock.now_ms()
        limit = self.settings.list_limit
        found = await self.db.read(lambda conn: shares.visible_to(conn, caller.id, limit))
        return [replace(s, state=s.effective_state(now)) for s in found]

    async def delete(self, caller: User, invite_code: InviteCode) -> None:
        """Remove the share from the caller's own history; the other party still sees it."""
        if not await self.db.write(lambda tx: shares.hide_for(tx, invite_code, caller.id)):
            raise ShareNotFound("share not found")
        log.info("device share %s… deleted from %s's history", invite_code[:6], caller.jid)

    async def invite_for_qr(self, caller: User, invite_code: InviteCode) -> DeviceShare:
        """The share whose code the manager wants as a QR image (the manager only)."""
        share = await self.db.read(lambda conn: shares.get(conn, invite_code))
        if share is None or share.from_user.id != caller.id:
            raise ShareNotFound("share not found")
        return share

    async def _get(self, tx: Conn, invite_code: InviteCode) -> DeviceShare:
        share = await shares.get(tx, invite_code)
        if share is None:
            raise ShareNotFound("share not found")
        return share

    # ---- expiry ------------------------------------------------------------------

    async def sweep(self, batch: int = 500) -> int:
        """Persist `overtime` for pending shares past their expiry, telling both parties."""
        total = 0
        while True:
            now = self.clock.now_ms()

            async def expire(tx: Conn, now: int = now) -> list[DeviceShare]:
                expired = await shares.expired_pending(tx, now, batch)
                for share in expired:
                    await self._expire(tx, share, now)
                return expired

            expired = await self.db.write(expire)
            total += len(expired)
            if expired:
                self.on_commit()
            if len(expired) < batch:
                break
        if total:
            log.info("device shares: %d pending share(s) expired", total)
        return total

    async def run_sweeper(self, interval_s: float) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("device share sweeper failed; retrying next round")
            await asyncio.sleep(interval_s)



def not_answerable(state: ShareState) -> DomainError:
    """Why a share in `state` (not pending) can no longer be accepted or denied."""
    if state is ShareState.ACCEPT:
        return AlreadyAccepted("the share is already accepted")
    if state is ShareState.CANCEL:
        return AlreadyCanceled("the share was canceled")
    return ShareNotUsable(f"the share is {state.value}")


def share_fields(share: DeviceShare) -> dict[str, str | None]:
    """A share as Xlink's list shows it (the seed's fields, plus mode, authority,
    reason), used by both adapters: JSON objects over REST, attributes over XMPP."""
    return {
        "invite_code": share.invite_code,
        "from_id": share.from_user.id,
        "from_user": share.from_user.jid,
        "to_id": share.to_user.id if share.to_user else None,
        "to_user": share.to_user.jid if share.to_user else share.to_email,
        "device_id": share.device_id,
        "state": share.state.value,
        "create_date": iso_ms(share.create_date),
        "expire_date": iso_ms(share.expire_date),
        "mode": share.mode.value,
        "authority": share.authority,
        "reason": share.reason,
    }
