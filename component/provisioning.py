"""Family 2 provisioning: accounts (tenants), their users and devices (Kazoo-shaped).

Only the admin token writes. A user's token reads its own account: the one whose
realm is the user's XMPP domain. Every user of that domain is a member of the
account, provisioned or not; provisioning adds Kazoo fields (username, presence_id,
e-mail), not membership (DESIGN "Consent rules"). Deleting a device, unprovisioning
its manager or deleting the account ends the access the device's shares gave, in
the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from component.actions import write_outbox
from component.clock import Clock
from component.commands import CreateAccount, CreateAccountUser, CreateDevice, Principal
from component.device_sharing import end_device_shares
from component.errors import BadRequest, Duplicate, Forbidden, NotFound
from component.model import (
    XMPP_EVENT,
    Account,
    AccountId,
    AccountUser,
    Device,
    DeviceId,
    User,
    UserId,
    jid_domain,
    new_account_id,
    normalise_domain,
    parse_bare_jid,
    parse_email,
)
from component.notifications import Notification, extension_presence
from storage import Conn, Database, accounts, users
from storage import subscriptions as subs

log = logging.getLogger(__name__)


def require_admin(caller: Principal) -> None:
    if not caller.is_admin:
        raise Forbidden("this needs the admin token")


def check_readable(caller: Principal, account: Account) -> None:
    if caller.user is not None and jid_domain(caller.user.jid) != account.realm:
        raise Forbidden("this token may only read its own account")


def ended_subscription(subscriber: str, extension: str) -> list[Notification]:
    """What a subscriber is told when the service ends its subscription: `unsubscribed`
    (RFC 6121 section 3.2: its server takes `to` off the roster item) and `unavailable`."""
    return [
        extension_presence(subscriber, extension, None, presence_type="unsubscribed"),
        extension_presence(subscriber, extension, None, presence_type="unavailable"),
    ]


class Provisioning:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        served_domains: frozenset[str],
        component_jid: str = "",
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.served_domains = served_domains
        self.component_jid = component_jid
        self.on_commit = on_commit

    # ---- accounts ----------------------------------------------------------------

    async def create_account(self, caller: Principal, cmd: CreateAccount) -> Account:
        require_admin(caller)
        try:
            realm = normalise_domain(cmd.realm)
        except BadRequest:
            realm = cmd.realm
        if realm not in self.served_domains:
            raise BadRequest(
                f"realm must be one of the served XMPP domains: {', '.join(sorted(self.served_domains))}",
                "realm",
                "enum",
            )
        account = Account(AccountId(new_account_id()), cmd.name.strip(), realm)
        now = self.clock.now_ms()

        async def insert(tx: Conn) -> None:
            if await accounts.account_for_realm(tx, realm) is not None:
                raise Duplicate(f"an account already has realm {realm}", "realm", "unique")
            await accounts.insert_account(tx, account, now)

        await self.db.write(insert)
        log.info("account %s created for realm %s", account.id, realm)
        return account

    async def list_accounts(self, caller: Principal) -> list[Account]:
        found = await self.db.read(accounts.list_accounts)
        if caller.user is None:
            return found
        return [a for a in found if a.realm == jid_domain(caller.user.jid)]

    async def account(self, caller: Principal, account_id: AccountId) -> Account:
        found = await self.db.read(lambda conn: accounts.get_account(conn, account_id))
        if found is None:
            raise NotFound(f"account {account_id} not found")
        check_readable(caller, found)
        return found

    async def delete_account(self, caller: Principal, account_id: AccountId) -> Account:
        """The tenant goes: its devices' shares end (pending ones `invalid`, accepted
        ones revoked), every subscription to its extensions ends (`unsubscribed`,
        `unavailable`), its states, users' Kazoo fields and devices are deleted."""
        require_admin(caller)
        account = await self.account(caller, account_id)
        now = self.clock.now_ms()

        async def delete(tx: Conn) -> int:
            notes: list[Notification] = []
            for device in await accounts.list_devices(tx, account.id):
                notes += await end_device_shares(tx, device, self.component_jid, now)
            ended = await subs.for_realm(tx, account.realm)
            for subscription in ended:
                notes += ended_subscription(subscription.subscriber, subscription.extension)
            await subs.remove_realm(tx, account.realm)
            await accounts.delete_account(tx, account.id)
            await write_outbox(tx, notes, now)
            return len(ended)

        ended = await self.db.write(delete)
        log.info(
            "account %s (realm %s) deleted; %d subscription(s) ended", account.id, account.realm, ended
        )
        self.on_commit()
        return account

    # ---- users -------------------------------------------------------------------

    async def create_user(
        self, caller: Principal, account_id: AccountId, cmd: CreateAccountUser
    ) -> AccountUser:
        require_admin(caller)
        account = await self.account(caller, account_id)
        jid = parse_bare_jid(f"{cmd.username}@{account.realm}", "username")
        username = jid.partition("@")[0]
        presence_id = cmd.presence_id.lower() if cmd.presence_id else None
        email = parse_email(cmd.email) if cmd.email else None
        now = self.clock.now_ms()

        async def provision(tx: Conn) -> User:
            user = await users.get_or_create(tx, jid, now)
            if email and await accounts.user_by_email(tx, email) is not None:
                raise Duplicate("another user has this e-mail address", "email", "unique")
            if not await accounts.upsert_account_user(
                tx, user.id, account.id, username, presence_id, now, email
            ):
                raise Duplicate(f"user {username} already exists", "username", "unique")
            return user

        user = await self.db.write(provision)
        log.info("user %s (%s) provisioned in account %s", user.id, jid, account.id)
        return AccountUser(user, account.id, username, presence_id, email)

    async def list_users(self, caller: Principal, account_id: AccountId) -> list[AccountUser]:
        """Every user of the realm the service knows, with Kazoo fields where provisioned."""
        account = await self.account(caller, account_id)
        return await self.db.read(lambda conn: accounts.members(conn, account))

    async def user(self, caller: Principal, account_id: AccountId, user_id: UserId) -> AccountUser:
        """A member of the account: any known user of its realm, provisioned or not."""
        account = await self.account(caller, account_id)
        found = await self.db.read(lambda conn: accounts.member(conn, account, user_id))
        if found is None:
            raise NotFound(f"user {user_id} not found")
        return found

    async def delete_user(self, caller: Principal, account_id: AccountId, user_id: UserId) -> AccountUser:
        """Unprovision: the Kazoo fields go, and so does the user's management of its
        devices (their shares end: pending ones `invalid`, accepted ones revoked). The
        user stays a member of the realm while its XMPP account exists."""
        require_admin(caller)
        found = await self.user(caller, account_id, user_id)
        now = self.clock.now_ms()

        async def unprovision(tx: Conn) -> int:
            notes: list[Notification] = []
            managed = await accounts.devices_owned_by(tx, account_id, user_id)
            for device in managed:
                notes += await end_device_shares(tx, device, self.component_jid, now)
            await accounts.delete_account_user(tx, account_id, user_id)
            await write_outbox(tx, notes, now)
            return len(managed)

        managed = await self.db.write(unprovision)
        log.info(
            "user %s (%s) unprovisioned from account %s; %d device(s) left without a manager",
            user_id, found.user.jid, account_id, managed,
        )
        self.on_commit()
        return found

    # ---- devices -----------------------------------------------------------------

    async def create_device(
        self, caller: Principal, account_id: AccountId, cmd: CreateDevice
    ) -> Device:
        require_admin(caller)
        account = await self.account(caller, account_id)
        device = Device(
            DeviceId(new_account_id()),
            account.id,
            cmd.name.strip(),
            cmd.sip_username.lower(),
            cmd.presence_id.lower() if cmd.presence_id else None,
            cmd.owner_id,
        )
        now = self.clock.now_ms()

        async def insert(tx: Conn) -> int:
            if cmd.owner_id is not None and (await accounts.member(tx, account, cmd.owner_id)) is None:
                raise NotFound(
                    f"owner {cmd.owner_id} is not a user of realm {account.realm}", "owner_id", "exists"
                )
            if await accounts.sip_username_taken(tx, account.id, device.sip_username):
                raise Duplicate(
                    f"a device already has SIP username {device.sip_username}", "sip.username", "unique"
                )
            if await accounts.devices_with_extension(tx, account.realm, device.extension):
                raise Duplicate(
                    f"a device already has extension {device.extension}", "presence_id", "unique"
                )
            await accounts.insert_device(tx, device, now)
            if device.owner_id is None:
                return 0
            # Managed from now on: whoever watched the extension before, other than its
            # manager, was not invited (DESIGN "Managed devices need an invitation").
            notes: list[Notification] = []
            owner = await users.by_id(tx, device.owner_id)
            for found in await subs.for_extension(tx, account.realm, device.extension):
                if owner is not None and found.subscriber == owner.jid:
                    continue
                await subs.remove(tx, found.realm, found.extension, XMPP_EVENT, found.subscriber)
                notes += ended_subscription(found.subscriber, found.extension)
            await write_outbox(tx, notes, now)
            return len(notes) // 2

        ended = await self.db.write(insert)
        log.info(
            "device %s (%s, extension %s) created in account %s%s",
            device.id, device.name, device.extension, account.id,
            f"; {ended} uninvited subscription(s) ended" if ended else "",
        )
        if ended:
            self.on_commit()
        return device

    async def list_devices(self, caller: Principal, account_id: AccountId) -> list[Device]:
        await self.account(caller, account_id)
        return await self.db.read(lambda conn: accounts.list_devices(conn, account_id))

    async def device(self, caller: Principal, account_id: AccountId, device_id: DeviceId) -> Device:
        await self.account(caller, account_id)
        found = await self.db.read(lambda conn: accounts.get_device(conn, account_id, device_id))
        if found is None:
            raise NotFound(f"device {device_id} not found")
        return found

    async def delete_device(self, caller: Principal, account_id: AccountId, device_id: DeviceId) -> Device:
        """The device goes, and with it the access its shares gave: pending shares turn
        `invalid`, accepted ones are revoked (both parties told), in one transaction."""
        require_admin(caller)
        found = await self.device(caller, account_id, device_id)
        now = self.clock.now_ms()

        async def delete(tx: Conn) -> None:
            device = await accounts.get_device(tx, account_id, device_id)
            if device is None:
                raise NotFound(f"device {device_id} not found")
            notes = await end_device_shares(tx, device, self.component_jid, now)
            await accounts.delete_device(tx, account_id, device_id)
            await write_outbox(tx, notes, now)

        await self.db.write(delete)
        log.info("device %s removed from account %s", device_id, account_id)
        self.on_commit()
        return found
