"""Family 2: presence subscriptions to extensions, and their presence state.

An XMPP user subscribes to `{extension}@{component}` with an ordinary presence
subscription; the extension belongs to the realm (account) of the subscriber's
domain. Setting or resetting a state persists it and notifies every subscriber,
through the outbox, in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from component.actions import write_outbox
from component.clock import Clock
from component.commands import Principal, StateChange
from component.errors import BadRequest, Forbidden, NotFound
from component.model import (
    Account,
    AccountId,
    BareJid,
    DeviceId,
    PresenceState,
    Subscription,
    SubscriptionId,
    UserId,
    jid_domain,
    new_account_id,
    parse_extension,
)
from component.notifications import Notification, extension_presence
from component.provisioning import Provisioning, require_admin
from storage import Conn, Database, accounts
from storage import subscriptions as subs

log = logging.getLogger(__name__)

XMPP_EVENT = "presence"  # the Kazoo event name of subscriptions made over XMPP


async def open_subscription(
    tx: Conn, realm: str, extension: str, subscriber: BareJid, now: int
) -> tuple[Subscription, bool, Notification]:
    """Record (or confirm) `subscriber`'s subscription to the extension, counting the
    state notification it is owed now.

    Returns the subscription as stored, whether it is new, and that state presence
    (for the caller to put in the outbox after whatever must precede it).
    """
    created = await subs.add(
        tx,
        Subscription(
            SubscriptionId(new_account_id()), realm, extension, XMPP_EVENT, subscriber,
            now, 0, None, 1,
        ),
    )
    found = await subs.find(tx, realm, extension, XMPP_EVENT, subscriber)
    assert found is not None
    state = await subs.state_of(tx, realm, extension)
    sequence = await subs.record_notification(tx, found.id, state.value)
    found = replace(found, notify_sequence=sequence, notify_body=state.value)
    return found, created, extension_presence(subscriber, extension, state.value, sequence)


class PresenceStates:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        served_domains: frozenset[str],
        provisioning: Provisioning,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.served_domains = served_domains
        self.provisioning = provisioning
        self.on_commit = on_commit

    # ---- subscriptions over XMPP --------------------------------------------------

    def _realm_of(self, subscriber: BareJid) -> str:
        realm = jid_domain(subscriber)
        if realm not in self.served_domains:
            raise Forbidden(f"users of {realm} are not served here")
        return realm

    async def subscribe(self, subscriber: BareJid, extension: str) -> Subscription:
        """Record (or confirm) a subscription; the subscriber gets `subscribed`, then the state."""
        realm = self._realm_of(subscriber)
        extension = parse_extension(extension)
        now = self.clock.now_ms()

        async def record(tx: Conn) -> tuple[Subscription, bool]:
            found, created, state_note = await open_subscription(
                tx, realm, extension, subscriber, now
            )
            await write_outbox(
                tx,
                [
                    extension_presence(subscriber, extension, None, presence_type="subscribed"),
                    state_note,
                ],
                now,
            )
            return found, created

        found, created = await self.db.write(record)
        log.info(
            "subscription %s %s: %s to extension %s (realm %s)",
            found.id, "created" if created else "confirmed", subscriber, extension, realm,
        )
        self.on_commit()
        return found

    async def unsubscribe(self, subscriber: BareJid, extension: str) -> bool:
        """Forget the subscription; the subscriber gets `unavailable` from the extension."""
        realm = self._realm_of(subscriber)
        extension = parse_extension(extension)
        now = self.clock.now_ms()

        async def forget(tx: Conn) -> bool:
            removed = await subs.remove(tx, realm, extension, XMPP_EVENT, subscriber)
            if removed:
                await write_outbox(
                    tx,
                    [extension_presence(subscriber, extension, None, presence_type="unavailable")],
                    now,
                )
            return removed

        removed = await self.db.write(forget)
        if removed:
            log.info("subscription removed: %s from extension %s (realm %s)", subscriber, extension, realm)
            self.on_commit()
        return removed

    async def probe(self, subscriber: BareJid, extension: str) -> PresenceState | None:
        """The extension's state for a subscriber's probe; None if not subscribed."""
        realm = self._realm_of(subscriber)
        extension = parse_extension(extension)

        async def state(conn: Conn) -> PresenceState | None:
            if await subs.find(conn, realm, extension, XMPP_EVENT, subscriber) is None:
                return None
            return await subs.state_of(conn, realm, extension)

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
