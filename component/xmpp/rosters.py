"""XEP-0356 roster access and the roster checks: reading and changing users' roster
items for the outbox dispatcher, following users' availability (the presence the
server forwards) to compare their rosters with the consents they hold, and asking
whether token holders' accounts still exist.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping

from slixmpp import Iq, Presence
from slixmpp.exceptions import IqError, IqTimeout

from component.delivery import RosterFailed, RosterRefused, TransportGone
from component.model import BareJid, jid_domain
from component.rosters import RosterItem
from component.xmpp.session import IQ_TIMEOUT_S, Session
from component.xmpp.slixfix import (
    NS_ROSTER,
    privileged_ping,
    privileged_roster_get,
    privileged_roster_set,
)

log = logging.getLogger(__name__)

# A roster check that found changes in flight looks again, this often and this many times.
ROSTER_CHECK_RETRY_S = 1.0
ROSTER_CHECK_RETRIES = 5
# Prosody's mod_privilege (0.12, prosody-modules 2023) answers a privileged IQ for an
# account that does not exist with this text, before it looks at permissions; an account
# that exists gets a result, or (IQ permission not granted) another `forbidden`. It is the
# one way a component can ask Prosody whether an account still exists: disco#info to a
# bare JID is `service-unavailable` for both. Remove when servers offer a standard way.
PROSODY_NO_SUCH_ACCOUNT = "wrapping <IQ> stanza recipient must be a bare JID of a local user"


class RosterAccess(Session):
    """Mixin of PresenceComponent: users' rosters and accounts, through the server."""

    # ---- users coming online and going offline (roster checks) -------------------

    def on_user_presence(self, presence: Presence) -> None:
        """A user's availability, which the server forwards with the XEP-0356 presence
        permission: a new resource, or the last one leaving, is when that user's roster
        is compared with what the service granted (component.rosters). Where the server
        forwards no unavailable presence (ejabberd 23.01), every available one is."""
        if presence.xml.get("type") not in (None, "unavailable"):
            return
        sender = presence["from"]
        if not sender.user or not sender.resource or sender.domain not in self.served_domains:
            return
        bare = sender.bare
        resources = self._online.setdefault(bare, set())
        if presence.xml.get("type") is None:
            if sender.resource in resources and self.grants.forwards_unavailable(sender.domain):
                return  # a change of <show/> or <status/>: nothing new
            resources.add(sender.resource)
        else:
            resources.discard(sender.resource)
            if resources:
                return
            del self._online[bare]
        self.check_roster(BareJid(bare))

    def check_roster(self, owner: BareJid) -> None:
        """Compare `owner`'s roster with the consents it holds, in the background; at
        most one check per user at a time (a request meanwhile runs it once more)."""
        if self.rosters is None or not self.roster_allowed(owner):
            return
        if owner in self._checks:
            self._check_again.add(owner)
            return
        self._checks[owner] = asyncio.create_task(self._check_roster(owner), name=f"roster-check {owner}")

    async def _check_roster(self, owner: BareJid) -> None:
        assert self.rosters is not None
        retries = ROSTER_CHECK_RETRIES
        try:
            while True:
                self._check_again.discard(owner)
                seen, in_flight = await self.rosters.granted(owner)
                deferred = in_flight
                if seen:  # most users hold nothing the service granted: no roster read
                    live = await self.roster_items(owner)
                    deferred = (await self.rosters.reconcile(owner, live, seen)).deferred or in_flight
                if deferred and retries:
                    # Some of the user's roster changes were in flight: look again once the
                    # dispatcher has had time to apply them.
                    retries -= 1
                    await asyncio.sleep(ROSTER_CHECK_RETRY_S)
                    continue
                if owner not in self._check_again:
                    return
        except (TransportGone, RosterRefused, RosterFailed) as exc:
            log.info("roster check of %s skipped: %s", owner, type(exc).__name__)
        except Exception:
            log.exception("roster check of %s failed", owner)
        finally:
            self._checks.pop(owner, None)
            self._check_again.discard(owner)

    # ---- do the token holders' accounts still exist? --------------------------------

    async def _check_accounts(self) -> None:
        """While the session is up: each token holder's account, once per
        `account_check_s`; an account the server says is gone loses its tokens."""
        while self.session_up:
            try:
                due = await self.identity.accounts_to_check(self.account_check_s)
                for user in due:
                    if not self.session_up:
                        return
                    await self.identity.account_checked(user, await self.account_exists(user.jid))
            except Exception:
                log.exception("account checks failed; trying again later")
            await asyncio.sleep(min(60.0, self.account_check_s))

    async def account_exists(self, jid: str) -> bool | None:
        """Whether the server still has this account (None: it cannot tell)."""
        iq = privileged_ping(self, jid, jid_domain(BareJid(jid)), self.boundjid.bare)
        async with self._iq_slots:
            if not self.session_up:
                return None
            try:
                await iq.send(timeout=IQ_TIMEOUT_S)
            except IqTimeout:
                return None
            except IqError as exc:
                if exc.condition == "forbidden":
                    return exc.iq["error"]["text"] != PROSODY_NO_SUCH_ACCOUNT
                return None
        return True

    # ---- Transport for the outbox dispatcher: roster items -----------------------
    # Whatever `[roster] backend` says (component.rosters.RosterBackend).

    async def roster_items(self, owner: str) -> Mapping[str, RosterItem]:
        """`owner`'s whole roster, read through the roster backend."""
        return await self.roster_backend.items(owner)

    async def roster_item(self, owner: str, contact: str) -> RosterItem | None:
        return (await self.roster_backend.items(owner)).get(contact)

    async def set_roster_item(self, owner: str, item: RosterItem) -> None:
        await self.roster_backend.set_item(owner, item)

    async def remove_roster_item(self, owner: str, contact: str) -> None:
        await self.roster_backend.remove_item(owner, contact)


class Xep0356Rosters:
    """`[roster] backend = "xep0356"`: privileged roster IQs (XEP-0356 section 5) on the
    component's own stream, as the server advertised them (Session.grants)."""

    name = "xep0356"

    def __init__(self, session: Session) -> None:
        self.session = session
        # Per owner (see `items`): the roster read not sent yet, and the one in flight.
        self._queued: dict[str, asyncio.Future[RosterView]] = {}
        self._sent: dict[str, asyncio.Future[RosterView]] = {}

    @property
    def status(self) -> str:
        return self.session.roster_status

    def allowed(self, owner: str) -> bool:
        return self.session.grants.can_change_roster(jid_domain(BareJid(owner)))

    async def session_started(self) -> None:
        return None  # the advertisement that follows the handshake decides

    def session_ended(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def items(self, owner: str) -> Mapping[str, RosterItem]:
        """`owner`'s whole roster, read with the XEP-0356 roster privilege.

        At most one read of a roster is in flight; reads asked for meanwhile share the
        next one, sent once the one in flight is answered, so after each of them was
        asked for: it shows every change the server answered before (the stream is
        ordered), as a read of their own would. Under load (many changes to one user's
        roster, a large roster to parse each time) that is one read per round trip
        instead of one per change."""
        queued = self._queued.get(owner)
        if queued is None:
            queued = asyncio.ensure_future(self._read(owner, self._sent.get(owner)))
            queued.add_done_callback(_retrieve)
            self._queued[owner] = queued
        return await asyncio.shield(queued)

    async def _read(self, owner: str, before: asyncio.Future[RosterView] | None) -> RosterView:
        me = asyncio.current_task()
        if before is not None:
            await asyncio.wait({before})  # one read of a roster in flight at a time
        session = self.session
        iq = privileged_roster_get(session, owner, session.boundjid.bare)

        def sending() -> None:  # from now on, readers need the next read
            if self._queued.get(owner) is me:
                del self._queued[owner]
            self._sent[owner] = me

        try:
            result = await self._roster_iq(owner, iq, sending)
        finally:
            if self._queued.get(owner) is me:
                del self._queued[owner]
            if self._sent.get(owner) is me:
                del self._sent[owner]
        return RosterView(result.xml.find(f"{{{NS_ROSTER}}}query"))

    async def set_item(self, owner: str, item: RosterItem) -> None:
        session = self.session
        iq = privileged_roster_set(
            session, owner, item.jid, item.subscription, item.name, session.boundjid.bare, item.groups
        )
        await self._roster_iq(owner, iq)

    async def remove_item(self, owner: str, contact: str) -> None:
        session = self.session
        iq = privileged_roster_set(session, owner, contact, "remove", None, session.boundjid.bare)
        try:
            await self._roster_iq(owner, iq)
        except RosterFailed as exc:
            if str(exc) != "item-not-found":
                raise  # otherwise: already gone, the goal is reached

    async def _roster_iq(self, owner: str, iq: Iq, sending: Callable[[], None] = lambda: None) -> Iq:
        """Send a privileged roster IQ (bounded in flight; `sending` is called right
        before it goes); map the server's answer."""
        session = self.session
        async with session._iq_slots:
            if not session.session_up:
                raise TransportGone()
            sending()
            try:
                return await iq.send(timeout=IQ_TIMEOUT_S)
            except IqTimeout as exc:
                raise TransportGone() from exc
            except IqError as exc:
                if exc.condition in ("forbidden", "not-authorized"):
                    domain = jid_domain(BareJid(owner))
                    if session.grants.can_change_roster(domain):
                        session.grants.withdraw_roster(domain)
                        session._update_roster_status()
                        log.warning(
                            "xmpp: %s refused a roster IQ (%s) though it advertised the privilege;"
                            " roster changes for its users wait until it advertises it again",
                            domain, exc.condition,
                        )
                    raise RosterRefused(exc.condition) from exc
                if exc.condition == "internal-server-error" and session.grants.legacy():
                    # Measured on ejabberd 23.01: privileged roster sets fail so
                    # (error.log: module_not_loaded, mod_roster), the stream stays up.
                    log.warning(
                        "xmpp: %s failed a privileged roster IQ for %s (internal-server-error);"
                        " ejabberd before 23.10 (urn:xmpp:privilege:1) cannot change rosters"
                        " over XEP-0356: set [roster] backend = \"ejabberd_api\"",
                        jid_domain(BareJid(owner)), owner,
                    )
                raise RosterFailed(exc.condition) from exc


class RosterView(Mapping[str, RosterItem]):
    """A roster result, by contact JID: the `<item/>` elements are indexed once, and an
    item is turned into a RosterItem only when asked for (the dispatcher asks for one
    item of a roster that may hold thousands)."""

    def __init__(self, query) -> None:
        self._items = {} if query is None else {
            item.get("jid", ""): item for item in query.iter(f"{{{NS_ROSTER}}}item")
        }

    def __getitem__(self, contact: str) -> RosterItem:
        item = self._items[contact]
        return RosterItem(
            contact,
            item.get("subscription", "none"),
            item.get("name") or None,
            tuple(g.text for g in item.iter(f"{{{NS_ROSTER}}}group") if g.text),
            item.get("ask") or None,
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def _retrieve(task: asyncio.Future) -> None:
    """A shared read whose askers all went away (cancelled) still ends: its failure is
    theirs, not reported again."""
    if not task.cancelled():
        task.exception()
