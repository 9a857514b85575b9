"""Family 2 provisioning: accounts (tenants), their users and devices (Kazoo-shaped).

Only the admin token writes. A user's token reads its own account: the one whose
realm is the user's XMPP domain.
"""

from __future__ import annotations

import logging

from component.clock import Clock
from component.commands import CreateAccount, CreateAccountUser, CreateDevice, Principal
from component.errors import BadRequest, Duplicate, Forbidden, NotFound
from component.model import (
    Account,
    AccountId,
    AccountUser,
    Device,
    DeviceId,
    User,
    UserId,
    jid_domain,
    new_account_id,
    parse_bare_jid,
    parse_email,
)
from storage import Conn, Database, accounts, users

log = logging.getLogger(__name__)


def require_admin(caller: Principal) -> None:
    if not caller.is_admin:
        raise Forbidden("this needs the admin token")


def check_readable(caller: Principal, account: Account) -> None:
    if caller.user is not None and jid_domain(caller.user.jid) != account.realm:
        raise Forbidden("this token may only read its own account")


class Provisioning:
    def __init__(self, db: Database, clock: Clock, served_domains: frozenset[str]) -> None:
        self.db = db
        self.clock = clock
        self.served_domains = served_domains

    # ---- accounts ----------------------------------------------------------------

    async def create_account(self, caller: Principal, cmd: CreateAccount) -> Account:
        require_admin(caller)
        realm = cmd.realm.strip().lower()
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
        await self.account(caller, account_id)
        return await self.db.read(lambda conn: accounts.list_account_users(conn, account_id))

    async def user(self, caller: Principal, account_id: AccountId, user_id: UserId) -> AccountUser:
        await self.account(caller, account_id)
        found = await self.db.read(lambda conn: accounts.get_account_user(conn, account_id, user_id))
        if found is None:
            raise NotFound(f"user {user_id} not found")
        return found

    async def delete_user(self, caller: Principal, account_id: AccountId, user_id: UserId) -> AccountUser:
        require_admin(caller)
        found = await self.user(caller, account_id, user_id)
        await self.db.write(lambda tx: accounts.delete_account_user(tx, account_id, user_id))
        log.info("user %s (%s) removed from account %s", user_id, found.user.jid, account_id)
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

        async def insert(tx: Conn) -> None:
            if cmd.owner_id is not None and (
                await accounts.get_account_user(tx, account.id, cmd.owner_id) is None
            ):
                raise NotFound(f"owner {cmd.owner_id} is not a user of this account", "owner_id", "exists")
            if await accounts.sip_username_taken(tx, account.id, device.sip_username):
                raise Duplicate(
                    f"a device already has SIP username {device.sip_username}", "sip.username", "unique"
                )
            await accounts.insert_device(tx, device, now)

        await self.db.write(insert)
        log.info(
            "device %s (%s, extension %s) created in account %s",
            device.id, device.name, device.extension, account.id,
        )
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
        require_admin(caller)
        found = await self.device(caller, account_id, device_id)
        await self.db.write(lambda tx: accounts.delete_device(tx, account_id, device_id))
        log.info("device %s removed from account %s", device_id, account_id)
        return found
