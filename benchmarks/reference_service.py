"""Reference minimal component for issue #14's first two figures: the fastest honest
implementation of the service's three Rainbow REST writes and the XMPP traffic they cause.

    python benchmarks/reference_service.py --db FILE --port HTTP_PORT --tokens TOKENS.json \\
        [--no-xmpp | --jid J --secret S --xmpp-port P --domain D] [--max-iqs 20]

One process, one event loop: an aiohttp app (no middlewares, no access log, no metrics),
two plain sqlite3 connections each on its own thread (one writer, one reader, WAL), and
unless `--no-xmpp` a plain slixmpp ComponentXMPP. The figures it is the baseline of:
F1 "create+accept+interrupt cycles/s, delivery complete" (>= 0.9 of this) and F2 "CPU per
REST write, delivery excluded" (<= 1.5x this, run with `--no-xmpp`); beside F4 "REST reads"
(`--no-xmpp`) and F8 "CPU per accept with 1,000-item rosters" it is an informational row:
what a minimal honest component costs for the same work.

Start: `--tokens` is a JSON list of {"token", "userId", "jid"}; each user is inserted into
`users` and the SHA-256 of each token into `tokens` (storage/tokens.py's shape; the token
itself is not stored). The schema is the project's own (storage.migrations run once by
storage.Database at start, then closed), so every row written costs what it costs the
service: the same tables, indexes, CHECKs and foreign keys. Same PRAGMAs as storage/db.py:
journal_mode=WAL, synchronous=FULL, foreign_keys=ON, busy_timeout=5000, temp_store=MEMORY.

Group commit: storage/batches.py's `Batches` queue (imported), the service's own: bodies
queued while a batch runs go in the next one, at most 256. Here a body is a plain
synchronous function of the sqlite3 connection; a write batch is BEGIN IMMEDIATE, a
savepoint per body (a refused body rolls back only itself), one COMMIT (one fsync), as in
storage/db.py; every caller is answered after the COMMIT that made its rows durable.

Per request (what the service does in http_bridge/rainbow.py and component/actions.py):
- the token: `Authorization: Bearer T`, SHA-256(T) looked up in `tokens` JOIN `users`
  (expires_at > now) on the reader, group-batched; 401 if absent; 403 if the path's
  `{userId}` is not the caller. The service does the same read (Identity.authenticate).

Reads (F4's paths, the service's defaults), each one call on the reader thread after the
token check: `GET .../presences/{id}` (404 unless a party; the `full` format) and `GET
.../presences/sent` (the first page of 100 in request date then id order and the count, in
one read transaction; the `small` format, with limit, offset and total). Answers are encoded
as the service's are (http_bridge/envelopes.json_response, orjson).

Per transition, the durable writes (the service's, statement for statement) and stanzas:
- create `POST .../users/{userId}/presences` {"toUserId"}: one transaction: read the target
  user (404), the pair's live request (409), INSERT presence_requests (pending), INSERT 2
  outbox rows (kind message: the handshake `create`/`pending` to the sender, type `sent`,
  and to the receiver, type `received`; the payload JSON exactly as component.notifications
  writes it). Answer 200 {"data": request} (http_bridge/rainbow.py's `full` format).
  Delivery: the 2 management messages; then, confirmed, the 2 rows deleted.
- accept `POST .../presences/{id}/accept` (receiver, pending): one transaction: read the
  request (404 unless a party; 403 unless the receiver; 409 unless pending), UPDATE it
  accepted, INSERT 4 outbox rows (2 messages `update`/`accepted`; 2 roster rows: the
  sender's item for the receiver gains `to`, the receiver's item for the sender `from`).
  Delivery: one commit recording both items as created (roster_items, as
  storage/rosters.py's mark_created: the service writes it before a set that creates an
  item), the 2 messages, the 2 XEP-0356 privileged roster sets (subscription to / from,
  named by the contact's localpart, built by component.xmpp.slixfix.privileged_roster_set);
  then, confirmed, one commit deleting the 4 rows and saving both items' records
  (granted to / from, as storage/rosters.py's save).
- interrupt `POST .../presences/{id}/interrupt` (receiver, accepted): one transaction: read
  the request (the same checks, 409 unless accepted), DELETE it, INSERT 4 outbox rows (2
  messages `delete`/`interrupted`; 2 roster rows removing `to` and `from`). Delivery: the 2
  messages and 2 privileged roster removals (the items the service created, holding no
  direction any more, are removed, as component.rosters.plan decides); then, confirmed,
  one commit deleting the 4 rows and both records.
Management messages are the service's bytes: component.xmpp.slixfix.management_message
(type `management`, id `ph-{outbox row id}`), the `<presencehandshake/>` child with the
row's attributes, the readable `<body>` (component.xmpp.notices.management_body, the
service's default `readable_notifications = true`) and the XEP-0334 `<store/>` hint.

Delivery, as the service's outbox dispatcher (component/delivery.py) minus what a minimal
component leaves out: rows are taken straight from the transaction that wrote them (the
service reads them back from the outbox table); the messages go at once, the roster
changes after the roster_items commit, in commit order (each item's changes stay in
order on the one stream), at most `--max-iqs` roster IQs in flight (the service's
default max_concurrent_iqs, 20); confirmation is one at a
time in the background: every roster answer of the window, then a ping to the domain
(the stream is ordered: its answer means the server processed the messages), then one
commit deleting the window's rows and saving the records. Each roster change is a read
of the owner's roster (XEP-0356 get) then the set of the merged item (its name, groups and
other direction kept, this direction added or taken away; an item left with none removed),
one item's changes chained in commit order: the server replaces the whole item, so a
component that does not read first overwrites what users set themselves. These are the
service's stanzas; `--blind-rosters` leaves the reads out (sets what the service sets when
the item is absent, the benchmark's case: for comparison only). Left out: the roster_items read, retries, suspects and
dead letters (a refused IQ is counted in /pending's `errors`, its row deleted anyway),
reconnects, leadership, roster checks, metrics, logging, the pending-requests and
unseen-targets limits, toJid (creation of named users), and the other families.

Delivery is complete when the outbox table is empty (benchmarks/stack.py's
wait_outbox_empty(db_path) works on `--db`), or `GET /pending` says {"outbox": 0}.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hashlib
import json
import logging
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from component.clock import iso_ms  # noqa: E402
from component.model import new_object_id  # noqa: E402
from http_bridge.envelopes import json_response  # noqa: E402
from storage.batches import Batches, Job  # noqa: E402

PRESENCES = "/api/rainbow/enduser/v1.0/users/{userId}/presences"
# storage/db.py's, plus the journal mode it sets on the writer.
PRAGMAS = (
    "PRAGMA foreign_keys = ON",
    "PRAGMA synchronous = FULL",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA temp_store = MEMORY",
)
TOKEN_TTL_MS = 365 * 86400 * 1000


class Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


# ---- storage: two connections, each on its own thread, group committed ---------------


class Lane:
    """One sqlite3 connection on its own thread; bodies (sync functions of the
    connection) queued in a `Batches`, each batch in one call to the thread."""

    def __init__(self, path: str, write: bool) -> None:
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sqlite")
        self._write = write
        self._path = path
        self.raw: sqlite3.Connection | None = None
        self.batches = Batches(self._run_batch, lambda _exc: None)

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            raw = sqlite3.connect(self._path, isolation_level=None)
            if self._write:
                raw.execute("PRAGMA journal_mode = WAL")
            for pragma in PRAGMAS:
                raw.execute(pragma)
            return raw

        self.raw = await asyncio.get_running_loop().run_in_executor(self._thread, connect)

    def _run_batch(self, jobs: list[Job[Any]]) -> asyncio.Future[None]:
        fn = _write_batch if self._write else _read_batch
        return asyncio.get_running_loop().run_in_executor(self._thread, fn, self.raw, jobs)

    async def run(self, body: Callable[[sqlite3.Connection], Any]) -> Any:
        return await self.batches.run(body)  # type: ignore[arg-type]

    async def close(self) -> None:
        if self.raw is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self.raw.close)
        self._thread.shutdown()


def _write_batch(raw: sqlite3.Connection, jobs: list[Job[Any]]) -> None:
    """storage/db.py's `_write_batch`, for synchronous bodies."""
    raw.execute("BEGIN IMMEDIATE")
    try:
        for job in jobs:
            raw.execute("SAVEPOINT body")
            try:
                result = job.body(raw)
            except Exception as exc:  # noqa: BLE001 - the body's own failure, for its caller
                if not raw.in_transaction:
                    raise
                raw.execute("ROLLBACK TO body")
                raw.execute("RELEASE body")
                job.outcome = (False, exc)
            else:
                raw.execute("RELEASE body")
                job.outcome = (True, result)
        raw.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        raise


def _read_batch(raw: sqlite3.Connection, jobs: list[Job[Any]]) -> None:
    """Each body is one statement here: its own snapshot without BEGIN/COMMIT."""
    for job in jobs:
        try:
            job.outcome = (True, job.body(raw))
        except Exception as exc:  # noqa: BLE001
            job.outcome = (False, exc)


# ---- the rows each transition writes ----------------------------------------------------

Row = tuple[int, str, str, dict[str, Any]]  # outbox id, kind, recipient, payload


def _outbox(raw: sqlite3.Connection, notes: list[tuple[str, str, dict[str, Any]]], now: int) -> list[Row]:
    rows = []
    for kind, recipient, payload in notes:
        cur = raw.execute(
            "INSERT INTO outbox (kind, recipient, payload, created_at) VALUES (?, ?, ?, ?)",
            (kind, recipient, json.dumps(payload, separators=(",", ":")), now),
        )
        rows.append((cur.lastrowid, kind, recipient, payload))
    return rows


def _handshakes(req: dict[str, Any], action: str, status: str) -> list[tuple[str, str, dict[str, Any]]]:
    """component.notifications.handshake_messages, as rows."""
    return [
        ("message", me, {"handshake": {"id": req["id"], "action": action, "type": side, "status": status},
                         "peer": peer})
        for me, peer, side in ((req["fromJid"], req["toJid"], "sent"), (req["toJid"], req["fromJid"], "received"))
    ]


def _rosters(req: dict[str, Any], add: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """component.actions.roster_changes, as rows (notifications.roster_grant / roster_revoke)."""
    out = []
    for owner, contact, direction in ((req["fromJid"], req["toJid"], "to"), (req["toJid"], req["fromJid"], "from")):
        payload: dict[str, Any] = {"jid": contact, "direction": direction, "op": "add" if add else "remove"}
        if add:
            payload["name"] = contact.partition("@")[0]
        out.append(("roster", owner, payload))
    return out


def _request(raw: sqlite3.Connection, request_id: str, caller_id: str) -> dict[str, Any]:
    row = raw.execute(
        "SELECT r.id, r.from_user_id, fu.jid, r.to_user_id, tu.jid, r.status, r.request_date, r.acceptation_date"
        " FROM presence_requests r JOIN users fu ON fu.id = r.from_user_id JOIN users tu ON tu.id = r.to_user_id"
        " WHERE r.id = ?",
        (request_id,),
    ).fetchone()
    if row is None or caller_id not in (row[1], row[3]):
        raise Refused(404, f"presence request {request_id} not found")
    return {"id": row[0], "fromUserId": row[1], "fromJid": row[2], "toUserId": row[3], "toJid": row[4],
            "status": row[5], "requestDate": row[6], "acceptationDate": row[7]}


def create_body(caller: tuple[str, str], to_user_id: str, now: int) -> Callable[[sqlite3.Connection], Any]:
    def body(raw: sqlite3.Connection) -> tuple[dict[str, Any], list[Row]]:
        target = raw.execute("SELECT id, jid FROM users WHERE id = ?", (to_user_id,)).fetchone()
        if target is None:
            raise Refused(404, f"user {to_user_id} not found")
        if target[0] == caller[0]:
            raise Refused(400, "cannot ask yourself to share presence")
        if raw.execute("SELECT 1 FROM presence_requests WHERE from_user_id = ? AND to_user_id = ?",
                       (caller[0], target[0])).fetchone():
            raise Refused(409, f"a pending or accepted request to {target[1]} already exists")
        req = {"id": new_object_id(), "fromUserId": caller[0], "fromJid": caller[1], "toUserId": target[0],
               "toJid": target[1], "status": "pending", "requestDate": now, "acceptationDate": None}
        raw.execute(
            "INSERT INTO presence_requests (id, from_user_id, to_user_id, status, request_date, acceptation_date)"
            " VALUES (?, ?, ?, ?, ?, ?)", (req["id"], caller[0], target[0], "pending", now, None))
        return req, _outbox(raw, _handshakes(req, "create", "pending"), now)

    return body


def transition_body(caller: tuple[str, str], request_id: str, accept: bool, now: int):
    def body(raw: sqlite3.Connection) -> tuple[dict[str, Any], list[Row]]:
        req = _request(raw, request_id, caller[0])
        name = "accept" if accept else "interrupt"
        if req["toUserId"] != caller[0]:
            raise Refused(403, f"only the request's receiver may {name} it")
        required = "pending" if accept else "accepted"
        if req["status"] != required:
            raise Refused(409, f"request {request_id} is {req['status']}; {name} needs it {required}")
        if accept:
            raw.execute("UPDATE presence_requests SET status = 'accepted', acceptation_date = ?"
                        " WHERE id = ? AND status = 'pending'", (now, request_id))
            req.update(status="accepted", acceptationDate=now)
            notes = _handshakes(req, "update", "accepted") + _rosters(req, add=True)
        else:
            raw.execute("DELETE FROM presence_requests WHERE id = ? AND status = ?", (request_id, "accepted"))
            req["status"] = "interrupted"
            notes = _handshakes(req, "delete", "interrupted") + _rosters(req, add=False)
        return req, _outbox(raw, notes, now)

    return body


def sent_page(raw: sqlite3.Connection, user_id: str, limit: int) -> dict[str, Any]:
    """storage/presence_requests.list_for's two statements for a first page of sent
    requests (every stored status), in one read transaction; http_bridge/rainbow.py's
    `small` format."""
    raw.execute("BEGIN")
    try:
        rows = raw.execute(
            "SELECT r.id, r.from_user_id, r.to_user_id, r.status, r.request_date FROM presence_requests r"
            " JOIN users fu ON fu.id = r.from_user_id JOIN users tu ON tu.id = r.to_user_id"
            " WHERE r.from_user_id = ? ORDER BY r.request_date ASC, r.id ASC LIMIT ? OFFSET 0",
            (user_id, limit)).fetchall()
        total = raw.execute("SELECT count(*) FROM presence_requests r WHERE r.from_user_id = ?",
                            (user_id,)).fetchone()[0]
    finally:
        raw.execute("COMMIT")
    return {"data": [{"id": r[0], "fromUserId": r[1], "toUserId": r[2], "status": r[3], "requestDate": iso_ms(r[4])}
                     for r in rows], "limit": limit, "offset": 0, "total": total}


def answer(req: dict[str, Any]) -> web.Response:
    """http_bridge/rainbow.py's request_json, `full` format."""
    return json_response({"data": {
        "id": req["id"], "fromUserId": req["fromUserId"], "toUserId": req["toUserId"], "status": req["status"],
        "requestDate": iso_ms(req["requestDate"]), "acceptationDate": iso_ms(req["acceptationDate"]),
        "declinationDate": None, "cancellationDate": None, "fromJid": req["fromJid"], "toJid": req["toJid"],
    }})


# ---- delivery ---------------------------------------------------------------------------


class Delivery:
    """Committed rows -> stanzas, in commit order; confirmed windows -> one delete commit."""

    def __init__(self, writer: Lane, jid: str, secret: str, port: int, domain: str, max_iqs: int,
                 read_rosters: bool = True) -> None:
        from slixmpp import ComponentXMPP

        from component.xmpp.slixfix import PrivilegeGrants, detach_roster

        self.writer = writer
        self.domain = domain
        self.xmpp = ComponentXMPP(jid, secret, "127.0.0.1", port, fix_error_ns=True)
        PrivilegeGrants.register_stanzas()
        detach_roster(self.xmpp)
        self.port = port
        self.slots = asyncio.Semaphore(max_iqs)
        self.read_rosters = read_rosters
        self.chains: dict[tuple[str, str], asyncio.Future[Any]] = {}  # the last change of each roster item
        self.queue: list[Row] = []
        self.wake = asyncio.Event()
        self.window: list[tuple[list[int], list[asyncio.Future[Any]], list[tuple[str, str, str | None]]]] = []
        self.confirming: asyncio.Task[None] | None = None
        self.errors = 0
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.xmpp.add_event_handler("session_start", lambda _e: ready.done() or ready.set_result(None))
        self.xmpp.connect("127.0.0.1", self.port)
        await asyncio.wait_for(ready, 30)
        await asyncio.sleep(0.5)  # the privilege advertisement follows the handshake
        self.task = asyncio.create_task(self._run())

    def committed(self, rows: list[Row]) -> None:
        self.queue.extend(rows)
        self.wake.set()

    async def _run(self) -> None:
        from slixmpp.xmlstream import ET

        from component.xmpp.notices import management_body
        from component.xmpp.slixfix import management_message, privileged_roster_set
        from component.xmpp.stanzas import NS_CONFIGURATION

        me = self.xmpp.boundjid.bare
        while True:
            await self.wake.wait()
            self.wake.clear()
            rows, self.queue = self.queue, []
            if not rows:
                continue
            ids = [r[0] for r in rows]
            for row_id, kind, recipient, payload in rows:
                if kind == "message":  # at once; the roster changes may wait for a commit
                    msg = management_message(self.xmpp, recipient, me, f"ph-{row_id}")
                    ET.SubElement(msg.xml, f"{{{NS_CONFIGURATION}}}presencehandshake", payload["handshake"])
                    msg["body"] = management_body(payload, me)
                    ET.SubElement(msg.xml, "{urn:xmpp:hints}store")
                    msg.send()
            now = int(time.time() * 1000)
            created = [(r[2], r[3]["jid"]) for r in rows if r[1] == "roster" and r[3]["op"] == "add"]
            if created:  # storage/rosters.py mark_created: durable before the set that creates the item
                def mark(raw: sqlite3.Connection) -> None:
                    raw.executemany(
                        "INSERT INTO roster_items (owner, contact, created, granted, updated_at)"
                        " VALUES (?, ?, 1, 'none', ?) ON CONFLICT (owner, contact) DO UPDATE SET created = 1,"
                        " version = roster_items.version + 1, updated_at = excluded.updated_at",
                        [(owner, contact, now) for owner, contact in created])

                await self.writer.run(mark)
            iqs, records = [], []
            for _row_id, kind, recipient, payload in rows:
                if kind != "roster":
                    continue
                add = payload["op"] == "add"
                if self.read_rosters:
                    # Read, merge, write; one item's changes chained in commit order.
                    key = (recipient, payload["jid"])
                    sent = asyncio.ensure_future(self._merge(recipient, payload, add, self.chains.get(key)))
                    self.chains[key] = sent
                    sent.add_done_callback(lambda f, key=key: self.chains.get(key) is f and self.chains.pop(key))
                else:
                    await self.slots.acquire()  # in order: the stream keeps each item's changes in order
                    iq = privileged_roster_set(self.xmpp, recipient, payload["jid"],
                                               payload["direction"] if add else "remove",
                                               payload.get("name"), me)
                    sent = asyncio.ensure_future(iq.send(timeout=60))
                    sent.add_done_callback(lambda _f: self.slots.release())
                iqs.append(sent)
                records.append((recipient, payload["jid"], payload["direction"] if add else None))
            self.window.append((ids, iqs, records))
            self._confirm_next()

    async def _merge(self, owner: str, payload: dict[str, Any], add: bool, before: asyncio.Future[Any] | None) -> None:
        """The roster read and merge a correct component needs, since the server replaces
        the whole item: read `owner`'s roster, keep the item's name, groups and other
        direction, add or take away this direction (removing an item left with none, as
        the service does for the items it created)."""
        from component.rosters import directions, subscription
        from component.xmpp.slixfix import NS_ROSTER, privileged_roster_get, privileged_roster_set

        if before is not None:
            await asyncio.gather(before, return_exceptions=True)
        me, contact = self.xmpp.boundjid.bare, payload["jid"]
        async with self.slots:
            result = await privileged_roster_get(self.xmpp, owner, me).send(timeout=60)
        found = next((i for i in result.xml.iter(f"{{{NS_ROSTER}}}item") if i.get("jid") == contact), None)
        held = directions(found.get("subscription") if found is not None else None)
        held = held | {payload["direction"]} if add else held - {payload["direction"]}
        name = (found.get("name") if found is not None else None) or payload.get("name")
        groups = tuple(g.text for g in found.iter(f"{{{NS_ROSTER}}}group") if g.text) if found is not None else ()
        async with self.slots:
            await privileged_roster_set(self.xmpp, owner, contact, subscription(held) if held or add else "remove",
                                        name, me, groups).send(timeout=60)

    def _confirm_next(self) -> None:
        if self.confirming is None and self.window:
            window, self.window = self.window, []
            self.confirming = asyncio.create_task(self._confirm(window))

    async def _confirm(self, window) -> None:
        from slixmpp.exceptions import IqError
        from slixmpp.xmlstream import ET

        try:
            ids = [i for w in window for i in w[0]]
            records = [r for w in window for r in w[2]]
            for result in await asyncio.gather(*(f for w in window for f in w[1]), return_exceptions=True):
                if isinstance(result, BaseException):
                    self.errors += 1
            ping = self.xmpp.make_iq_get(ito=self.domain, ifrom=self.xmpp.boundjid.bare)
            ET.SubElement(ping.xml, "{urn:xmpp:ping}ping")
            try:
                await ping.send(timeout=60)
            except IqError:
                pass  # any answer proves the server processed what came before
            now = int(time.time() * 1000)

            def done(raw: sqlite3.Connection) -> None:
                raw.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
                for owner, contact, granted in records:
                    if granted is None:  # removed: the record holds nothing any more (rosters.save)
                        raw.execute("DELETE FROM roster_items WHERE owner = ? AND contact = ?", (owner, contact))
                    else:
                        raw.execute(
                            "INSERT INTO roster_items (owner, contact, created, granted, updated_at)"
                            " VALUES (?, ?, 1, ?, ?) ON CONFLICT (owner, contact) DO UPDATE SET"
                            " created = excluded.created, granted = excluded.granted,"
                            " version = roster_items.version + 1, updated_at = excluded.updated_at",
                            (owner, contact, granted, now))

            await self.writer.run(done)
        finally:
            self.confirming = None
        self._confirm_next()

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.xmpp.abort()


# ---- HTTP -------------------------------------------------------------------------------


class Reference:
    def __init__(self, reader: Lane, writer: Lane, delivery: Delivery | None) -> None:
        self.reader, self.writer, self.delivery = reader, writer, delivery

    async def caller(self, request: web.Request) -> tuple[str, str]:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() != "bearer ":
            raise Refused(401, "missing token")
        token_hash, now = hashlib.sha256(auth[7:].strip().encode("utf-8", "surrogatepass")).digest(), _now()
        user = await self.reader.run(lambda raw: raw.execute(
            "SELECT u.id, u.jid FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.hash = ? AND t.expires_at > ?",
            (token_hash, now)).fetchone())
        if user is None:
            raise Refused(401, "invalid or expired token")
        if request.match_info["userId"] != user[0]:
            raise Refused(403, "userId in the path must be the logged-in user")
        return user[0], user[1]

    async def write(self, body) -> web.Response:
        req, rows = await self.writer.run(body)
        if self.delivery is not None:
            self.delivery.committed(rows)
        return answer(req)

    async def create(self, request: web.Request) -> web.Response:
        caller = await self.caller(request)
        try:
            body = await request.json()
            to_user_id = body["toUserId"]
        except (ValueError, KeyError, TypeError) as exc:
            raise Refused(400, "a JSON object with toUserId is required") from exc
        return await self.write(create_body(caller, str(to_user_id), _now()))

    async def accept(self, request: web.Request) -> web.Response:
        caller = await self.caller(request)
        return await self.write(transition_body(caller, request.match_info["id"], True, _now()))

    async def interrupt(self, request: web.Request) -> web.Response:
        caller = await self.caller(request)
        return await self.write(transition_body(caller, request.match_info["id"], False, _now()))

    async def get_one(self, request: web.Request) -> web.Response:
        """GET .../presences/{id}: the request if the caller is a party (404 otherwise),
        `full` format (the service's default for one request)."""
        caller = await self.caller(request)
        request_id = request.match_info["id"]
        return answer(await self.reader.run(lambda raw: _request(raw, request_id, caller[0])))

    async def list_sent(self, request: web.Request) -> web.Response:
        """GET .../presences/sent: the first page (100) of the caller's sent requests,
        request date then id order, `small` format, with the total (the service's defaults)."""
        caller = await self.caller(request)
        return json_response(await self.reader.run(lambda raw: sent_page(raw, caller[0], 100)))

    async def pending(self, _request: web.Request) -> web.Response:
        count = await self.reader.run(lambda raw: raw.execute("SELECT count(*) FROM outbox").fetchone()[0])
        return json_response({"outbox": count, "errors": self.delivery.errors if self.delivery else 0})


def _now() -> int:
    return int(time.time() * 1000)


@web.middleware
async def refusals(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Refused as exc:
        return json_response({"errorCode": exc.status, "errorDetails": str(exc)}, status=exc.status)


async def prepare(db_path: str, tokens_path: str) -> None:
    """The project's schema (its migrations), then the users and their hashed tokens."""
    from storage import Database

    db = Database(db_path)
    await db.open()
    await db.close()
    entries = json.loads(Path(tokens_path).read_text())
    now = _now()
    raw = sqlite3.connect(db_path, isolation_level=None)
    try:
        raw.execute("BEGIN")
        raw.executemany(
            "INSERT INTO users (id, jid, created_at, domain, seen_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(e["userId"], e["jid"], now, e["jid"].partition("@")[2], now) for e in entries])
        raw.executemany(
            "INSERT INTO tokens (hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(hashlib.sha256(e["token"].encode()).digest(), e["userId"], now, now + TOKEN_TTL_MS) for e in entries])
        raw.execute("COMMIT")
    finally:
        raw.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--port", type=int, required=True, help="HTTP port on 127.0.0.1")
    parser.add_argument("--tokens", required=True, help='JSON list of {"token", "userId", "jid"}')
    parser.add_argument("--no-xmpp", action="store_true", help="commit only: no stanzas, outbox rows stay")
    parser.add_argument("--jid")
    parser.add_argument("--secret")
    parser.add_argument("--xmpp-port", type=int)
    parser.add_argument("--domain", help="the served domain (pinged as the delivery barrier)")
    parser.add_argument("--max-iqs", type=int, default=20, help="roster IQs in flight (the service's default)")
    parser.add_argument("--blind-rosters", action="store_true",
                        help="set roster items without reading them first (wrong for users' existing items)")
    args = parser.parse_args()
    if not args.no_xmpp and not (args.jid and args.secret and args.xmpp_port and args.domain):
        parser.error("--jid, --secret, --xmpp-port and --domain are needed unless --no-xmpp")
    logging.basicConfig(level=logging.ERROR)

    await prepare(args.db, args.tokens)
    reader, writer = Lane(args.db, write=False), Lane(args.db, write=True)
    await writer.open()
    await reader.open()
    delivery = None
    if not args.no_xmpp:
        delivery = Delivery(writer, args.jid, args.secret, args.xmpp_port, args.domain, args.max_iqs,
                            read_rosters=not args.blind_rosters)
        await delivery.start()
    ref = Reference(reader, writer, delivery)
    app = web.Application(middlewares=[refusals])
    app.router.add_post(PRESENCES, ref.create)
    app.router.add_post(PRESENCES + "/{id}/accept", ref.accept)
    app.router.add_post(PRESENCES + "/{id}/interrupt", ref.interrupt)
    app.router.add_get(PRESENCES + "/sent", ref.list_sent)
    app.router.add_get(PRESENCES + "/{id}", ref.get_one)
    app.router.add_get("/pending", ref.pending)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    print(json.dumps({"ready": True}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        if delivery is not None:
            delivery.close()
        await reader.close()
        await writer.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
