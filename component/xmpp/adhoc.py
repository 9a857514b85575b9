"""XEP-0050 ad-hoc commands on the component's JID, and the reply a chat message gets.

This is the adapter between the commands (component.xmpp.commands: data, calling the
actions) and the wire: it renders their forms and results as XEP-0004 data forms,
keeps the command sessions, lists the commands in disco#items, and answers a message
sent to the service (a short help) or to an extension (an error).

slixmpp's own XEP-0050 provider (the `xep_0050` plugin) is not used, for three measured
reasons: it keeps every session until the command ends, unless each command has a
timeout, whose expiry then sends the *user* a command to cancel; it does not tie a
session to the JID that opened it (anybody holding the id continues it); and it lists
every command to everybody. Its stanza classes (`xep_0050.Command`, `xep_0004.Form`)
and disco (`xep_0030`) are used as they are. slixmpp's XEP-0050 *client* drives the
end-to-end tests.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from slixmpp import JID, Iq, Message
from slixmpp.plugins.xep_0004 import Form as DataForm
from slixmpp.plugins.xep_0030 import DiscoItems
from slixmpp.plugins.xep_0050 import Command as CommandElement
from slixmpp.xmlstream import register_stanza_plugin
from slixmpp.xmlstream.handler import CoroutineCallback
from slixmpp.xmlstream.matcher import StanzaPath

from component.errors import BadRequest, DomainError, Forbidden, NotFound
from component.logfields import untrusted
from component.xmpp.commands import (
    SHARES_NODE,
    Actions,
    Caller,
    Command,
    Done,
    Field,
    Form,
    Registry,
    Values,
    with_values,
)
from component.xmpp.session import Session, answers_errors
from component.xmpp.subscriptions import MAX_JID_PART

log = logging.getLogger(__name__)

NS_COMMANDS = CommandElement.namespace
NS_DATA = DataForm.namespace
ACTIONS = ("execute", "next", "complete", "prev", "cancel")  # XEP-0050 section 6.3

# Command sessions: how long one waits for its next step, how many one JID may hold
# (its oldest goes first), and how many the service keeps at all.
SESSION_TTL_S = 600.0
MAX_SESSIONS_PER_JID = 8
MAX_SESSIONS = 10_000
# What a submitted form may hold.
MAX_FIELDS = 32
MAX_VALUES = 16
MAX_VALUE_CHARS = 2048
# A sender gets at most one help reply (or error) per address it writes to and interval.
HELP_INTERVAL_S = 30.0
MAX_HELPED = 10_000


@dataclass
class _Open:
    """A command waiting for its next form: tied to the full JID that opened it."""

    owner: str
    node: str
    form: Form
    expires: float


class AdhocCommands(Session):
    """Mixin of PresenceComponent: the ad-hoc commands and messages to the service."""

    def register_commands(self) -> None:
        self.register_plugin("xep_0004")
        register_stanza_plugin(Iq, CommandElement)
        register_stanza_plugin(CommandElement, DataForm)
        self.commands = Registry(Actions(
            self.sharing, self.device_sharing, self.states, self.boundjid.bare, self.served_domains,
        ))
        self._open: OrderedDict[str, _Open] = OrderedDict()
        self._helped: OrderedDict[str, float] = OrderedDict()
        disco = self.plugin["xep_0030"]
        self.feature(NS_COMMANDS)
        disco.add_identity(category="automation", itype="command-list", name="Commands", node=NS_COMMANDS)
        for node, command in self.commands.commands.items():
            disco.add_identity(category="automation", itype="command-node", name=command.name, node=node)
            disco.add_feature(NS_COMMANDS, node=node)
            disco.add_feature(NS_DATA, node=node)
        disco.api.register(self._disco_items, "get_items", jid=self.boundjid)
        self.register_handler(
            CoroutineCallback("ad-hoc command", StanzaPath("iq@type=set/command"), self.on_command)
        )
        self.register_handler(CoroutineCallback("message to the service", StanzaPath("message"), self.on_message))

    # ---- disco#items: the commands a caller may run, and the caller's extensions ------------

    async def _disco_items(self, jid: JID, node: str | None, ifrom: JID, args: object) -> DiscoItems:
        items = DiscoItems()
        if node not in ("", None, NS_COMMANDS):
            return items
        caller = await self._caller_or_none(ifrom)
        component = self.boundjid.bare
        if node == NS_COMMANDS:
            if caller is not None:
                for command in self.commands.commands.values():
                    if await command.listed(caller):
                        items.add_item(component, command.node, command.name)
            return items
        items.add_item(component, NS_COMMANDS, "Commands")
        if caller is not None:
            for extension in await self.states.watched_by(caller.user.jid):
                items.add_item(f"{extension}@{component}", name=extension)
        return items

    async def _caller_or_none(self, sender: JID) -> Caller | None:
        try:
            return Caller(await self._user_of(sender), self._is_admin(sender))
        except DomainError:
            return None

    def _is_admin(self, sender: JID) -> bool:
        return sender.bare.lower() in self.admins

    # ---- the commands ---------------------------------------------------------------------

    @answers_errors
    async def on_command(self, iq: Iq) -> Iq:
        """One step of a command: start it (`execute` without a session), submit its
        form (`execute`, `next` or `complete`), or `cancel` it."""
        element = iq["command"]
        node, sessionid = element["node"], element["sessionid"]
        action = element.xml.get("action") or "execute"
        if action not in ACTIONS:
            raise BadRequest(f"action must be one of {', '.join(ACTIONS)}")
        if iq["to"].user:
            raise NotFound("commands are run on the service's own JID")
        caller = Caller(await self._caller(iq), self._is_admin(iq["from"]))
        values = self._submitted(element)
        if not sessionid:
            if action not in ("execute", "next", "complete"):
                raise BadRequest(f"{action} needs the sessionid of a running command")
            found = self.commands.find(node)
            if found is None:
                raise NotFound("no such command")
            command, argument = found
            if not command.allowed(caller):
                raise Forbidden("only the service's XMPP admins may run this command")
            step = await self._step(lambda: command.start(caller, argument))
            if isinstance(step, Form) and values is not None:
                # The form came with the request (a client that fills it in at once).
                step = await self._submit(step, caller, values)
            sessionid = secrets.token_urlsafe(16)
        else:
            opened = self._take(sessionid, iq["from"].full, node)
            if action == "cancel":
                self._log(iq, node, "canceled")
                return self._reply(iq, node, sessionid, "canceled")
            if action == "prev":
                self._keep(sessionid, opened)
                raise BadRequest("this command has no previous step")
            step = await self._submit(opened.form, caller, values or {})
        return self._answer(iq, node, sessionid, step)

    async def _step(self, start) -> Form | Done | tuple[Form, str]:  # noqa: ANN001
        try:
            return await start()
        except DomainError as exc:
            return _refused(exc)

    async def _submit(self, form: Form, caller: Caller, values: Values) -> Form | Done | tuple[Form, str]:
        """The form's next step; bad input shows the same form again, filled in as it
        was submitted, with what to correct (nothing is lost)."""
        try:
            return await form.then(caller, values)
        except BadRequest as exc:
            again = Form(form.title, form.instructions, with_values(form.fields, values), form.then, form.last)
            return again, exc.detail
        except DomainError as exc:
            return _refused(exc)

    def _answer(self, iq: Iq, node: str, sessionid: str, step: Form | Done | tuple[Form, str]) -> Iq:
        error = None
        if isinstance(step, tuple):
            step, error = step
        if isinstance(step, Form):
            self._keep(sessionid, _Open(iq["from"].full, node, step, time.monotonic() + SESSION_TTL_S))
            reply = self._reply(iq, node, sessionid, "executing")
            next_action = "complete" if step.last else "next"
            reply["command"]["actions"] = [next_action]
            reply["command"].xml.find(f"{{{NS_COMMANDS}}}actions").set("execute", next_action)
            if error:
                reply["command"].add_note(error, "error")
            reply["command"].append(_data_form("form", step.title, step.instructions, step.fields))
            self._log(iq, node, f"form ({error})" if error else "form")
            return reply
        reply = self._reply(iq, node, sessionid, "completed")
        failed = isinstance(step, _Refusal)
        reply["command"].add_note(step.note, "error" if failed else "info")
        if step.fields or step.table:
            result = _data_form("result", step.title, "", step.fields)
            if step.table:
                for var, label in step.table.columns:
                    result.add_reported(var, ftype="text-single", label=label)
                for row in step.table.rows:
                    result.add_item(dict(row))
            reply["command"].append(result)
        self._log(iq, node, f"refused: {step.note}" if failed else "completed")
        return reply

    def _reply(self, iq: Iq, node: str, sessionid: str, status: str) -> Iq:
        reply = iq.reply(clear=True)
        reply["command"]["node"] = node
        reply["command"]["sessionid"] = sessionid
        reply["command"]["status"] = status
        return reply

    def _log(self, iq: Iq, node: str, outcome: str) -> None:
        log.info("command %s (iq %s) from %s: %s", _loggable(node), untrusted(iq["id"]), iq["from"], untrusted(outcome))

    @staticmethod
    def _submitted(element: CommandElement) -> dict[str, list[str]] | None:
        """The values of the data form submitted with the command, None without one."""
        form = element.xml.find(f"{{{NS_DATA}}}x")
        if form is None or form.get("type", "submit") != "submit":
            return None
        fields = form.findall(f"{{{NS_DATA}}}field")
        if len(fields) > MAX_FIELDS:
            raise BadRequest(f"a submitted form holds at most {MAX_FIELDS} fields")
        values: dict[str, list[str]] = {}
        for field in fields:
            texts = [v.text or "" for v in field.findall(f"{{{NS_DATA}}}value")]
            if len(texts) > MAX_VALUES or any(len(t) > MAX_VALUE_CHARS for t in texts):
                raise BadRequest(
                    f"a field holds at most {MAX_VALUES} values of at most {MAX_VALUE_CHARS} characters"
                )
            values[field.get("var", "")] = texts
        return values

    # ---- sessions ---------------------------------------------------------------------------

    def _take(self, sessionid: str, owner: str, node: str) -> _Open:
        """The open command (removed: a step runs once); another JID's, or an expired
        one, is no session at all."""
        opened = self._open.get(sessionid)
        if opened is None or opened.owner != owner or opened.node != node:
            raise BadRequest("no such command session (it ended, expired or is not yours)")
        del self._open[sessionid]
        if opened.expires < time.monotonic():
            raise BadRequest("the command session expired; run the command again")
        return opened

    def _keep(self, sessionid: str, opened: _Open) -> None:
        now = time.monotonic()
        while self._open:  # the oldest first: expired ones go
            oldest_id, oldest = next(iter(self._open.items()))
            if oldest.expires >= now:
                break
            del self._open[oldest_id]
        mine = [sid for sid, o in self._open.items() if o.owner.partition("/")[0] == opened.owner.partition("/")[0]]
        for sid in mine[: max(0, len(mine) - MAX_SESSIONS_PER_JID + 1)]:
            del self._open[sid]
        while len(self._open) >= MAX_SESSIONS:
            self._open.popitem(last=False)
        self._open[sessionid] = opened

    # ---- messages to the service or to an extension -----------------------------------------

    async def on_message(self, msg: Message) -> None:
        """A person who writes to the service gets a short help (once per interval); a
        message to an extension gets an error: extensions only show presence."""
        if msg.xml.get("type") in ("error", "groupchat", "headline") or not msg["body"]:
            return
        sender = msg["from"]
        to = msg.xml.get("to", "")
        if not sender.user or not self._may_answer(sender.bare, to.partition("/")[0]):
            return
        local, at, _ = to.partition("@")
        if at:
            if len(local.encode()) > MAX_JID_PART:
                return
            error = self.make_message(mto=sender.full, mtype="error")
            error.xml.set("from", to)  # as the sender wrote it
            if msg["id"]:
                error["id"] = msg["id"]
            error["error"]["type"] = "cancel"
            error["error"]["condition"] = "service-unavailable"
            error["error"]["text"] = (
                "An extension only shows its presence; messages to it are not delivered."
                f" Write to {self.boundjid.bare} for help."
            )
            error.send()
            return
        self.make_message(
            mto=sender.full, mfrom=self.boundjid.bare, mtype=msg["type"] or "normal", mbody=self._help_text(),
        ).send()

    def _may_answer(self, sender: str, to: str) -> bool:
        """At most one answer per (sender, address) and interval: two programs that
        answer each other cannot loop through the service."""
        now = time.monotonic()
        key = f"{sender} {to}"
        last = self._helped.get(key)
        if last is not None and now - last < HELP_INTERVAL_S:
            return False
        self._helped.pop(key, None)
        self._helped[key] = now
        while len(self._helped) > MAX_HELPED:
            self._helped.popitem(last=False)
        return True

    def _help_text(self) -> str:
        names = ", ".join(
            f'"{c.name}"' for c in self.commands.commands.values() if not c.admin_only
        )
        component = self.boundjid.bare
        return (
            f"This is the presence-consent service of {', '.join(sorted(self.served_domains))}."
            " It does not read messages: use its ad-hoc commands (Gajim: right-click the"
            " contact, Execute Command; Conversations: the contact's details, Commands;"
            f" profanity: /cmd list {component}, then /cmd exec NODE {component}): {names}."
            " Notifications about your requests and shares come from this address."
        )


class _Refusal(Done):
    """A command refused by a domain rule: its text is the `<note type="error">`."""


def _refused(exc: DomainError) -> _Refusal:
    return _Refusal(exc.detail)


def _data_form(kind: str, title: str, instructions: str, fields: tuple[Field, ...]) -> DataForm:
    form = DataForm()
    form["type"] = kind
    if title:
        form["title"] = title
    if instructions:
        form["instructions"] = instructions
    for f in fields:
        form.add_field(
            var=f.var, ftype=f.kind, label=f.label, desc=f.desc, required=f.required,
            value=f.value, options=[{"label": o.label, "value": o.value} for o in f.options] or None,
        )
    return form


def _loggable(node: str) -> str:
    """A node as it may be logged: an invite code in it cut to its first 6 characters."""
    if node.startswith(SHARES_NODE + ":"):
        code = node[len(SHARES_NODE) + 1:]
        return untrusted(f"{SHARES_NODE}:{code[:6]}…")
    return untrusted(node)


__all__ = ["AdhocCommands", "Command"]
