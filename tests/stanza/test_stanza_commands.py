"""Ad-hoc commands (XEP-0050): forms in, forms out, refusals, sessions, disco."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from slixmpp.xmlstream import StanzaBase

from storage import Database
from stanza_rig import COMPONENT, Home, NS_STANZAS, Wire, iq, same_xml

NS_CMD = "http://jabber.org/protocol/commands"
NS_X = "jabber:x:data"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NODE = "urn:xmpp:presence-consent:cmd:"
ALICE = "alice@example.test/phone"
BOB = "bob@example.test/desk"
CAROL = "carol@example.test/r"
ADMIN = "admin@example.test/console"


def command(
    stanza_id: str, sender: str, node: str, action: str | None = "execute",
    sessionid: str | None = None, form: dict[str, str] | None = None, to: str = COMPONENT,
) -> str:
    attrs = f"node='{node}'"
    if action:
        attrs += f" action='{action}'"
    if sessionid:
        attrs += f" sessionid='{sessionid}'"
    payload = ""
    if form is not None:
        payload = f"<x xmlns='{NS_X}' type='submit'>" + "".join(
            f"<field var='{var}'><value>{value}</value></field>" for var, value in form.items()
        ) + "</x>"
    return (
        f"<iq type='set' id='{stanza_id}' from='{sender}' to='{to}'>"
        f"<command xmlns='{NS_CMD}' {attrs}>{payload}</command></iq>"
    )


@dataclass
class Step:
    status: str
    sessionid: str
    notes: list[tuple[str, str]]
    form: dict[str, dict[str, Any]]  # var -> {type, value, options}
    form_type: str | None
    reply: StanzaBase


def step_of(reply: StanzaBase) -> Step:
    assert reply["type"] == "result", str(reply)
    element = reply["command"]
    x = element.xml.find(f"{{{NS_X}}}x")
    fields: dict[str, dict[str, Any]] = {}
    if x is not None:
        for f in x.findall(f"{{{NS_X}}}field"):
            fields[f.get("var", "")] = {
                "type": f.get("type"),
                "label": f.get("label"),
                "value": [v.text for v in f.findall(f"{{{NS_X}}}value")],
                "options": [o.find(f"{{{NS_X}}}value").text for o in f.findall(f"{{{NS_X}}}option")],
            }
    return Step(
        element["status"], element["sessionid"], element["notes"], fields,
        x.get("type") if x is not None else None, reply,
    )


async def run(wire: Wire, sender: str, node: str, form: dict[str, str], action: str = "complete") -> tuple[Step, Step]:
    """Execute a command, then submit its first form."""
    first = step_of(await wire.ask(command("e1", sender, node)))
    assert first.status == "executing", str(first.reply)
    second = step_of(await wire.ask(command("e2", sender, node, action, first.sessionid, form)))
    return first, second


async def request_rows(db: Database) -> list[tuple[Any, ...]]:
    async with db.reader.execute("SELECT from_user_id, to_user_id, status FROM presence_requests") as cur:
        return [tuple(r) for r in await cur.fetchall()]


def iq_error(reply: StanzaBase) -> tuple[str, str, str]:
    assert reply["type"] == "error", str(reply)
    return reply["error"]["type"], reply["error"]["condition"], reply["error"]["text"]


# ---- ask ----------------------------------------------------------------------------------------


async def test_ask_shows_a_form_then_creates_the_request(wire: Wire, db: Database) -> None:
    reply = await wire.ask(command("e1", ALICE, NODE + "ask"))
    sessionid = reply["command"]["sessionid"]
    assert len(sessionid) >= 20
    assert same_xml(
        reply,
        f"<iq type='result' id='e1' from='{COMPONENT}' to='{ALICE}'>"
        f"<command xmlns='{NS_CMD}' node='{NODE}ask' sessionid='{sessionid}' status='executing'>"
        "<actions execute='complete'><complete/></actions>"
        f"<x xmlns='{NS_X}' type='form'><title>Ask for someone's presence</title>"
        "<instructions>Whose presence would you like to see? They are asked to accept or decline.</instructions>"
        "<field var='jid' type='jid-single' label='Their address (JID)'><required/></field></x>"
        "</command></iq>",
    ), str(reply)
    done = step_of(await wire.ask(command("e2", ALICE, NODE + "ask", "complete", sessionid, {"jid": "Bob@Example.test"})))
    assert done.status == "completed"
    [(kind, text)] = done.notes
    assert kind == "info"
    assert text.startswith("Asked bob@example.test to share their presence with you (request ")
    assert len(await request_rows(db)) == 1


async def test_a_bad_jid_shows_the_form_again_with_what_to_correct(wire: Wire, db: Database) -> None:
    first, again = await run(wire, ALICE, NODE + "ask", {"jid": "not a jid"})
    assert again.status == "executing"
    assert again.sessionid == first.sessionid
    assert again.notes == [("error", "jid must be a bare JID such as user@example.org")]
    assert again.form["jid"]["value"] == ["not a jid"]  # nothing typed is lost
    fixed = step_of(await wire.ask(command("e3", ALICE, NODE + "ask", "complete", first.sessionid, {"jid": "bob@example.test"})))
    assert fixed.status == "completed"
    assert len(await request_rows(db)) == 1


async def test_a_refused_ask_completes_with_the_domain_error(wire: Wire) -> None:
    await run(wire, ALICE, NODE + "ask", {"jid": "bob@example.test"})
    _, refused = await run(wire, ALICE, NODE + "ask", {"jid": "bob@example.test"})
    assert refused.status == "completed"
    assert refused.notes == [("error", "a pending or accepted request to bob@example.test already exists")]


async def test_a_form_sent_with_execute_runs_at_once(wire: Wire, db: Database) -> None:
    done = step_of(await wire.ask(command("e1", ALICE, NODE + "ask", form={"jid": "bob@example.test"})))
    assert done.status == "completed" and done.notes[0][0] == "info"
    assert len(await request_rows(db)) == 1


# ---- sessions -------------------------------------------------------------------------------------


async def test_a_session_is_its_openers_only(wire: Wire, db: Database) -> None:
    first = step_of(await wire.ask(command("e1", ALICE, NODE + "ask")))
    for sender in (BOB, "alice@example.test/other-device"):
        stolen = await wire.ask(command("e2", sender, NODE + "ask", "complete", first.sessionid, {"jid": "carol@example.test"}))
        assert iq_error(stolen) == (
            "modify", "bad-request", "no such command session (it ended, expired or is not yours)"
        )
    assert await request_rows(db) == []
    # Still alice's to finish.
    done = step_of(await wire.ask(command("e3", ALICE, NODE + "ask", "complete", first.sessionid, {"jid": "carol@example.test"})))
    assert done.status == "completed"
    # And once completed, gone.
    again = await wire.ask(command("e4", ALICE, NODE + "ask", "complete", first.sessionid, {"jid": "bob@example.test"}))
    assert iq_error(again)[1] == "bad-request"


async def test_cancel_ends_the_session(wire: Wire, db: Database) -> None:
    first = step_of(await wire.ask(command("e1", ALICE, NODE + "ask")))
    canceled = step_of(await wire.ask(command("e2", ALICE, NODE + "ask", "cancel", first.sessionid)))
    assert canceled.status == "canceled"
    late = await wire.ask(command("e3", ALICE, NODE + "ask", "complete", first.sessionid, {"jid": "bob@example.test"}))
    assert iq_error(late)[1] == "bad-request"
    assert await request_rows(db) == []


async def test_one_jid_holds_a_bounded_number_of_sessions(wire: Wire) -> None:
    opened = [step_of(await wire.ask(command(f"e{n}", ALICE, NODE + "ask"))).sessionid for n in range(12)]
    oldest = await wire.ask(command("x1", ALICE, NODE + "ask", "complete", opened[0], {"jid": "bob@example.test"}))
    assert iq_error(oldest)[1] == "bad-request"
    newest = step_of(await wire.ask(command("x2", ALICE, NODE + "ask", "complete", opened[-1], {"jid": "bob@example.test"})))
    assert newest.status == "completed"


@pytest.mark.parametrize(
    ("node", "to", "condition"),
    [
        (NODE + "nope", COMPONENT, "item-not-found"),
        (NODE + "ask", f"1001@{COMPONENT}", "item-not-found"),
        (NODE + "ask:argument", COMPONENT, "item-not-found"),
    ],
)
async def test_unknown_commands_are_item_not_found(wire: Wire, node: str, to: str, condition: str) -> None:
    reply = await wire.ask(command("e1", ALICE, node, to=to))
    assert iq_error(reply)[1] == condition


async def test_an_unknown_action_is_refused(wire: Wire) -> None:
    reply = await wire.ask(command("e1", ALICE, NODE + "ask", action="explode"))
    assert iq_error(reply) == (
        "modify", "bad-request", "action must be one of execute, next, complete, prev, cancel"
    )


async def test_an_oversized_form_is_refused(wire: Wire) -> None:
    form = {f"f{n}": "x" for n in range(40)}
    reply = await wire.ask(command("e1", ALICE, NODE + "ask", form=form))
    assert iq_error(reply) == ("modify", "bad-request", "a submitted form holds at most 32 fields")
    reply = await wire.ask(command("e2", ALICE, NODE + "ask", form={"jid": "x" * 3000}))
    assert iq_error(reply)[1] == "bad-request"


async def test_users_of_other_domains_may_not_run_commands(wire: Wire) -> None:
    reply = await wire.ask(command("e1", "mallory@evil.test/x", NODE + "ask"))
    assert iq_error(reply) == ("auth", "forbidden", "users of evil.test are not served here")


# ---- requests --------------------------------------------------------------------------------------


async def test_the_receiver_accepts_by_command(wire: Wire, db: Database, home: Home) -> None:
    await run(wire, ALICE, NODE + "ask", {"jid": "bob@example.test"})
    form = step_of(await wire.ask(command("e1", BOB, NODE + "requests")))
    [request_id] = form.form["request"]["options"]
    assert form.form["action"]["options"] == ["accept", "decline", "cancel", "interrupt"]
    done = step_of(await wire.ask(command(
        "e2", BOB, NODE + "requests", "complete", form.sessionid, {"request": request_id, "action": "accept"}
    )))
    assert done.notes == [("info", "You accepted: alice@example.test now sees your presence.")]
    assert await request_rows(db) == [(home.alice_id, home.bob_id, "accepted")]
    # The accepted request is now one bob may interrupt; alice has none to act on.
    again = step_of(await wire.ask(command("e3", BOB, NODE + "requests")))
    assert again.form["request"]["options"] == [request_id]
    nothing = step_of(await wire.ask(command("e4", ALICE, NODE + "requests")))
    assert nothing.status == "completed"
    assert nothing.notes == [("info", "You have no presence request to answer, cancel or stop.")]


async def test_a_transition_the_caller_may_not_make_is_refused_by_the_same_rule(wire: Wire, db: Database) -> None:
    await run(wire, ALICE, NODE + "ask", {"jid": "bob@example.test"})
    form = step_of(await wire.ask(command("e1", ALICE, NODE + "requests")))
    [request_id] = form.form["request"]["options"]
    done = step_of(await wire.ask(command(
        "e2", ALICE, NODE + "requests", "complete", form.sessionid, {"request": request_id, "action": "accept"}
    )))
    assert done.notes == [("error", "only the request's receiver may accept it")]
    assert [r[2] for r in await request_rows(db)] == ["pending"]


# ---- device sharing --------------------------------------------------------------------------------


async def test_a_manager_shares_a_device_and_the_invitee_accepts(wire: Wire, db: Database, home: Home) -> None:
    form = step_of(await wire.ask(command("e1", ALICE, NODE + "share-device")))
    assert form.form["device"]["options"] == [home.hall.id]
    assert form.form["mode"]["options"] == ["app", "qrcode"]  # no e-mail without [smtp] host
    done = step_of(await wire.ask(command(
        "e2", ALICE, NODE + "share-device", "complete", form.sessionid,
        {"device": home.hall.id, "mode": "app", "user": "bob@example.test", "expire": "3600"},
    )))
    assert done.status == "completed" and done.form_type == "result"
    [code] = done.form["invite_code"]["value"]
    assert done.form["uri"]["value"] == [f"xmpp:{COMPONENT}?command;node={NODE}shares:{code}"]
    assert done.notes[0][1].endswith("bob@example.test is told and can accept it.")

    shares = step_of(await wire.ask(command("e3", BOB, NODE + "shares")))
    assert shares.form["invite_code"]["options"] == [code, "other"]
    accepted = step_of(await wire.ask(command(
        "e4", BOB, NODE + "shares", "complete", shares.sessionid, {"invite_code": code, "action": "accept"}
    )))
    assert accepted.notes == [("info", "You accepted: the device's presence now shows in your contacts.")]
    async with db.reader.execute("SELECT state FROM device_shares") as cur:
        assert [r[0] for r in await cur.fetchall()] == ["accept"]


async def test_a_qr_code_is_redeemed_through_the_uri_node(wire: Wire, db: Database, home: Home) -> None:
    form = step_of(await wire.ask(command("e1", ALICE, NODE + "share-device")))
    done = step_of(await wire.ask(command(
        "e2", ALICE, NODE + "share-device", "complete", form.sessionid,
        {"device": home.hall.id, "mode": "qrcode", "expire": "600"},
    )))
    [code] = done.form["invite_code"]["value"]
    assert done.form["qrcode"]["value"][0].endswith(f"/v2/share/device/qrcode/{code}.png?content=uri")
    # carol scans the URI: her client executes the node that carries the code.
    opened = step_of(await wire.ask(command("e3", CAROL, f"{NODE}shares:{code}")))
    assert opened.form["invite_code"] == {"type": "hidden", "label": None, "value": [code], "options": []}
    assert opened.form["action"]["options"] == ["accept", "deny"]
    accepted = step_of(await wire.ask(command(
        "e4", CAROL, f"{NODE}shares:{code}", "complete", opened.sessionid, {"invite_code": code, "action": "accept"}
    )))
    assert accepted.notes[0][0] == "info"
    # Someone else scanning it later learns why it no longer works.
    late = step_of(await wire.ask(command("e5", BOB, f"{NODE}shares:{code}")))
    assert late.notes == [("error", "the share is already accepted")]


async def test_a_malformed_code_in_the_node_is_refused(wire: Wire) -> None:
    done = step_of(await wire.ask(command("e1", CAROL, f"{NODE}shares:short")))
    assert done.notes == [("error", "invite_code is not a valid invite code")]


async def test_share_device_tells_a_user_who_manages_nothing(wire: Wire, home: Home) -> None:
    done = step_of(await wire.ask(command("e1", BOB, NODE + "share-device")))
    assert done.status == "completed"
    assert done.notes[0][1].startswith("You manage no device.")


# ---- admins: set-state and subscriptions ----------------------------------------------------------


async def test_an_admin_sets_a_state_by_command(wire: Wire, db: Database, home: Home) -> None:
    form = step_of(await wire.ask(command("e1", ADMIN, NODE + "set-state")))
    assert set(form.form) == {"realm", "extension", "device", "user", "state"}
    assert form.form["device"]["options"] == [home.hall.id]
    assert form.form["state"]["options"] == ["confirmed", "early", "terminated", "reset"]
    done = step_of(await wire.ask(command(
        "e2", ADMIN, NODE + "set-state", "complete", form.sessionid, {"device": home.hall.id, "state": "confirmed"}
    )))
    assert done.notes == [("info", "1001 in example.test: confirmed; subscribers are told.")]
    async with db.reader.execute("SELECT realm, extension, state FROM extension_states") as cur:
        assert [tuple(r) for r in await cur.fetchall()] == [("example.test", "1001", "confirmed")]


async def test_set_state_needs_exactly_one_target(wire: Wire, home: Home) -> None:
    _, again = await run(wire, ADMIN, NODE + "set-state", {"extension": "*3101", "device": home.hall.id, "state": "early"})
    assert again.status == "executing"
    assert again.notes == [("error", "give exactly one of extension, device or user")]


async def test_admin_commands_are_forbidden_to_others(wire: Wire, home: Home) -> None:
    for node in ("set-state", "subscriptions"):
        reply = await wire.ask(command("e1", ALICE, NODE + node))
        assert iq_error(reply) == ("auth", "forbidden", "only the service's XMPP admins may run this command")


async def test_an_admin_lists_an_accounts_subscriptions(wire: Wire, home: Home) -> None:
    await wire.deliver(f"<presence type='subscribe' from='{BOB}' to='*3101@{COMPONENT}'/>")
    form = step_of(await wire.ask(command("e1", ADMIN, NODE + "subscriptions")))
    done = step_of(await wire.ask(command("e2", ADMIN, NODE + "subscriptions", "complete", form.sessionid, {})))
    assert done.notes == [("info", "1 subscription(s) in example.test.")]
    x = done.reply["command"].xml.find(f"{{{NS_X}}}x")
    reported = [f.get("var") for f in x.find(f"{{{NS_X}}}reported")]
    assert reported == ["subscriber", "extension", "event", "since"]
    [item] = x.findall(f"{{{NS_X}}}item")
    values = {f.get("var"): f.find(f"{{{NS_X}}}value").text for f in item}
    assert (values["subscriber"], values["extension"], values["event"]) == ("bob@example.test", "*3101", "presence")


# ---- disco ---------------------------------------------------------------------------------------------


async def command_items(wire: Wire, sender: str) -> list[str]:
    reply = await wire.ask(iq("get", "d1", sender, f"<query xmlns='{NS_ITEMS}' node='{NS_CMD}'/>"))
    return [i.get("node") for i in reply.xml.find(f"{{{NS_ITEMS}}}query")]


async def test_disco_lists_the_commands_each_caller_may_run(wire: Wire, home: Home) -> None:
    user = [NODE + "ask", NODE + "requests", NODE + "shares"]
    assert await command_items(wire, ALICE) == [*user, NODE + "share-device"]
    assert await command_items(wire, BOB) == user
    assert await command_items(wire, ADMIN) == [*user, NODE + "set-state", NODE + "subscriptions"]
    assert await command_items(wire, "mallory@evil.test/x") == []


async def test_disco_items_of_the_service_name_the_commands_and_the_callers_extensions(wire: Wire, home: Home) -> None:
    await wire.deliver(f"<presence type='subscribe' from='{BOB}' to='*3101@{COMPONENT}'/>")
    reply = await wire.ask(iq("get", "d2", BOB, f"<query xmlns='{NS_ITEMS}'/>"))
    assert same_xml(
        reply,
        f"<iq type='result' id='d2' from='{COMPONENT}' to='{BOB}'><query xmlns='{NS_ITEMS}'>"
        f"<item jid='{COMPONENT}' node='{NS_CMD}' name='Commands'/>"
        f"<item jid='*3101@{COMPONENT}' name='*3101'/></query></iq>",
    ), str(reply)


async def test_disco_info_of_a_command_node(wire: Wire) -> None:
    reply = await wire.ask(iq(
        "get", "d3", ALICE, f"<query xmlns='http://jabber.org/protocol/disco#info' node='{NODE}ask'/>"
    ))
    assert same_xml(
        reply,
        f"<iq type='result' id='d3' from='{COMPONENT}' to='{ALICE}'>"
        f"<query xmlns='http://jabber.org/protocol/disco#info' node='{NODE}ask'>"
        "<identity category='automation' type='command-node' name=\"Ask for someone's presence\"/>"
        f"<feature var='{NS_CMD}'/><feature var='{NS_X}'/></query></iq>",
    ), str(reply)


# ---- the XMPP basics -------------------------------------------------------------------------------


async def test_an_iq_in_a_namespace_nobody_serves_is_service_unavailable(wire: Wire) -> None:
    reply = await wire.ask(iq("get", "u1", ALICE, "<query xmlns='urn:example:nothing'/>"))
    assert same_xml(
        reply,
        f"<iq type='error' id='u1' from='{COMPONENT}' to='{ALICE}'>"
        f"<error type='cancel'><service-unavailable xmlns='{NS_STANZAS}'/></error></iq>",
    ), str(reply)


async def test_ping_and_version_are_answered(wire: Wire) -> None:
    pong = await wire.ask(iq("get", "p1", ALICE, "<ping xmlns='urn:xmpp:ping'/>"))
    assert same_xml(pong, f"<iq type='result' id='p1' from='{COMPONENT}' to='{ALICE}'/>"), str(pong)
    version = await wire.ask(iq("get", "v1", ALICE, "<query xmlns='jabber:iq:version'/>"))
    assert version["type"] == "result"
    assert version["software_version"]["name"] == "presence-consent"
    assert version["software_version"]["version"]
    assert not version["software_version"]["os"]  # nothing about the host


async def test_a_message_to_the_service_gets_a_help_reply_once_per_interval(wire: Wire) -> None:
    wire.feed(f"<message type='chat' id='m1' from='{ALICE}' to='{COMPONENT}'><body>hello?</body></message>")
    help_reply = await wire.nth(0)
    assert (help_reply["type"], help_reply["to"].full, help_reply["from"].full) == ("chat", ALICE, COMPONENT)
    assert "/cmd list" in help_reply["body"] and '"Presence requests"' in help_reply["body"]
    assert "Set a presence state" not in help_reply["body"]
    wire.feed(f"<message type='chat' id='m2' from='{ALICE}' to='{COMPONENT}'><body>hello??</body></message>")
    for ignored in (
        f"<message type='error' from='{BOB}' to='{COMPONENT}'><body>x</body></message>",
        f"<message type='chat' from='{BOB}' to='{COMPONENT}'><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
    ):
        wire.feed(ignored)
    wire.feed(iq("get", "p2", ALICE, "<ping xmlns='urn:xmpp:ping'/>"))
    await wire.wait_for("p2")
    assert len(wire.sent) == 2  # the help, and the ping's answer


async def test_a_message_to_an_extension_is_an_error(wire: Wire) -> None:
    wire.feed(f"<message type='chat' id='m1' from='{BOB}' to='1001@{COMPONENT}'><body>hi</body></message>")
    error = await wire.wait_for("m1")
    assert error["type"] == "error"
    assert (error["from"].full, error["to"].full) == (f"1001@{COMPONENT}", BOB)
    assert (error["error"]["type"], error["error"]["condition"]) == ("cancel", "service-unavailable")


async def test_subscribing_to_the_service_is_answered(wire: Wire) -> None:
    wire.feed(f"<presence type='subscribe' from='{ALICE}' to='{COMPONENT}'/>")
    subscribed, available = await wire.nth(0), await wire.nth(1)
    assert (subscribed["type"], subscribed["to"].full) == ("subscribed", "alice@example.test")
    assert available["type"] == "available" and available["status"].startswith("Presence consent")
    wire.feed(f"<presence type='unsubscribe' from='{ALICE}' to='{COMPONENT}'/>")
    assert (await wire.nth(2))["type"] == "unsubscribed"
