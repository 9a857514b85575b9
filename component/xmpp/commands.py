"""Ad-hoc commands (XEP-0050) as data: what each command asks for and what it does.

Each command is a small class (its node, its name, who may run it) whose steps return
plain dataclasses: a `Form` to fill in, or a `Done` with a note, result fields or a
table. `component.xmpp.adhoc` turns them into XEP-0004/XEP-0050 XML and keeps the
sessions. Commands call the same actions as REST and the IQs (no second path), and let
their DomainErrors through: the adapter shows a BadRequest beside the form to correct,
and any other refusal as the command's `<note type="error">`. Nodes and field vars are
fixed by DESIGN "Ad-hoc commands".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar

from component.actions import PresenceSharing
from component.commands import (
    CreatePresenceRequest,
    ListPresenceRequests,
    Principal,
    ShareAnswer,
    ShareDevice,
    StateAction,
    StateChange,
    Transition,
    TransitionPresenceRequest,
)
from component.device_sharing import SHARES_COMMAND_NODE, DeviceSharing, redeem_uri
from component.errors import BadRequest, MissingField
from component.model import (
    Account,
    AccountId,
    DeviceId,
    InviteCode,
    PresenceRequest,
    RequestStatus,
    ShareMode,
    ShareState,
    User,
    UserId,
    parse_bare_jid,
    parse_invite_code,
    parse_request_id,
)
from component.subscriptions import PresenceStates

NODE_PREFIX = "urn:xmpp:presence-consent:cmd:"
ASK_NODE = NODE_PREFIX + "ask"
REQUESTS_NODE = NODE_PREFIX + "requests"
SHARES_NODE = SHARES_COMMAND_NODE
SHARE_DEVICE_NODE = NODE_PREFIX + "share-device"
SET_STATE_NODE = NODE_PREFIX + "set-state"
SUBSCRIPTIONS_NODE = NODE_PREFIX + "subscriptions"

# Options offered in one list (requests, shares, devices, users): a person picks from a
# screen, not from thousands; the rest stay reachable over REST and the list IQs.
MAX_OPTIONS = 50
# Rows of a result table (the subscriptions of an account).
MAX_ROWS = 500
ADMIN = Principal(None)

Values = Mapping[str, Sequence[str]]


# ---- what a step returns -----------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    label: str
    value: str


@dataclass(frozen=True)
class Field:
    """One XEP-0004 field: `kind` is its type (text-single, jid-single, list-single,
    hidden, fixed)."""

    var: str
    kind: str
    label: str = ""
    value: str | None = None
    required: bool = False
    options: tuple[Option, ...] = ()
    desc: str = ""


@dataclass(frozen=True)
class Caller:
    """Who runs a command: the user behind the sender's bare JID, and whether that JID
    is one of `[auth] xmpp_admins`."""

    user: User
    admin: bool = False


Step = Callable[[Caller, Values], Awaitable["Form | Done"]]


@dataclass(frozen=True)
class Form:
    """A form to fill in; `then` takes the submitted values. `last` says whether
    submitting it completes the command (XEP-0050 `complete`) or leads to another
    form (`next`)."""

    title: str
    instructions: str
    fields: tuple[Field, ...]
    then: Step
    last: bool = True


@dataclass(frozen=True)
class Table:
    columns: tuple[tuple[str, str], ...]  # (var, label)
    rows: tuple[Mapping[str, str], ...]


@dataclass(frozen=True)
class Done:
    """The command completed: a note saying what happened, and what to keep (result
    fields such as an invite code, or a table)."""

    note: str
    fields: tuple[Field, ...] = ()
    table: Table | None = None
    title: str = ""


@dataclass(frozen=True)
class Actions:
    """The actions the commands call: the very objects the REST routes and IQs use."""

    sharing: PresenceSharing
    device_sharing: DeviceSharing
    states: PresenceStates
    component_jid: str
    served_domains: frozenset[str]


# ---- reading submitted values ------------------------------------------------------------


def text(values: Values, var: str) -> str:
    """The field's (first) value, stripped; '' when absent."""
    found = values.get(var) or ()
    return found[0].strip() if found else ""


def required(values: Values, var: str, label: str) -> str:
    value = text(values, var)
    if not value:
        raise MissingField(f"{label} is required", var, "required")
    return value


def choice(values: Values, var: str, allowed: Sequence[str], label: str) -> str:
    value = required(values, var, label)
    if value not in allowed:
        raise BadRequest(f"{label} must be one of {', '.join(allowed)}", var, "enum")
    return value


def when(ms: int | None) -> str:
    """A date as a person reads it: `2026-12-01 14:05 UTC`."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def listed(options: Sequence[Option]) -> tuple[Field, ...]:
    """The options as text lines (`value: label`) to show above their list: some clients
    (profanity 0.13) show a list-single field's values only, and one line of instructions."""
    return tuple(Field("", "fixed", value=f"{o.value}: {o.label}") for o in options)


def with_values(fields: tuple[Field, ...], values: Values) -> tuple[Field, ...]:
    """The same fields, filled with what was submitted (a form shown again keeps it)."""
    out = []
    for f in fields:
        if f.kind not in ("fixed", "hidden") and text(values, f.var):
            out.append(Field(f.var, f.kind, f.label, text(values, f.var), f.required, f.options, f.desc))
        else:
            out.append(f)
    return tuple(out)


# ---- the commands --------------------------------------------------------------------------


class Command:
    node: ClassVar[str]
    name: ClassVar[str]
    admin_only: ClassVar[bool] = False
    # Whether the node may carry an argument (`{node}:{argument}`), as a URI's node does.
    takes_argument: ClassVar[bool] = False

    def __init__(self, actions: Actions) -> None:
        self.actions = actions

    def allowed(self, caller: Caller) -> bool:
        return caller.admin or not self.admin_only

    async def listed(self, caller: Caller) -> bool:
        """Whether disco#items shows the command to this caller."""
        return self.allowed(caller)

    async def start(self, caller: Caller, argument: str | None = None) -> Form | Done:
        raise NotImplementedError


class Ask(Command):
    node = ASK_NODE
    name = "Ask for someone's presence"

    async def start(self, caller: Caller, argument: str | None = None) -> Form | Done:
        return Form(
            "Ask for someone's presence",
            "Whose presence would you like to see? They are asked to accept or decline.",
            (Field("jid", "jid-single", "Their address (JID)", required=True),),
            self.ask,
        )

    async def ask(self, caller: Caller, values: Values) -> Done:
        jid = parse_bare_jid(required(values, "jid", "jid"), "jid")
        request = await self.actions.sharing.create(CreatePresenceRequest(caller.user, to_jid=jid))
        return Done(
            f"Asked {request.to_user.jid} to share their presence with you (request {request.id})."
            " You will be told when they answer."
        )


# What each side may do with a request, by its status (component.actions._RULES).
_REQUEST_ACTIONS: dict[tuple[str, RequestStatus], tuple[Transition, ...]] = {
    ("received", RequestStatus.PENDING): (Transition.ACCEPT, Transition.DECLINE),
    ("received", RequestStatus.ACCEPTED): (Transition.INTERRUPT,),
    ("sent", RequestStatus.PENDING): (Transition.CANCEL,),
}
_TRANSITION_LABELS = {
    Transition.ACCEPT: "Accept: share my presence",
    Transition.DECLINE: "Decline",
    Transition.CANCEL: "Cancel my request",
    Transition.INTERRUPT: "Stop sharing my presence",
}


def _request_label(box: str, request: PresenceRequest) -> str:
    if box == "sent":
        return f"You asked {request.to_user.jid} (since {when(request.request_date)})"
    if request.status is RequestStatus.ACCEPTED:
        return f"{request.from_user.jid} sees your presence (since {when(request.acceptation_date)})"
    return f"{request.from_user.jid} asks to see your presence (since {when(request.request_date)})"


def transition_note(transition: Transition, request: PresenceRequest) -> str:
    sender, receiver = request.from_user.jid, request.to_user.jid
    return {
        Transition.ACCEPT: f"You accepted: {sender} now sees your presence.",
        Transition.DECLINE: f"You declined {sender}'s request to see your presence.",
        Transition.CANCEL: f"Your request to see {receiver}'s presence is canceled.",
        Transition.INTERRUPT: f"You stopped sharing your presence with {sender}.",
    }[transition]


class Requests(Command):
    node = REQUESTS_NODE
    name = "Presence requests"

    async def start(self, caller: Caller, argument: str | None = None) -> Form | Done:
        options = []
        for (box, status), transitions in _REQUEST_ACTIONS.items():
            page = await self.actions.sharing.list(
                ListPresenceRequests(caller.user, box, frozenset({status}), MAX_OPTIONS, descending=True)  # type: ignore[arg-type]
            )
            for request in page.items:
                verbs = "/".join(t.value for t in transitions)
                options.append(Option(f"{_request_label(box, request)} [{verbs}]", request.id))
        if not options:
            return Done("You have no presence request to answer, cancel or stop.")
        options = options[:MAX_OPTIONS]
        return Form(
            "Presence requests",
            "Accept or decline a request to see your presence, stop sharing it (interrupt),"
            " or cancel a request you sent.",
            (
                *listed(options),
                Field("request", "list-single", "Request", required=True, options=tuple(options)),
                Field(
                    "action", "list-single", "Action", required=True,
                    options=tuple(Option(label, t.value) for t, label in _TRANSITION_LABELS.items()),
                ),
            ),
            self.answer,
        )

    async def answer(self, caller: Caller, values: Values) -> Done:
        request_id = parse_request_id(required(values, "request", "request"), "request")
        transition = Transition(choice(values, "action", [t.value for t in Transition], "action"))
        done = await self.actions.sharing.transition(
            TransitionPresenceRequest(caller.user, request_id, transition)
        )
        return Done(transition_note(transition, done))


_SHARE_ANSWERS = ("accept", "deny", "cancel")
_OTHER_CODE = "other"


def _share_label(share_from: str, device: str | None, expires: int, mine: bool, peer: str | None) -> str:
    name = f'"{device}"' if device else "a device"
    if mine:
        return f"Your invitation of {peer or 'the code holder'} to see {name} (until {when(expires)})"
    return f"{share_from} invites you to see {name} (until {when(expires)})"


class Shares(Command):
    """Answer a device share (accept, deny) or cancel one's own invitation; opened with
    a code by the XMPP URI of an invitation (`{node}:{invite code}`)."""

    node = SHARES_NODE
    name = "Device shares"
    takes_argument = True

    async def start(self, caller: Caller, argument: str | None = None) -> Form | Done:
        if argument is not None:
            return await self._for_code(caller, parse_invite_code(argument))
        sharing = self.actions.device_sharing
        answerable = []
        for share in await sharing.list(caller.user):
            mine = share.from_user.id == caller.user.id
            if (share.state is ShareState.PENDING and not mine) or (
                mine and share.state in (ShareState.PENDING, ShareState.ACCEPT)
            ):
                answerable.append(share)
            if len(answerable) >= MAX_OPTIONS:
                break
        names = await sharing.device_names(answerable)
        options = []
        for share in answerable:
            mine = share.from_user.id == caller.user.id
            peer = share.to_user.jid if share.to_user else share.to_email
            label = _share_label(share.from_user.jid, names.get(share.device_id), share.expire_date, mine, peer)
            if share.state is ShareState.ACCEPT:
                label += " [accepted]"
            options.append(Option(label, share.invite_code))
        if not options:
            return self._code_form()
        return Form(
            "Device shares",
            "Accept or deny an invitation to see a device's presence, or cancel one you sent."
            f' For a code you were given (a QR code, an e-mail), choose "{_OTHER_CODE}".',
            (
                *listed(options),
                Field(
                    "invite_code", "list-single", "Invitation", required=True,
                    options=(*options, Option("Another code (typed in the next step)", _OTHER_CODE)),
                ),
                self._action_field(None),
                Field("reason", "text-single", "Reason (optional)"),
            ),
            self.answer,
        )

    def _code_form(self) -> Form:
        return Form(
            "Device shares",
            "Enter the invite code you were given, and what to do with it.",
            (
                Field("invite_code", "text-single", "Invite code", required=True),
                self._action_field(None),
                Field("reason", "text-single", "Reason (optional)"),
            ),
            self.answer,
        )

    @staticmethod
    def _action_field(only: tuple[str, ...] | None) -> Field:
        labels = {"accept": "Accept", "deny": "Deny", "cancel": "Cancel my invitation"}
        names = only or _SHARE_ANSWERS
        return Field(
            "action", "list-single", "Action", names[0] if len(names) == 1 else None, True,
            tuple(Option(labels[n], n) for n in names),
        )

    async def _for_code(self, caller: Caller, code: InviteCode) -> Form:
        share, device = await self.actions.device_sharing.invitation(caller.user, code)
        name = f'"{device}"' if device else "a deleted device"
        mine = share.from_user.id == caller.user.id
        if mine:
            peer = share.to_user.jid if share.to_user else (share.to_email or "whoever holds the code")
            about = f"Your invitation of {peer} to see {name} is {share.state.value}."
            actions: tuple[str, ...] = ("cancel",)
        else:
            about = (
                f"{share.from_user.jid} invites you to see the presence of {name}"
                f" (until {when(share.expire_date)}; now {share.state.value})."
            )
            actions = ("accept", "deny")
        return Form(
            "Device share",
            about,
            (
                Field("invite_code", "hidden", value=code),
                self._action_field(actions),
                Field("reason", "text-single", "Reason (optional)"),
            ),
            self.answer,
        )

    async def answer(self, caller: Caller, values: Values) -> Form | Done:
        code = required(values, "invite_code", "invite_code")
        if code == _OTHER_CODE:
            return self._code_form()
        action = choice(values, "action", _SHARE_ANSWERS, "action")
        reason = text(values, "reason")
        answer = ShareAnswer.from_fields(
            caller.user, {"invite_code": code, **({"reason": reason} if reason else {})}
        )
        done = await getattr(self.actions.device_sharing, action)(answer)
        return Done({
            "accept": "You accepted: the device's presence now shows in your contacts.",
            "deny": "You denied the invitation.",
            "cancel": "The invitation is canceled"
            + ("; the access it gave is revoked." if done.to_user is not None else "."),
        }[action])


class ShareDeviceCommand(Command):
    node = SHARE_DEVICE_NODE
    name = "Share a device"

    async def listed(self, caller: Caller) -> bool:
        return bool(await self.actions.device_sharing.managed_devices(caller.user))

    async def start(self, caller: Caller, argument: str | None = None) -> Form | Done:
        sharing = self.actions.device_sharing
        devices = await sharing.managed_devices(caller.user)
        if not devices:
            return Done(
                "You manage no device. A device's manager is set by the service's administrator"
                " (the device's owner_id)."
            )
        email = sharing.settings.email_enabled
        modes = [Option("To a user of this service (JID or provisioned e-mail)", "app")]
        if email:
            modes.append(Option("By e-mail (the code is mailed)", "email"))
        modes.append(Option("As a QR code (whoever holds it)", "qrcode"))
        default_expire = min(86400, sharing.settings.max_expire_s)
        return Form(
            "Share a device",
            "Invite someone to see a device's presence. They accept or deny; you can cancel"
            " the invitation, or revoke the access later, with \"Device shares\".",
            (
                Field(
                    "device", "list-single", "Device", required=True,
                    options=tuple(Option(f"{d.name} ({d.extension})", d.id) for d in devices[:MAX_OPTIONS]),
                ),
                Field("mode", "list-single", "How", "app", True, tuple(modes)),
                Field("user", "text-single", "Their JID or e-mail address (none for a QR code)"),
                Field(
                    "expire", "text-single", "Valid for (seconds)", str(default_expire), True,
                    desc=f"From 1 to {sharing.settings.max_expire_s} seconds.",
                ),
            ),
            self.share,
        )

    async def share(self, caller: Caller, values: Values) -> Done:
        sharing = self.actions.device_sharing
        fields: dict[str, object] = {
            "device_id": required(values, "device", "device"),
            "mode": required(values, "mode", "mode"),
            "expire": required(values, "expire", "expire"),
        }
        if text(values, "user"):
            fields["user"] = text(values, "user")
        created = await sharing.share(ShareDevice.from_fields(caller.user, fields, sharing.settings.max_expire_s))
        uri = redeem_uri(self.actions.component_jid, created.invite_code)
        result = [
            Field("invite_code", "text-single", "Invite code", created.invite_code),
            Field("uri", "text-single", "XMPP address that opens the invitation", uri),
        ]
        if created.mode is ShareMode.QRCODE:
            base = sharing.settings.public_url.rstrip("/")
            result.append(Field(
                "qrcode", "text-single", "QR image (signed in over HTTP)",
                f"{base}/v2/share/device/qrcode/{created.invite_code}.png?content=uri",
            ))
        invitee = created.to_user.jid if created.to_user else created.to_email
        told = {
            ShareMode.APP: f"{invitee} is told and can accept it.",
            ShareMode.EMAIL: f"The code is mailed to {created.to_email}.",
            ShareMode.QRCODE: "Whoever holds the code (or scans the QR image) can accept it.",
        }[created.mode]
        return Done(
            f"Invitation created, valid until {when(created.expire_date)}. {told}",
            tuple(result),
            title="Invitation",
        )


# ---- family 2 for the service's XMPP admins ---------------------------------------------------


class _ForAccount(Command):
    """An admin command about one account: the account is chosen first (by its realm)
    when the service has more than one."""

    admin_only = True

    async def _accounts(self) -> list[Account]:
        accounts = await self.actions.states.provisioning.list_accounts(ADMIN)
        served = [a for a in accounts if a.realm in self.actions.served_domains]
        return sorted(served, key=lambda a: a.realm)

    async def start(self, caller: Caller, argument: str | None = None) -> Form | Done:
        accounts = await self._accounts()
        if not accounts:
            return Done("No account has a served domain as its realm yet (POST /v2/accounts).")
        if len(accounts) == 1:
            return await self.for_account(accounts[0])
        return Form(
            self.name,
            "Which account (realm)?",
            (Field(
                "realm", "list-single", "Account", required=True,
                options=tuple(Option(f"{a.realm} ({a.name})", a.realm) for a in accounts[:MAX_OPTIONS]),
            ),),
            self._chosen,
            last=False,
        )

    async def _chosen(self, caller: Caller, values: Values) -> Form | Done:
        realm = required(values, "realm", "realm")
        for account in await self._accounts():
            if account.realm == realm:
                return await self.for_account(account)
        raise BadRequest(f"realm must be the realm of an account, not {realm}", "realm", "enum")

    async def for_account(self, account: Account) -> Form | Done:
        raise NotImplementedError


_STATES = ("confirmed", "early", "terminated", "reset")


class SetState(_ForAccount):
    node = SET_STATE_NODE
    name = "Set a presence state"

    async def for_account(self, account: Account) -> Form:
        provisioning = self.actions.states.provisioning
        devices = await provisioning.list_devices(ADMIN, account.id)
        members = await provisioning.list_users(ADMIN, account.id)

        async def apply(caller: Caller, values: Values) -> Done:
            return await self._apply(account, values)

        return Form(
            f"Set a presence state in {account.realm}",
            "Set or reset the state of one extension, one device or one user (the user's"
            " presence_id, else each device the user manages). Fill in exactly one of the three.",
            (
                Field("realm", "hidden", value=account.realm),
                Field("extension", "text-single", "Extension (e.g. *3101 or 1001)"),
                Field(
                    "device", "list-single", "Device",
                    options=tuple(Option(f"{d.name} ({d.extension})", d.id) for d in devices[:MAX_OPTIONS]),
                ),
                Field(
                    "user", "list-single", "User",
                    options=tuple(
                        Option(f"{m.username} ({m.user.jid})", m.user.id) for m in members[:MAX_OPTIONS]
                    ),
                ),
                Field(
                    "state", "list-single", "State", required=True,
                    options=(
                        Option("Busy (confirmed)", "confirmed"),
                        Option("Ringing (early)", "early"),
                        Option("Idle (terminated)", "terminated"),
                        Option("Reset (idle)", "reset"),
                    ),
                ),
            ),
            apply,
        )

    async def _apply(self, account: Account, values: Values) -> Done:
        state = choice(values, "state", _STATES, "state")
        change = StateChange(StateAction.RESET) if state == "reset" else StateChange(StateAction.SET, state)
        targets = {var: text(values, var) for var in ("extension", "device", "user") if text(values, var)}
        if len(targets) != 1:
            raise BadRequest("give exactly one of extension, device or user", "extension", "required")
        [(var, value)] = targets.items()
        states = self.actions.states
        if var == "extension":
            extensions = await states.change_extension(ADMIN, account.id, value, change)
        elif var == "device":
            extensions = await states.change_device(ADMIN, account.id, DeviceId(value), change)
        else:
            extensions = await states.change_user(ADMIN, account.id, UserId(value), change)
        return Done(
            f"{', '.join(extensions)} in {account.realm}: {change.target_state}"
            f"{' (reset)' if change.action is StateAction.RESET else ''}; subscribers are told."
        )


class Subscriptions(_ForAccount):
    node = SUBSCRIPTIONS_NODE
    name = "List subscriptions"

    async def for_account(self, account: Account) -> Form:
        async def listing(caller: Caller, values: Values) -> Done:
            return await self._list(account.id, account.realm, text(values, "extension") or None)

        return Form(
            f"Subscriptions in {account.realm}",
            "Who watches which extension. Leave the extension empty for all of them.",
            (
                Field("realm", "hidden", value=account.realm),
                Field("extension", "text-single", "Extension (optional)"),
            ),
            listing,
        )

    async def _list(self, account_id: AccountId, realm: str, extension: str | None) -> Done:
        found = await self.actions.states.listing(ADMIN, account_id, extension)
        shown = found[:MAX_ROWS]
        rows = tuple(
            {"subscriber": s.subscriber, "extension": s.extension, "event": s.event, "since": when(s.created_at)}
            for s in shown
        )
        more = f" (the first {MAX_ROWS} shown)" if len(found) > MAX_ROWS else ""
        return Done(
            f"{len(found)} subscription(s) in {realm}{more}.",
            table=Table(
                (("subscriber", "Subscriber"), ("extension", "Extension"), ("event", "Event"), ("since", "Since")),
                rows,
            ),
            title=f"Subscriptions in {realm}",
        )


COMMANDS: tuple[type[Command], ...] = (Ask, Requests, Shares, ShareDeviceCommand, SetState, Subscriptions)


@dataclass
class Registry:
    """The commands by node, as the adapter finds them."""

    actions: Actions
    commands: dict[str, Command] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.commands = {c.node: c(self.actions) for c in COMMANDS}

    def find(self, node: str) -> tuple[Command, str | None] | None:
        """The command a node names, and its argument (`{node}:{argument}`), or None."""
        if node in self.commands:
            return self.commands[node], None
        base, _, argument = node.rpartition(":")
        command = self.commands.get(base)
        if command is None or not command.takes_argument or not argument:
            return None
        return command, argument
