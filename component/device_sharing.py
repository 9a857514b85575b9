"""Family 3: a device's manager shares the device with other users by invitation (Xlink).

Accepting gives the user the device's presence: a roster item for the device's
extension JID (XEP-0356) and a subscription that shows in family 2's listing.
Cancelling an accepted share revokes both. Every change is one transaction with
its outbox rows (management messages, roster items, presence, e-mail).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from component.actions import name_target, write_outbox
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
    XMPP_EVENT,
    Device,
    DeviceId,
    DeviceShare,
    InviteCode,
    ShareMode,
    ShareState,
    User,
    UserId,
    extension_jid,
    is_object_id,
    jid_domain,
    new_invite_code,
    parse_bare_jid,
    parse_device_id,
    parse_email,
)
from component.notifications import (
    Notification,
    extension_presence,
    invite_mail,
    roster_grant,
    roster_revoke,
    sharing_messages,
)
from storage import Conn, Database, accounts, shares, users
from storage import mail as mail_outbox
from storage import subscriptions as subs

log = logging.getLogger(__name__)


# DESIGN "Ad-hoc commands": the command that answers shares; `{node}:{invite code}` opens
# it for one code, which is how an XMPP URI (XEP-0147) carries the code to a client.
SHARES_COMMAND_NODE = "urn:xmpp:presence-consent:cmd:shares"


def redeem_uri(component_jid: str, invite_code: str) -> str:
    """The XEP-0147 URI that opens the shares command of `component_jid` for this code
    (XEP-0050 section 5: `?command;node=`): a phone client that scans it lands in the
    command, ready to accept. An invite code needs no escaping (RFC 5122 query)."""
    return f"xmpp:{component_jid}?command;node={SHARES_COMMAND_NODE}:{invite_code}"


@dataclass(frozen=True)
class SharingSettings:
    component_jid: str
    max_expire_s: int = 30 * 86400
    max_pending_per_device: int = 100
    email_enabled: bool = False
    public_url: str = ""
    list_limit: int = 1000
    max_unseen_targets: int = 1000


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
            await write_outbox(tx, sharing_messages(share, device.name, "create"), now)
            if mode is ShareMode.EMAIL:
                mail = invite_mail(
                    share, device.name, iso_ms(share.expire_date) or "", self.settings.public_url,
                    self.settings.component_jid,
                    redeem_uri(self.settings.component_jid, share.invite_code),
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
        found: User | None = None
        if is_object_id(cmd.user):
            found = await users.by_id(tx, UserId(cmd.user))
        elif "@" in cmd.user:
            try:
                jid = parse_bare_jid(cmd.user, "user")
            except BadRequest:
                jid = None
            if jid is not None and jid_domain(jid) in self.served_domains:
                found = await name_target(tx, cmd.caller, jid, now, self.settings.max_unseen_targets)
            else:
                found = await accounts.user_by_email(tx, parse_email(cmd.user, "user"))
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
            notes = sharing_messages(done, device.name, "update")
            if outcome is ShareState.ACCEPT:
                notes += await grant_access(tx, done, device, self.settings.component_jid, now)
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
            device = await accounts.device_by_id(tx, share.device_id)
            notes = sharing_messages(done, device.name if device else None, "update")
            if state is ShareState.ACCEPT:
                notes += await revoke_access(tx, done, device, self.settings.component_jid, now)
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
            notes = sharing_messages(share, device.name if device else None, "update", ShareState.INVALID.value)
            await write_outbox(tx, notes, now)
            return ShareNotUsable("the share is no longer valid: the device changed")
        return None

    async def _expire(self, tx: Conn, share: DeviceShare, now: int) -> DomainError:
        await shares.update_state(tx, share.invite_code, ShareState.PENDING, ShareState.OVERTIME, now)
        device = await accounts.device_by_id(tx, share.device_id)
        notes = sharing_messages(share, device.name if device else None, "update", ShareState.OVERTIME.value)
        await write_outbox(tx, notes, now)
        return ShareNotUsable("the share has expired")

    # ---- reads and history -------------------------------------------------------

    async def list(self, caller: User) -> list[DeviceShare]:
        """Shares the caller sent or received, newest first, expiry applied."""
        now = self.clock.now_ms()
        limit = self.settings.list_limit
        found = await self.db.read(lambda conn: shares.visible_to(conn, caller.id, limit))
        return [replace(s, state=s.effective_state(now)) for s in found]

    async def managed_devices(self, caller: User) -> list[Device]:
        """The devices the caller manages (and so may share), in any account."""
        limit = self.settings.list_limit
        return await self.db.read(lambda conn: accounts.devices_managed_by(conn, caller.id, limit))

    async def device_names(self, found: Iterable[DeviceShare]) -> dict[DeviceId, str]:
        """The names of the devices of shares the caller listed (those that still exist),
        for people to read them."""
        ids = sorted({s.device_id for s in found})

        async def read(conn: Conn) -> dict[DeviceId, str]:
            names = {}
            for device_id in ids:
                device = await accounts.device_by_id(conn, device_id)
                if device is not None:
                    names[device_id] = device.name
            return names

        return await self.db.read(read)

    async def invitation(self, caller: User, invite_code: InviteCode) -> tuple[DeviceShare, str | None]:
        """A share as the caller may see it before answering or canceling it, with its
        device's name (None once the device is gone): the caller is its manager, its
        invited user, or, for a share not yet tied to a user (a QR code, an e-mail to an
        unknown address), the holder of the code. ShareNotFound otherwise (no oracle)."""
        now = self.clock.now_ms()

        async def read(conn: Conn) -> tuple[DeviceShare, str | None]:
            share = await self._get(conn, invite_code)
            parties = {share.from_user.id, share.to_user.id if share.to_user else caller.id}
            if caller.id not in parties:
                if share.mode is ShareMode.QRCODE:  # someone else answered it (as in _answer)
                    raise not_answerable(share.effective_state(now))
                raise ShareNotFound("share not found")
            device = await accounts.device_by_id(conn, share.device_id)
            return replace(share, state=share.effective_state(now)), device.name if device else None

        return await self.db.read(read)

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




# ---- access: what an accepted share gives, and what takes it away --------------------------


async def grant_access(
    tx: Conn, share: DeviceShare, device: Device, component_jid: str, now: int
) -> list[Notification]:
    """The accepted user gets the device's presence: a subscription in the device's
    account (whatever the user's own domain: cross-realm shares are keyed by the
    device), `to` on the roster item for the extension JID (named after the device),
    and the current state."""
    assert share.to_user is not None
    account = await accounts.get_account(tx, device.account_id)
    assert account is not None
    user = share.to_user
    # One extension JID shows one presence: a subscription to the same JID in another
    # realm would mix two extensions' states, so this one replaces it.
    for other in await subs.of_subscriber(tx, device.extension, XMPP_EVENT, user.jid):
        if other.realm != account.realm:
            await subs.remove(tx, other.realm, other.extension, other.event, user.jid)
    found, _, state = await subs.open_subscription(
        tx, account.realm, device.extension, XMPP_EVENT, user.jid, now
    )
    return [
        roster_grant(user.jid, extension_jid(device.extension, component_jid), "to", device.name),
        extension_presence(user.jid, device.extension, state.value, found.notify_sequence),
    ]


async def revoke_access(
    tx: Conn, share: DeviceShare, device: Device | None, component_jid: str, now: int
) -> list[Notification]:
    """Undo `grant_access` once the user holds no accepted share of the device: the
    subscription goes, presence ends (`unavailable`), the roster item loses `to`."""
    assert share.to_user is not None
    if device is None:
        return []
    if await shares.count_accepted(tx, device.id, share.to_user.id):
        return []  # another accepted share of this device still grants the user access
    account = await accounts.get_account(tx, device.account_id)
    assert account is not None
    user = share.to_user
    await subs.remove(tx, account.realm, device.extension, XMPP_EVENT, user.jid)
    return [
        extension_presence(user.jid, device.extension, None, presence_type="unavailable"),
        roster_revoke(user.jid, extension_jid(device.extension, component_jid), "to"),
    ]


async def end_device_shares(
    tx: Conn, device: Device, component_jid: str, now: int
) -> list[Notification]:
    """The device is being deleted, or loses its manager (DESIGN "Deleting ends
    access"): its pending and accepted shares turn `invalid`, both parties are told,
    and every accepted one's access is revoked. Call before deleting the device."""
    live = await shares.live_for_device(tx, device.id)
    notes: list[Notification] = []
    for share in live:
        await shares.update_state(tx, share.invite_code, share.state, ShareState.INVALID, now)
        notes += sharing_messages(share, device.name, "update", ShareState.INVALID.value)
    revoked = {s.to_user.id: s for s in live if s.state is ShareState.ACCEPT and s.to_user}
    for share in revoked.values():
        notes += await revoke_access(tx, share, device, component_jid, now)
    if live:
        log.info(
            "device %s: %d share(s) made invalid, access revoked for %d user(s)",
            device.id, len(live), len(revoked),
        )
    return notes


# Why a share ended when the invitee dropped the device from a stock XMPP client.
ENDED_BY_INVITEE = "ended by the invited user from an XMPP client"


async def end_share_by_invitee(
    tx: Conn, share: DeviceShare, component_jid: str, now: int
) -> list[Notification]:
    """The invitee unsubscribed from the device or removed it from its roster: the
    accepted share ends (`cancel`, with a reason saying so), both parties are told and
    the access goes, as a cancel would. [] if the share is no longer accepted."""
    if not await shares.update_state(
        tx, share.invite_code, ShareState.ACCEPT, ShareState.CANCEL, now, None, ENDED_BY_INVITEE
    ):
        return []
    done = replace(share, state=ShareState.CANCEL, reason=ENDED_BY_INVITEE, updated_at=now)
    device = await accounts.device_by_id(tx, share.device_id)
    notes = sharing_messages(done, device.name if device else None, "update")
    return notes + await revoke_access(tx, done, device, component_jid, now)


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
