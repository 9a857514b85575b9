"""`[roster] backend = "ejabberd_api"`: users' rosters through ejabberd's own HTTP API
(mod_http_api with mod_admin_extra's `get_roster`, `add_rosteritem`,
`delete_rosteritem`), for ejabberd releases whose XEP-0356 roster sets fail (Debian
12's 23.01: `internal-server-error`, DESIGN "Known pitfalls").

Measured against ejabberd 23.01:
- `get_roster {user, server}` answers one entry per (item, group): `[{jid, nick,
  subscription, ask, group}]`, `group` "" for an item without groups; `ask` is
  "subscribe" while the user's own request is pending (read as "out"/"both" too, the
  names of ejabberd's internal values);
- `add_rosteritem {localuser, localhost, user, host, nick, group, subs}` sets the whole
  item (name, groups joined by ";", subscription) and pushes it to the user's clients;
  it keeps a pending request (`ask`), as XEP-0356 sets on Prosody do;
- `delete_rosteritem {localuser, localhost, user, host}` answers 0 for an absent item too;
  of an item that holds a subscription it also sends the contact `unsubscribe` /
  `unsubscribed`, which changes the contact's roster (see `remove_item`);
- a command that `api_permissions` does not allow to the caller answers 403 (code 32).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from component.config import RosterConfig
from component.delivery import RosterFailed, RosterRefused
from component.model import BareJid, jid_domain
from component.rosters import GRANTED, UNAVAILABLE, RosterItem

log = logging.getLogger(__name__)

# While the API does not work, it is asked again this often (and after every reconnect).
RECHECK_S = 5.0
# The account whose (empty) roster the check reads: any name will do; ejabberd answers []
# for an account that does not exist. The check proves the listener answers and that
# api_permissions lets the service call get_roster.
CHECK_USER = "presence-consent-check"
# ejabberd joins and splits an item's groups with this in add_rosteritem (23.01).
GROUP_SEPARATOR = ";"


class EjabberdApiRosters:
    """Rosters read and changed with ejabberd's mod_http_api commands."""

    name = "ejabberd_api"

    def __init__(
        self,
        config: RosterConfig,
        served_domains: frozenset[str],
        component_jid: str,
        on_granted: Callable[[], None] = lambda: None,
    ) -> None:
        self.url = config.ejabberd_api_url.rstrip("/")
        self.auth = (
            aiohttp.BasicAuth(config.ejabberd_api_user, config.ejabberd_api_password)
            if config.ejabberd_api_user else None
        )
        self.timeout = aiohttp.ClientTimeout(total=config.ejabberd_api_timeout_s)
        self.served_domains = served_domains
        self.component_jid = component_jid
        self.on_granted = on_granted
        self._status = UNAVAILABLE
        self._http: aiohttp.ClientSession | None = None
        self._recheck: asyncio.Task[None] | None = None
        self._session_up = False
        self._warned = False

    @property
    def status(self) -> str:
        return self._status

    def allowed(self, owner: str) -> bool:
        return self._status == GRANTED and jid_domain(BareJid(owner)) in self.served_domains

    # ---- life cycle and the check ----------------------------------------------------

    async def session_started(self) -> None:
        self._session_up = True
        await self.check()

    def session_ended(self) -> None:
        self._session_up = False
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None

    async def close(self) -> None:
        self.session_ended()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def check(self) -> bool:
        """Read an (empty) roster on each served domain: GRANTED when every call works,
        else UNAVAILABLE (logged once per change, with the reason and the fix) and asked
        again every RECHECK_S while the session is up."""
        try:
            for domain in sorted(self.served_domains):
                await self._call("get_roster", {"user": CHECK_USER, "server": domain})
        except RosterRefused:
            return False  # withdrawn, logged and rechecked by _call
        except RosterFailed as exc:
            # Any other answer to the check (a 400 or 500) is a failure of the API as the
            # service uses it, not of one change: said and retried the same way.
            self._withdraw(f"the check's {exc}")
            return False
        except Exception:
            # Not an answer the API gives: logged with its traceback, and retried so
            # that rosters do not stay unavailable until the next reconnect.
            log.exception("roster: checking ejabberd's API at %s failed", self.url)
            self._withdraw("an unexpected error in the check, logged above")
            return False
        self._grant()
        return True

    def _grant(self) -> None:
        if self._status == GRANTED:
            return
        self._status = GRANTED
        self._warned = False
        log.info(
            "roster: ejabberd's API at %s answers for %s (backend ejabberd_api)",
            self.url, ", ".join(sorted(self.served_domains)),
        )
        self.on_granted()

    def _withdraw(self, why: str) -> None:
        self._status = UNAVAILABLE
        if not self._warned:
            self._warned = True
            log.warning(
                "roster: ejabberd's API at %s does not work (%s); roster changes wait in the"
                " outbox until it does (ejabberd.yml: an ejabberd_http listener with"
                " `/api: mod_http_api`, mod_admin_extra, and api_permissions letting %s's"
                " address call get_roster, add_rosteritem and delete_rosteritem)",
                self.url, why, self.component_jid,
            )
        self._schedule_recheck()

    def _schedule_recheck(self) -> None:
        if self._session_up and (self._recheck is None or self._recheck.done()):
            self._recheck = asyncio.create_task(self._recheck_later(), name="ejabberd-api-check")

    async def _recheck_later(self) -> None:
        while self._session_up and self._status != GRANTED:
            await asyncio.sleep(RECHECK_S)
            if not self._session_up:
                return
            await self.check()

    # ---- RosterBackend ----------------------------------------------------------------

    async def items(self, owner: str) -> dict[str, RosterItem]:
        user, domain = _split(owner)
        answer = await self._call("get_roster", {"user": user, "server": domain})
        if not isinstance(answer, list):
            raise RosterFailed("get_roster answered something that is not a list")
        found: dict[str, dict[str, Any]] = {}
        for entry in answer:
            if not isinstance(entry, dict) or not isinstance(entry.get("jid"), str):
                continue
            item = found.setdefault(entry["jid"], {"entry": entry, "groups": []})
            group = entry.get("group")
            if isinstance(group, str) and group:
                item["groups"].append(group)
        items = {}
        for contact, item in found.items():
            entry = item["entry"]
            subscription = entry.get("subscription")
            items[contact] = RosterItem(
                contact,
                subscription if subscription in ("none", "to", "from", "both") else "none",
                entry.get("nick") or None,
                tuple(item["groups"]),
                "subscribe" if entry.get("ask") in ("subscribe", "out", "both") else None,
            )
        return items

    async def set_item(self, owner: str, item: RosterItem) -> None:
        if any(GROUP_SEPARATOR in group for group in item.groups):
            # add_rosteritem would split it into several groups: not the user's own.
            raise RosterFailed(f"a group name holds {GROUP_SEPARATOR!r}, which add_rosteritem splits")
        user, domain = _split(owner)
        contact_user, _, contact_host = item.jid.rpartition("@")
        if not contact_user:  # a contact that is a bare domain, such as a service
            contact_user, contact_host = "", item.jid
        await self._call_ok("add_rosteritem", {
            "localuser": user, "localhost": domain,
            "user": contact_user, "host": contact_host,
            "nick": item.name or "", "group": GROUP_SEPARATOR.join(item.groups),
            "subs": item.subscription,
        })

    async def remove_item(self, owner: str, contact: str) -> None:
        """Clear the item's subscription, then delete it. delete_rosteritem of an item that
        still holds a direction makes ejabberd send the contact `unsubscribe` /
        `unsubscribed` (RFC 6121 2.5.2): the contact's roster would change (and a pending
        request of the contact be cancelled) behind the service's back. Cleared first, the
        contact's item is changed only by its own outbox row, as over XEP-0356. The owner's
        clients see two pushes: `none`, then `remove`."""
        user, domain = _split(owner)
        contact_user, _, contact_host = contact.rpartition("@")
        if not contact_user:
            contact_user, contact_host = "", contact
        where = {"localuser": user, "localhost": domain, "user": contact_user, "host": contact_host}
        current = (await self.items(owner)).get(contact)
        if current is None:
            return  # already gone: the goal is reached
        if current.subscription != "none":
            await self._call_ok("add_rosteritem", {
                **where, "nick": current.name or "", "group": GROUP_SEPARATOR.join(current.groups), "subs": "none",
            })
        await self._call_ok("delete_rosteritem", where)

    # ---- HTTP -------------------------------------------------------------------------

    async def _call_ok(self, command: str, args: dict[str, str]) -> None:
        answer = await self._call(command, args)
        if answer != 0:  # rescode: 0 is ok
            raise RosterFailed(f"{command} answered {answer!r}")

    async def _call(self, command: str, args: dict[str, str]) -> Any:
        """POST {url}/{command} with `args` as JSON. RosterRefused when the API cannot
        be reached or refuses the service (401, 403: the status turns UNAVAILABLE);
        RosterFailed when it refuses this one call."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self.timeout, auth=self.auth)
        try:
            async with self._http.post(f"{self.url}/{command}", json=args) as resp:
                status = resp.status
                try:
                    body: Any = await resp.json(content_type=None)
                except ValueError:
                    body = None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._withdraw(f"{type(exc).__name__} calling {command}")
            raise RosterRefused(type(exc).__name__) from exc
        if status in (401, 403):
            self._withdraw(f"{command} answered HTTP {status}")
            raise RosterRefused(f"http {status}")
        if status == 404:
            self._withdraw(f"{command} is unknown here (HTTP 404): is mod_admin_extra loaded?")
            raise RosterRefused("http 404")
        if status != 200:
            message = body.get("message") if isinstance(body, dict) else None
            raise RosterFailed(f"{command} answered HTTP {status}" + (f": {message}" if message else ""))
        return body


def _split(owner: str) -> tuple[str, str]:
    user, _, domain = owner.rpartition("@")
    return user, domain
