"""Numbered schema upgrades. Each runs in one transaction and bumps `schema_version`.

Never edit a released step: add a new one. The service refuses to start on a
database whose version is newer than the last step here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable

from storage.conn import Conn

Upgrade = Callable[[Conn], Awaitable[None]]


async def _run_script(conn: Conn, script: str) -> None:
    """Run statements one by one: `executescript` would COMMIT the migration's
    transaction before starting, losing its atomicity."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            await conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError("migration script ends with an incomplete statement")


async def _v1_initial(conn: Conn) -> None:
    # Times are integer milliseconds since the epoch (UTC).
    await _run_script(
        conn,
        """
        CREATE TABLE users (
            id          TEXT PRIMARY KEY,           -- 24 lowercase hex
            jid         TEXT NOT NULL UNIQUE,       -- normalised bare JID
            created_at  INTEGER NOT NULL
        ) WITHOUT ROWID;

        CREATE TABLE tokens (
            hash        BLOB PRIMARY KEY,           -- SHA-256 of the token; the token itself is never stored
            user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            created_at  INTEGER NOT NULL,
            expires_at  INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX tokens_by_expiry ON tokens(expires_at);

        -- Only live requests are stored: declined, canceled and interrupted ones are deleted.
        CREATE TABLE presence_requests (
            id                TEXT PRIMARY KEY,
            from_user_id      TEXT NOT NULL REFERENCES users(id),
            to_user_id        TEXT NOT NULL REFERENCES users(id),
            status            TEXT NOT NULL CHECK (status IN ('pending', 'accepted')),
            request_date      INTEGER NOT NULL,
            acceptation_date  INTEGER,
            CHECK (from_user_id <> to_user_id)
        ) WITHOUT ROWID;
        -- At most one live request per direction: the 409 rule, enforced by the schema too.
        CREATE UNIQUE INDEX presence_requests_by_pair ON presence_requests(from_user_id, to_user_id);
        -- List queries: every (box, status filter, order) is a range scan on one of these.
        CREATE INDEX presence_requests_received ON presence_requests(to_user_id, request_date, id);
        CREATE INDEX presence_requests_received_by_status
            ON presence_requests(to_user_id, status, request_date, id);
        CREATE INDEX presence_requests_sent ON presence_requests(from_user_id, request_date, id);
        CREATE INDEX presence_requests_sent_by_status
            ON presence_requests(from_user_id, status, request_date, id);

        -- Transactional outbox: written in the same transaction as the state change,
        -- deleted once the XMPP server has taken the notification.
        CREATE TABLE outbox (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            kind        TEXT NOT NULL,              -- 'message' or 'roster'
            recipient   TEXT NOT NULL,              -- bare JID the stanza goes to
            payload     TEXT NOT NULL,              -- JSON, built by component.notifications
            created_at  INTEGER NOT NULL
        );
        """
    )


async def _v2_presence_subscriptions(conn: Conn) -> None:
    """Family 2 (Kazoo): accounts, their users and devices, extension states, subscriptions."""
    await _run_script(
        conn,
        """
        CREATE TABLE accounts (
            id          TEXT PRIMARY KEY,           -- 32 lowercase hex
            name        TEXT NOT NULL,
            realm       TEXT NOT NULL UNIQUE,       -- a served XMPP domain
            created_at  INTEGER NOT NULL
        ) WITHOUT ROWID;

        -- A provisioned user: the family 1 user (same id) plus its Kazoo fields.
        CREATE TABLE account_users (
            user_id     TEXT PRIMARY KEY REFERENCES users(id),
            account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            username    TEXT NOT NULL,
            presence_id TEXT,
            created_at  INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX account_users_by_account ON account_users(account_id, created_at, user_id);

        CREATE TABLE devices (
            id            TEXT PRIMARY KEY,         -- 32 lowercase hex
            account_id    TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            name          TEXT NOT NULL,
            sip_username  TEXT NOT NULL,
            presence_id   TEXT,
            owner_id      TEXT REFERENCES users(id),  -- the device's manager
            created_at    INTEGER NOT NULL,
            UNIQUE (account_id, sip_username)
        ) WITHOUT ROWID;
        CREATE INDEX devices_by_account ON devices(account_id, created_at, id);
        CREATE INDEX devices_by_owner ON devices(owner_id);

        -- Extensions are scoped by realm: `101@component` subscribed from example.org
        -- and from example.net are two extensions of two accounts. No row = terminated.
        CREATE TABLE extension_states (
            realm       TEXT NOT NULL,
            extension   TEXT NOT NULL,
            state       TEXT NOT NULL CHECK (state IN ('confirmed', 'early', 'terminated')),
            updated_at  INTEGER NOT NULL,
            PRIMARY KEY (realm, extension)
        ) WITHOUT ROWID;

        CREATE TABLE subscriptions (
            id               TEXT PRIMARY KEY,
            realm            TEXT NOT NULL,
            extension        TEXT NOT NULL,
            event            TEXT NOT NULL,          -- 'presence' for XMPP subscriptions
            subscriber       TEXT NOT NULL,          -- bare JID
            created_at       INTEGER NOT NULL,
            notify_sequence  INTEGER NOT NULL DEFAULT 0,
            notify_body      TEXT,
            version          INTEGER NOT NULL DEFAULT 1,
            UNIQUE (realm, extension, event, subscriber)
        ) WITHOUT ROWID;
        CREATE INDEX subscriptions_by_subscriber ON subscriptions(subscriber);
        """,
    )


async def _v3_device_sharing(conn: Conn) -> None:
    """Family 3 (Xlink): device shares, e-mail addresses of users, and the mail outbox."""
    await _run_script(
        conn,
        """
        -- Set by provisioning (the admin vouches for it): how e-mail shares find a user.
        ALTER TABLE account_users ADD COLUMN email TEXT;
        CREATE UNIQUE INDEX account_users_by_email ON account_users(email) WHERE email IS NOT NULL;

        CREATE TABLE device_shares (
            invite_code         TEXT PRIMARY KEY,       -- 192 random bits, URL-safe
            device_id           TEXT NOT NULL,          -- kept when the device is deleted
            from_user_id        TEXT NOT NULL REFERENCES users(id),
            to_user_id          TEXT REFERENCES users(id),
            to_email            TEXT,
            mode                TEXT NOT NULL CHECK (mode IN ('app', 'qrcode', 'email')),
            authority           TEXT NOT NULL,
            state               TEXT NOT NULL
                CHECK (state IN ('pending', 'accept', 'deny', 'cancel', 'overtime', 'invalid')),
            create_date         INTEGER NOT NULL,
            expire_date         INTEGER NOT NULL,
            reason              TEXT,
            updated_at          INTEGER NOT NULL,
            hidden_by_sender    INTEGER NOT NULL DEFAULT 0,
            hidden_by_receiver  INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;
        CREATE INDEX device_shares_sent ON device_shares(from_user_id, create_date);
        CREATE INDEX device_shares_received ON device_shares(to_user_id, create_date);
        CREATE INDEX device_shares_by_device ON device_shares(device_id, state);
        CREATE INDEX device_shares_expiring ON device_shares(state, expire_date);

        -- E-mails to send, committed with the share that needs them.
        CREATE TABLE mail_outbox (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            recipient   TEXT NOT NULL,
            subject     TEXT NOT NULL,
            body        TEXT NOT NULL,
            attempts    INTEGER NOT NULL DEFAULT 0,
            next_try_at INTEGER NOT NULL,
            created_at  INTEGER NOT NULL
        );
        CREATE INDEX mail_outbox_due ON mail_outbox(next_try_at);
        """,
    )


UPGRADES: list[Upgrade] = [_v1_initial, _v2_presence_subscriptions, _v3_device_sharing]
