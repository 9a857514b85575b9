"""Family 1 over XMPP: the `jabber:iq:configuration` presence-handshake IQs."""

from __future__ import annotations

import logging

from slixmpp import Iq
from slixmpp.xmlstream.handler import CoroutineCallback
from slixmpp.xmlstream.matcher import StanzaPath

from component.clock import iso_ms
from component.commands import (
    CreatePresenceRequest,
    ListPresenceRequests,
    Transition,
    TransitionPresenceRequest,
    parse_bounded_int,
    parse_statuses,
)
from component.errors import BadRequest
from component.model import PresenceRequest, parse_bare_jid, parse_request_id
from component.xmpp import stanzas
from component.xmpp.session import Session, answers_errors
from component.xmpp.stanzas import NS_CONFIGURATION, NS_RSM

log = logging.getLogger(__name__)

DEFAULT_PAGE = 100


class PresenceSharingIqs(Session):
    """Mixin of PresenceComponent: create, get, transition and list presence requests."""

    def register_presence_sharing(self) -> None:
        self.feature(NS_CONFIGURATION)
        self.feature(NS_RSM)
        self.register_handler(
            CoroutineCallback(
                "presencehandshake iq", StanzaPath("iq/presencehandshake"), self.on_handshake_iq
            )
        )
        self.register_handler(
            CoroutineCallback(
                "presencehandshakes iq", StanzaPath("iq/presencehandshakes"), self.on_list_iq
            )
        )

    @answers_errors
    async def on_handshake_iq(self, iq: Iq) -> Iq:
        caller = await self._caller(iq)
        payload = iq["presencehandshake"]
        action = payload["action"]
        if iq["type"] == "get":
            if action:
                raise BadRequest("a get carries no action")
            request = await self.sharing.get(caller, parse_request_id(payload["id"], "id"))
            return self._request_reply(iq, request)
        if action == "create":
            if not payload["to"]:
                raise BadRequest("create needs a 'to' attribute with the user's JID")
            request = await self.sharing.create(
                CreatePresenceRequest(caller, to_jid=parse_bare_jid(payload["to"], "to"))
            )
        elif action in Transition._value2member_map_:
            request = await self.sharing.transition(
                TransitionPresenceRequest(
                    caller, parse_request_id(payload["id"], "id"), Transition(action)
                )
            )
        else:
            raise BadRequest("action must be create, accept, decline, cancel or interrupt")
        return self._request_reply(iq, request, action)

    @answers_errors
    async def on_list_iq(self, iq: Iq) -> Iq:
        caller = await self._caller(iq)
        if iq["type"] != "get":
            raise BadRequest("presencehandshakes is read with a get")
        query = iq["presencehandshakes"]
        box = query["type"]
        if box not in ("received", "sent"):
            raise BadRequest("type must be received or sent")
        statuses = parse_statuses(query["status"].split(","))
        rsm = query["rsm"] if query.xml.find(f"{{{NS_RSM}}}set") is not None else None
        limit, offset, after = DEFAULT_PAGE, 0, None
        if rsm is not None:
            if rsm["before"] or rsm.xml.find(f"{{{NS_RSM}}}before") is not None:
                raise BadRequest("paging backwards (<before/>) is not supported; use <after/> or <index/>")
            limit = parse_bounded_int(rsm["max"], "max", DEFAULT_PAGE, 0, self.max_page_size)
            offset = parse_bounded_int(rsm["index"], "index", 0, 0, 10**9)
            if rsm["after"]:
                after = parse_request_id(rsm["after"], "after")
        page = await self.sharing.list(
            ListPresenceRequests(caller, box, statuses, limit, offset, False, after)
        )
        reply = iq.reply(clear=True)
        out = reply["presencehandshakes"]
        out["type"] = box
        out["status"] = ",".join(sorted(s.value for s in statuses))
        for request in page.items:
            item = stanzas.PresenceHandshake()
            _fill(item, request)
            out.append(item)
        result_set = out["rsm"]
        if page.items:
            result_set["first"] = page.items[0].id
            if after is None:
                result_set["first_index"] = str(offset)
            result_set["last"] = page.items[-1].id
        result_set["count"] = str(page.total)
        return reply

    def _request_reply(self, iq: Iq, request: PresenceRequest, action: str | None = None) -> Iq:
        reply = iq.reply(clear=True)
        item = reply["presencehandshake"]
        _fill(item, request)
        if action:
            item["action"] = action
        return reply


def _fill(item: stanzas.PresenceHandshake, request: PresenceRequest) -> None:
    item["id"] = request.id
    item["status"] = request.status.value
    item["fromUserId"] = request.from_user.id
    item["fromJid"] = request.from_user.jid
    item["toUserId"] = request.to_user.id
    item["toJid"] = request.to_user.jid
    for attr, value in (
        ("requestDate", request.request_date),
        ("acceptationDate", request.acceptation_date),
        ("declinationDate", request.declination_date),
        ("cancellationDate", request.cancellation_date),
    ):
        if value is not None:
            item[attr] = iso_ms(value)
