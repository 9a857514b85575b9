"""Family 3 over XMPP: the `urn:xmpp:presence-consent:share:0` device-sharing IQs."""

from __future__ import annotations

import logging

from slixmpp import Iq
from slixmpp.xmlstream.handler import CoroutineCallback
from slixmpp.xmlstream.matcher import StanzaPath

from component.commands import ShareAnswer, ShareDevice
from component.device_sharing import share_fields
from component.errors import BadRequest
from component.model import parse_invite_code
from component.xmpp import stanzas
from component.xmpp.session import Session, answers_errors
from component.xmpp.stanzas import NS_SHARE

log = logging.getLogger(__name__)


class DeviceShareIqs(Session):
    """Mixin of PresenceComponent: share, answer, delete and list device shares."""

    def register_device_sharing(self) -> None:
        self.feature(NS_SHARE)
        self.register_handler(
            CoroutineCallback("deviceshare iq", StanzaPath("iq/deviceshare"), self.on_share_iq)
        )
        self.register_handler(
            CoroutineCallback("deviceshares iq", StanzaPath("iq/deviceshares"), self.on_shares_iq)
        )

    @answers_errors
    async def on_share_iq(self, iq: Iq) -> Iq:
        if iq["type"] != "set":
            raise BadRequest("deviceshare commands are sent with a set")
        caller = await self._caller(iq)
        command = iq["deviceshare"]
        fields = {k: v for k, v in command.xml.attrib.items() if k != "action"}
        action = command["action"]
        reply = iq.reply(clear=True)
        result = reply["deviceshare"]
        if action == "share":
            created = await self.device_sharing.share(
                ShareDevice.from_fields(caller, fields, self.device_sharing.settings.max_expire_s)
            )
            result["invite_code"] = created.invite_code
        elif action in ("cancel", "accept", "deny"):
            answer = ShareAnswer.from_fields(caller, fields)
            done = await getattr(self.device_sharing, action)(answer)
            result["invite_code"] = done.invite_code
            result["state"] = done.state.value
        elif action == "delete":
            code = parse_invite_code(fields.get("invite_code"))
            await self.device_sharing.delete(caller, code)
            result["invite_code"] = code
        else:
            raise BadRequest("action must be share, cancel, accept, deny or delete")
        return reply

    @answers_errors
    async def on_shares_iq(self, iq: Iq) -> Iq:
        caller = await self._caller(iq)
        if iq["type"] != "get":
            raise BadRequest("deviceshares is read with a get")
        reply = iq.reply(clear=True)
        out = reply["deviceshares"]
        for share in await self.device_sharing.list(caller):
            item = stanzas.DeviceShareElement()
            for key, value in share_fields(share).items():
                if value is not None:
                    item[key] = str(value)
            out.append(item)
        return reply
