"""Stock-client flows on the real Prosody: every user flow driven by slixmpp's own
XEP-0050 client (`xep_0050.send_command`, XEP-0004 forms), nothing else.

- ask and accept by commands only: management messages carry a readable body, rosters
  change as with REST;
- refusals come back as `<note type="error">` (the same domain rules as REST);
- a device's manager shares it as a QR code; the holder redeems it through the node
  of the invitation's XMPP URI; the manager cancels it by command;
- an XMPP admin sets a state and lists subscriptions by command;
- the XMPP basics: ping, version, disco, an unserved namespace, a message to the
  service and to an extension, a subscription to the service's own JID.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import slixmpp
from slixmpp.exceptions import IqError

from local_prosody import LocalProsody
from tests.e2e.conftest import (
    COMPONENT,
    TIMEOUT,
    RestApi,
    RunningService,
    ServiceFactory,
    XmppUser,
    jid,
    management,
)
from tests.e2e.test_subscriptions import ext_jid, provision, shows, subscribe

pytestmark = pytest.mark.e2e

NODE = "urn:xmpp:presence-consent:cmd:"


@pytest.fixture
async def service(make_service: ServiceFactory, ensure_prosody_up: LocalProsody) -> RunningService:
    """The service, with dave as its XMPP admin."""
    return await make_service(ensure_prosody_up, auth={"xmpp_admins": [jid("dave")]})


async def execute(
    user: XmppUser, node: str, values: dict[str, str] | None = None,
    action: str = "execute", sessionid: str | None = None,
) -> slixmpp.Iq:
    """One command step, sent by slixmpp's XEP-0050 client."""
    client = user.client
    assert client is not None
    payload = None
    if values is not None:
        payload = client.plugin["xep_0004"].make_form(ftype="submit")
        for var, value in values.items():
            payload.add_field(var=var, value=value)
    return await client.plugin["xep_0050"].send_command(
        COMPONENT, node, action=action, payload=payload, sessionid=sessionid, timeout=TIMEOUT
    )


async def submit(user: XmppUser, node: str, form: slixmpp.Iq, values: dict[str, str]) -> slixmpp.Iq:
    """Complete the form a command step showed with `values`."""
    return await execute(user, node, values, "complete", form["command"]["sessionid"])


async def run(user: XmppUser, node: str, values: dict[str, str]) -> slixmpp.Iq:
    """Execute a command and complete its first form with `values`."""
    first = await execute(user, node)
    assert first["command"]["status"] == "executing", first
    return await submit(user, node, first, values)


def note(answer: slixmpp.Iq) -> tuple[str, str]:
    [found] = answer["command"]["notes"]
    return found


def options(answer: slixmpp.Iq, var: str) -> list[str]:
    return [o["value"] for o in answer["command"]["form"].get_fields()[var]["options"]]


def result_value(answer: slixmpp.Iq, var: str) -> Any:
    return answer["command"]["form"].get_fields()[var]["value"]


async def test_ask_and_accept_with_commands_only(alice: XmppUser, bob: XmppUser) -> None:
    assert alice.client is not None
    listed = await alice.client.plugin["xep_0050"].get_commands(COMPONENT, timeout=TIMEOUT)
    nodes = {item[1] for item in listed["disco_items"]["items"]}
    assert nodes == {NODE + "ask", NODE + "requests", NODE + "shares"}

    asked = await run(alice, NODE + "ask", {"jid": bob.jid})
    assert asked["command"]["status"] == "completed"
    kind, text = note(asked)
    assert kind == "info" and text.startswith(f"Asked {bob.jid} to share their presence with you")

    [to_bob] = await bob.next_management()
    request_id = to_bob.handshake["id"]
    assert to_bob == management(request_id, "create", "received", "pending")
    assert to_bob.body == (
        f"{alice.jid} asks to see your presence. To accept or decline, run the command"
        f' "Presence requests" of {COMPONENT}: xmpp:{COMPONENT}?command;node={NODE}requests'
    )
    [to_alice] = await alice.next_management()
    assert to_alice == management(request_id, "create", "sent", "pending")

    form = await execute(bob, NODE + "requests")
    assert options(form, "request") == [request_id]
    accepted = await submit(bob, NODE + "requests", form, {"request": request_id, "action": "accept"})
    assert note(accepted) == ("info", f"You accepted: {alice.jid} now sees your presence.")
    [update] = await alice.next_management()
    assert update == management(request_id, "update", "sent", "accepted")
    assert update.body == f"{bob.jid} accepted: you now see their presence."
    await alice.roster_push_for(bob.jid, "to")
    await bob.roster_push_for(alice.jid, "from")

    # And bob stops it the same way.
    form = await execute(bob, NODE + "requests")
    stopped = await submit(bob, NODE + "requests", form, {"request": request_id, "action": "interrupt"})
    assert note(stopped) == ("info", f"You stopped sharing your presence with {alice.jid}.")
    [ended] = await alice.next_management()
    assert ended == management(request_id, "delete", "sent", "interrupted")
    assert ended.body == f"{bob.jid} stopped sharing their presence with you."


async def test_refusals_come_back_as_error_notes(alice: XmppUser, bob: XmppUser) -> None:
    again = await run(alice, NODE + "ask", {"jid": alice.jid})
    assert again["command"]["status"] == "executing"  # the form again, to correct
    assert note(again) == ("error", "cannot ask yourself to share presence")

    await run(alice, NODE + "ask", {"jid": bob.jid})
    duplicate = await run(alice, NODE + "ask", {"jid": bob.jid})
    assert duplicate["command"]["status"] == "completed"
    assert note(duplicate) == ("error", f"a pending or accepted request to {bob.jid} already exists")

    form = await execute(alice, NODE + "requests")
    [request_id] = options(form, "request")
    refused = await submit(alice, NODE + "requests", form, {"request": request_id, "action": "accept"})
    assert note(refused) == ("error", "only the request's receiver may accept it")

    with pytest.raises(IqError) as forbidden:
        await execute(alice, NODE + "set-state")
    assert forbidden.value.iq["error"]["condition"] == "forbidden"


async def test_share_a_device_and_redeem_the_invitation(api: RestApi, alice: XmppUser, carol: XmppUser) -> None:
    tenant = await provision(api)  # alice manages the desk phone (extension 2001)
    form = await execute(alice, NODE + "share-device")
    assert options(form, "device") == [tenant.desk_id, tenant.soft_id]
    shared = await submit(
        alice, NODE + "share-device", form, {"device": tenant.desk_id, "mode": "qrcode", "expire": "600"}
    )
    code = result_value(shared, "invite_code")
    uri = result_value(shared, "uri")
    assert uri == f"xmpp:{COMPONENT}?command;node={NODE}shares:{code}"
    [created] = await alice.next_sharing()
    assert (created.attrs["id"], created.attrs["status"]) == (code, "pending")

    # carol's phone scans the QR code: it opens the node the URI names.
    node = uri.partition("node=")[2]
    invitation = await execute(carol, node)
    assert invitation["command"]["form"]["instructions"].startswith(
        f'{alice.jid} invites you to see the presence of "Desk phone"'
    )
    accepted = await submit(carol, node, invitation, {"invite_code": code, "action": "accept"})
    assert note(accepted)[0] == "info"
    await carol.roster_push_for(ext_jid("2001"), "to")
    assert await carol.next_extension_presence() == [shows("2001", "terminated", 1)]
    [told] = await alice.next_sharing()
    assert told.attrs["status"] == "accept"
    assert told.body == f'{carol.jid} accepted your invitation to see "Desk phone".'

    # alice revokes it with the shares command.
    form = await execute(alice, NODE + "shares")
    assert code in options(form, "invite_code")
    canceled = await submit(alice, NODE + "shares", form, {"invite_code": code, "action": "cancel"})
    assert note(canceled) == ("info", "The invitation is canceled; the access it gave is revoked.")
    [gone] = await carol.next_extension_presence()
    assert gone.type == "unavailable"
    await carol.roster_push_for(ext_jid("2001"), "remove")


async def test_an_admin_sets_a_state_and_lists_subscriptions(api: RestApi, bob: XmppUser, dave: XmppUser) -> None:
    await provision(api)
    await subscribe(bob, "*3101")
    form = await execute(dave, NODE + "set-state")  # one account: no realm to choose
    assert options(form, "state") == ["confirmed", "early", "terminated", "reset"]
    done = await submit(dave, NODE + "set-state", form, {"extension": "*3101", "state": "confirmed"})
    assert note(done) == ("info", "*3101 in example.test: confirmed; subscribers are told.")
    assert await bob.next_extension_presence() == [shows("*3101", "confirmed", 2)]

    listing = await run(dave, NODE + "subscriptions", {})
    assert note(listing) == ("info", "1 subscription(s) in example.test.")
    items = listing["command"]["form"]["items"]
    assert [(i["subscriber"], i["extension"]) for i in items] == [(bob.jid, "*3101")]


async def test_the_xmpp_basics(alice: XmppUser) -> None:
    client = alice.client
    assert client is not None
    assert await client.plugin["xep_0199"].ping(COMPONENT, timeout=TIMEOUT) >= 0
    version = await client.plugin["xep_0092"].get_version(COMPONENT, timeout=TIMEOUT)
    assert version["software_version"]["name"] == "presence-consent"
    info = await client.plugin["xep_0030"].get_info(jid=COMPONENT, timeout=TIMEOUT)
    features = set(info["disco_info"]["features"])
    assert {"urn:xmpp:ping", "jabber:iq:version", "http://jabber.org/protocol/commands"} <= features

    unknown = client.make_iq_get(queryxmlns="urn:example:nothing", ito=COMPONENT)
    with pytest.raises(IqError) as refused:
        await unknown.send(timeout=TIMEOUT)
    assert refused.value.iq["error"]["condition"] == "service-unavailable"

    client.send_message(mto=COMPONENT, mbody="hello?", mtype="chat")
    help_reply = await _next(alice)
    assert help_reply["type"] == "chat" and "/cmd list" in help_reply["body"]
    client.send_message(mto=ext_jid("1001"), mbody="hi", mtype="chat")
    error = await _next(alice)
    assert (error["type"], error["from"].bare) == ("error", ext_jid("1001"))
    assert error["error"]["condition"] == "service-unavailable"

    alice.send_subscription(COMPONENT, "subscribe")
    await alice.roster_push_for(COMPONENT, "to")


async def _next(user: XmppUser) -> slixmpp.Message:
    async with asyncio.timeout(TIMEOUT):
        return await user.service_messages.get()
