"""Family 2: presence subscriptions to extensions, and their presence state.

An XMPP user subscribes to `{extension}@{component}` with an ordinary presence
subscription. The extension is the one of the realm (account) of the subscriber's
domain, unless the subscriber already watches that JID in another realm (a device
shared across served domains is keyed by the device's account). A device with a
manager is watched by invitation only (DESIGN "Consent rules"). Setting or
resetting a state persists it and notifies every subscriber, through the outbox,
in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from component.actions import write_outbox
from component.clock import Clock
from component.commands import Principal, StateChange
from component.device_sharing import end_share_by_invitee
from component.errors import BadRequest, Forbidden, LimitReached, NotFound
from component.model import (
    XMPP_EVENT,
    Account,
    AccountId,
    BareJid,
    DeviceId,
    DeviceShare,
    PresenceState,
    Subscription,
    User,
    UserId,
    jid_domain,
    parse_extension,
)
from component.notifications import Notification, extension_presence
from component.provisioning import Provisioning, require_admin
from storage import Conn, Database, accounts, shares, users
from storage import subscriptions as subs

log = logging.getLogger(__name__)

__all__ = ["XMPP_EVENT", "PresenceStates", "held_shares", "subscriptions_of"]


async def subscriptions_of(conn: Conn, subscriber: BareJid, extension: str) -> list[Subscription]:
    """The subscriber's subscriptions to `{extension}@{component}`, its own realm first."""
    found = await subs.of_subscriber(conn, extension, XMPP_EVENT, subscriber)
    own = jid_domain(subscriber)
    return sorted(found, key=lambda s: s.realm != own)


async def held_shares(conn: Conn, user: User, extension: str) -> list[tuple[DeviceShare, str]]:
    """Accepted shares the user holds of devices with this extension, with each
    device's realm."""
    held = []
    for share in await shares.held_by(conn, user.id):
        device = await accounts.device_by_id(conn, share.device_id)
        if device is not None and device.extension == extension:
            account = await accounts.get_account(conn, device.account_id)
            if account is not None:
                held.append((share, account.realm))
    return held


async def may_watch(conn: Conn, realm: str, extension: str, user: User | None) -> bool:
    """DESIGN "Managed devices need an invitation": a device with a manager is watched
    by its manager and by holders of an accepted share only; other extensions
    (parking slots, BLF keys) are open to the users of their realm, as in Kazoo."""
    managed = [d for d in await accounts.devices_with_extension(conn, realm, extension) if d.owner_id]
    if not managed:
        return True
    if user is None:
        return False
    for device in managed:
        if device.owner_id == user.id or await shares.count_accepted(conn, device.id, user.id):
            return True
    return False


class PresenceStates:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        served_domains: frozenset[str],
        provisioning: Provisioning,
        on_commit: Callable[[], None] = lambda: None,
        component_jid: str = "",
        max_subscriptions_per_user: int = 500,
    ) -> None:
        self.db = db
        self.clock = clock
        self.served_domains = served_domains
        self.provisioning = provisioning
        self.on_commit = on_commit
        self.component_jid = component_jid or provisioning.component_jid
        self.max_subscriptions_per_user = max_subscriptions_per_user

    # ---- subscriptions over XMPP --------------------------------------------------

    def _check_served(self, subscriber: BareJid) -> None:
        if jid_domain(subscriber) not in self.served_domains:
            raise Forbidden(f"users of {jid_domain(subscriber)} are not served here")

    async def subscribe(self, subscriber: BareJid, extension: str) -> Subscription:
        """Record (or confirm) a subscription; the subscriber gets `subscribed`, then the
        state. Refused (Forbidden: the adapter answers `unsubscribed`, nothing is
        recorded) for a managed device the subscriber was not invited to."""
        self._check_served(subscriber)
        extension = parse_extension(extension)
        now = self.clock.now_ms()

        async def record(tx: Conn) -> tuple[Subscription, bool]:
            user = await users.by_jid(tx, subscriber)
            realm = await self._realm_for(tx, subscriber, user, extension)
            if not await may_watch(tx, realm, extension, user):
                raise Forbidden(
                    f"extension {extension} is a managed device: it is shared by invitation only"
                )
            found, created, state = await subs.open_subscription(
                tx, realm, extension, XMPP_EVENT, subscriber, now
            )
            if created and await subs.count_of_subscriber(tx, subscriber) > self.max_subscriptions_per_user:
                raise LimitReached(
                    f"at most {self.max_subscriptions_per_user} subscriptions per user"
                )
            await write_outbox(
                tx,
                [
                    extension_presence(subscriber, extension, None, presence_type="subscribed"),
                    extension_presence(subscriber, extension, state.value, found.notify_sequence),
                ],
                now,
            )
            return found, created

        found, created = await self.db.write(record)
        log.info(
            "subscription %s %s: %s to extension %s (realm %s)",
            found.id, "created" if created else "confirmed", subscriber, extension, found.realm,
        )
        self.on_commit()
        return found

    async def _realm_for(
        self, conn: Conn, subscriber: BareJid, user: User | None, extension: str
    ) -> str:
        """Which realm's extension a subscribe is for: the one the subscriber already
        watches under this JID, else the realm of a device with this extension shared
        with it, else its own realm."""
        existing = await subscriptions_of(conn, subscriber, extension)
        if existing:
            return existing[0].realm
        if user is not None:
            held = await held_shares(conn, user, extension)
            if held:
                return held[0][1]
        return jid_domain(subscriber)

    async def unsubscribe(self, subscriber: BareJid, extension: str) -> bool:
        """Forget the subscription; the subscriber gets `unavailable` from the extension.
        A subscription an accepted share gave ends that share, as the invitee's choice
        (DESIGN "Consent ends from either side")."""
        self._check_served(subscriber)
        extension = parse_extension(extension)
        now = self.clock.now_ms()

        async def forget(tx: Conn) -> int:
            user = await users.by_jid(tx, subscriber)
            held = await held_shares(tx, user, extension) if user is not None else []
            notes: list[Notification] = []
            removed = 0
            for share, _realm in held:
                ended = await end_share_by_invitee(tx, share, self.component_jid, now)
                notes += ended
                removed += bool(ended)
            shared_realms = {realm for _, realm in held}
            for found in await subscriptions_of(tx, subscriber, extension):
                if found.realm in shared_realms:
                    continue  # gone with the share
                await subs.remove(tx, found.realm, extension, XMPP_EVENT, subscriber)
                notes.append(extension_presence(subscriber, extension, None, presence_type="unavailable"))
                removed += 1
            await write_outbox(tx, notes, now)
            return removed

        removed = await self.db.write(forget)
        if removed:
            log.info("subscription removed: %s from extension %s", subscriber, extension)
            self.on_commit()
        return removed > 0

    async def probe(self, subscriber: BareJid, extension: str) -> PresenceState | None:
        """The extension's state for a subscriber's probe; None if not subscribed."""
        self._check_served(subscriber)
        extension = parse_extension(extension)

        async def state(conn: Conn) -> PresenceState | None:
            found = await subscriptions_of(conn, subscriber, extension)
            if not found:
                return None
            return await subs.state_of(conn, found[0].realm, extension)

        return await self.db.read(state)

    # ---- state changes -------------------------------------------------------------

    async def change_extension(
        self, caller: Principal, account_id: AccountId, extension: str, change: StateChange
    ) -> list[str]:
        account = await self._writable_account(caller, account_id)
        return await self._apply(account, [parse_extension(extension)], change)

    async def change_device(
        self, caller: Principal, account_id: AccountId, device_id: DeviceId, change: StateChange
    ) -> list[str]:
        account = await self._writable_account(caller, account_id)
        device = await self.provisioning.device(caller, account_id, device_id)
        return await self._apply(account, [device.extension], change)

    async def change_user(
        self, caller: Principal, account_id: AccountId, user_id: UserId, change: StateChange
    ) -> list[str]:
        """The user's presence_id, else each device the user owns (Kazoo's fallback)."""
        account = await self._writable_account(caller, account_id)
        user = await self.provisioning.user(caller, account_id, user_id)
        if user.presence_id:
            extensions = [user.presence_id]
        else:
            owned = await self.db.read(
                lambda conn: accounts.devices_owned_by(conn, account_id, user_id)
            )
            extensions = [d.extension for d in owned]
        if not extensions:
            raise BadRequest(
                "the user has no presence_id and owns no device", "presence_id", "required"
            )
        return await self._apply(account, extensions, change)

    async def change_by_realm(self, realm: str, extension: str, change: StateChange) -> list[str]:
        """For XMPP admins: the realm is the admin's own domain."""
        account = await self.db.read(lambda conn: accounts.account_for_realm(conn, realm))
        if account is None:
            raise NotFound(f"no account has realm {realm}")
        return await self._apply(account, [parse_extension(extension)], change)

    async def _writable_account(self, caller: Principal, account_id: AccountId) -> Account:
        require_admin(caller)
        return await self.provisioning.account(caller, account_id)

    async def _apply(self, account: Account, extensions: list[str], change: StateChange) -> list[str]:
        state = PresenceState(change.target_state)
        now = self.clock.now_ms()

        async def apply(tx: Conn) -> int:
            notified = 0
            for extension in dict.fromkeys(extensions):
                await subs.set_state(tx, account.realm, extension, state, now)
                notes = await self._notify_all(tx, account.realm, extension, state)
                notified += len(notes)
                await write_outbox(tx, notes, now)
            return notified

        notified = await self.db.write(apply)
        log.info(
            "presence %s: extension(s) %s of account %s -> %s (%d subscriber notification(s))",
            change.action.value, ", ".join(extensions), account.id, state.value, notified,
        )
        self.on_commit()
        return extensions

    async def _notify_all(
        self, tx: Conn, realm: str, extension: str, state: PresenceState
    ) -> list[Notification]:
        notes = []
        for subscription in await subs.for_extension(tx, realm, extension):
            sequence = await subs.record_notification(tx, subscription.id, state.value)
            notes.append(extension_presence(subscription.subscriber, extension, state.value, sequence))
        return notes

    # ---- listing -----------------------------------------------------------------

    async def watched_by(self, subscriber: BareJid, limit: int = 100) -> list[str]:
        """The extensions a user watches (its disco#items on the component list them)."""
        return await self.db.read(
            lambda conn: subs.extensions_of_subscriber(conn, subscriber, XMPP_EVENT, limit)
        )

    async def listing(
        self,
        caller: Principal,
        account_id: AccountId,
        extension: str | None = None,
        event: str | None = None,
    ) -> list[Subscription]:
        account = await self.provisioning.account(caller, account_id)
        if extension is not None:
            wanted = parse_extension(extension)
            found = await self.db.read(lambda conn: subs.for_extension(conn, account.realm, wanted))
            return [s for s in found if event is None or s.event == event]
        return await self.db.read(lambda conn: subs.for_realm(conn, account.realm, event))
