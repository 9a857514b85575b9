"""Numbered schema upgrades. Each runs in one transaction and bumps `schema_version`.

Never edit a released step: add a new one. The service refuses to start on a
database whose version is newer than the last step here.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable

from component.errors import BadRequest
from component.model import parse_bare_jid
from storage import dialect
from storage.conn import Conn

log = logging.getLogger(__name__)

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


async def _v4_consent(conn: Conn) -> None:
    """Consent that holds (issue #9): one identity per account, rosters that belong to
    their users, realm membership by domain.

    - users.domain: every user of a served domain is a member of the account whose
      realm it is; the listing of an account's users is a range scan of this index.
    - JIDs re-normalised with the server's stringprep profiles (component.model):
      `carol\u200b@` and `carol@` were two users; now they are one (the older id is
      kept, the other's requests, tokens, shares and subscriptions move to it).
    - roster_items: what the service did to each roster item it touched, so that an
      item it created can be removed once it holds no direction, and a direction the
      user removed from a stock client can be noticed (component.rosters).
    - outbox roster rows change from whole items to one direction each (added or
      removed); rows still queued at upgrade are converted in order.
    """
    await _run_script(
        conn,
        """
        ALTER TABLE users ADD COLUMN domain TEXT NOT NULL DEFAULT '';
        UPDATE users SET domain = substr(jid, instr(jid, '@') + 1);
        CREATE INDEX users_by_domain ON users(domain, created_at, id);

        -- Per (owner, contact): `granted` is the part of the item's subscription the
        -- service added for a consent and last applied (none/to/from/both); `created`
        -- says the service created the item (it removes it once no direction is left).
        -- `version` moves with every change the dispatcher applies.
        CREATE TABLE roster_items (
            owner       TEXT NOT NULL,              -- bare JID whose roster holds the item
            contact     TEXT NOT NULL,              -- the item's JID
            created     INTEGER NOT NULL DEFAULT 0,
            granted     TEXT NOT NULL DEFAULT 'none'
                CHECK (granted IN ('none', 'to', 'from', 'both')),
            version     INTEGER NOT NULL DEFAULT 1,
            updated_at  INTEGER NOT NULL,
            PRIMARY KEY (owner, contact)
        ) WITHOUT ROWID;

        -- Roster rows still queued for a user: the roster check skips items in flight.
        CREATE INDEX outbox_roster_by_recipient ON outbox(recipient) WHERE kind = 'roster';

        -- Subscriptions of one subscriber to one extension JID, whatever the realm.
        CREATE INDEX subscriptions_by_subscriber_extension ON subscriptions(subscriber, extension);
        -- Shares a user holds, by state (managed-device subscriptions, roster checks).
        CREATE INDEX device_shares_held ON device_shares(to_user_id, state);
        -- A realm's devices by extension (who may subscribe to it).
        CREATE INDEX devices_by_extension ON devices(account_id, COALESCE(presence_id, sip_username));
        """,
    )
    await _renormalise_users(conn)
    await _convert_roster_rows(conn)


async def _renormalise_users(conn: Conn) -> None:
    async with conn.execute("SELECT id, jid FROM users ORDER BY created_at, id") as cur:
        rows = [(r[0], r[1]) for r in await cur.fetchall()]
    renamed = merged = unparsable = 0
    for user_id, jid in rows:
        try:
            norm = parse_bare_jid(jid)
        except BadRequest:
            unparsable += 1  # the server refuses it too: nobody can log in as it
            continue
        if norm == jid:
            continue
        async with conn.execute("SELECT id FROM users WHERE jid = ?", (norm,)) as cur:
            other = await cur.fetchone()
        if other is None:
            await conn.execute(
                "UPDATE users SET jid = ?, domain = ? WHERE id = ?",
                (norm, norm.partition("@")[2], user_id),
            )
            renamed += 1
        else:
            await _merge_user(conn, user_id, other[0])
            merged += 1
        for sql in (
            "UPDATE OR IGNORE subscriptions SET subscriber = ?1 WHERE subscriber = ?2",
            "DELETE FROM subscriptions WHERE subscriber = ?2",
            "UPDATE outbox SET recipient = ?1 WHERE recipient = ?2",
        ):
            await conn.execute(sql, (norm, jid))
    if renamed or merged or unparsable:
        log.info(
            "storage: JIDs normalised: %d renamed, %d merged into the same account's user,"
            " %d left as they were (not valid JIDs)",
            renamed, merged, unparsable,
        )


async def _merge_user(conn: Conn, old: str, new: str) -> None:
    """Move everything of user `old` to `new` (the same account), then delete `old`."""
    for sql in (
        "UPDATE tokens SET user_id = ?1 WHERE user_id = ?2",
        # One live request per direction and pair: the older user's request wins.
        "UPDATE OR IGNORE presence_requests SET from_user_id = ?1"
        " WHERE from_user_id = ?2 AND to_user_id <> ?1",
        "UPDATE OR IGNORE presence_requests SET to_user_id = ?1"
        " WHERE to_user_id = ?2 AND from_user_id <> ?1",
        "DELETE FROM presence_requests WHERE from_user_id = ?2 OR to_user_id = ?2",
        "UPDATE OR IGNORE account_users SET user_id = ?1 WHERE user_id = ?2",
        "DELETE FROM account_users WHERE user_id = ?2",
        "UPDATE devices SET owner_id = ?1 WHERE owner_id = ?2",
        "UPDATE device_shares SET from_user_id = ?1 WHERE from_user_id = ?2",
        "UPDATE device_shares SET to_user_id = ?1 WHERE to_user_id = ?2",
        "DELETE FROM users WHERE id = ?2",
    ):
        await conn.execute(sql, (new, old))


# Whole-item roster rows of schema 3 -> one row per direction (same effect, in order).
_LEGACY_ROSTER = {
    "both": (("to", "add"), ("from", "add")),
    "to": (("to", "add"), ("from", "remove")),
    "from": (("from", "add"), ("to", "remove")),
    "remove": (("to", "remove"), ("from", "remove")),
}


async def _convert_roster_rows(conn: Conn) -> None:
    async with conn.execute(
        "SELECT id, recipient, payload, created_at FROM outbox WHERE kind = 'roster' ORDER BY id"
    ) as cur:
        rows = await cur.fetchall()
    for row_id, recipient, payload, created_at in rows:
        item = json.loads(payload)
        await conn.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
        for direction, op in _LEGACY_ROSTER.get(item.get("subscription"), ()):
            new = {"jid": item["jid"], "direction": direction, "op": op}
            if op == "add" and item.get("name"):
                new["name"] = item["name"]
            await conn.execute(
                "INSERT INTO outbox (kind, recipient, payload, created_at) VALUES ('roster', ?, ?, ?)",
                (recipient, json.dumps(new, separators=(",", ":")), created_at),
            )


async def _v5_delivery_attempts(conn: Conn) -> None:
    """Hardening (issue #10). A notification that cannot be delivered never blocks the
    rows behind it: attempts and a retry time per outbox row, rows the stream was lost
    with, and a dead-letter table for both outboxes (XMPP and mail). Growth is bounded:
    users only named as targets are told apart from accounts that showed up, and tokens
    are counted per user."""
    await _run_script(
        conn,
        """
        -- attempts: deliveries this row failed (an error the server answered, a stanza that
        -- could not be built, or a stream lost while this row was sent alone). next_try_at:
        -- not before (ms). suspect: a stream was lost while this row was in flight with
        -- others; it is sent alone next time, to tell a row that breaks the stream from
        -- its innocent neighbours.
        ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE outbox ADD COLUMN next_try_at INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE outbox ADD COLUMN suspect INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE outbox ADD COLUMN last_error TEXT;
        CREATE INDEX outbox_suspects ON outbox(id) WHERE suspect = 1;

        ALTER TABLE mail_outbox ADD COLUMN last_error TEXT;

        -- What was given up on, kept for the operator (README, "Delivery guarantees").
        CREATE TABLE dead_letters (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            source      TEXT NOT NULL CHECK (source IN ('outbox', 'mail')),
            kind        TEXT NOT NULL,              -- message, presence, roster; mail
            recipient   TEXT NOT NULL,
            payload     TEXT NOT NULL,              -- the row as it was (JSON)
            attempts    INTEGER NOT NULL,
            last_error  TEXT NOT NULL,
            created_at  INTEGER NOT NULL,           -- when the row was committed
            failed_at   INTEGER NOT NULL
        );
        CREATE INDEX dead_letters_by_time ON dead_letters(failed_at);

        -- Bounded growth. seen_at: when the account showed up itself (a login, a stanza, its
        -- provisioning); NULL for a JID only named as a target (toJid, a share's user), which
        -- is forgotten once nothing refers to it. named_by: who named it first (the cap on
        -- unseen targets per user). Users already stored count as seen.
        ALTER TABLE users ADD COLUMN seen_at INTEGER;
        ALTER TABLE users ADD COLUMN named_by TEXT;
        -- checked_at: when the account was last found on the XMPP server (its tokens go
        -- when it is found gone).
        ALTER TABLE users ADD COLUMN checked_at INTEGER;
        UPDATE users SET seen_at = created_at;
        CREATE INDEX users_unseen_by_namer ON users(named_by) WHERE seen_at IS NULL;
        CREATE INDEX tokens_by_user ON tokens(user_id, created_at);
        """,
    )


async def _v6_wake_ups(conn: Conn) -> None:
    """PostgreSQL only (a no-op on SQLite, where one process holds the database and
    wakes its dispatchers itself): every statement inserting into `outbox` or
    `mail_outbox` notifies the channel of the table's name, so that the instance
    delivering them is woken whichever instance committed (storage/postgres.py). The
    NOTIFY is part of the inserting transaction: sent only when it commits."""
    if getattr(conn, "dialect", dialect.SQLITE) != dialect.POSTGRESQL:
        return
    for table in ("outbox", "mail_outbox"):
        await conn.execute(
            f"CREATE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS"
            f" $$ BEGIN PERFORM pg_notify('{table}', ''); RETURN NULL; END $$"
        )
        await conn.execute(
            f"CREATE TRIGGER {table}_notify AFTER INSERT ON {table}"
            f" FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify()"
        )


UPGRADES: list[Upgrade] = [
    _v1_initial,
    _v2_presence_subscriptions,
    _v3_device_sharing,
    _v4_consent,
    _v5_delivery_attempts,
    _v6_wake_ups,
]
