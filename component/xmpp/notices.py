"""The readable `<body>` of management messages (DESIGN "Ad-hoc commands").

Stock clients show neither `type="management"` nor the Rainbow child element, so each
management message also carries a short text in plain words: who, what happened, and
how to answer (the ad-hoc command to run, with its XMPP URI). It is written from the
outbox row: the child element's attributes, and `peer` / `device` (component.notifications).
Rows queued before those keys existed get the same text without the names.
"""

from __future__ import annotations

from typing import Any

from component.device_sharing import redeem_uri
from component.xmpp.commands import REQUESTS_NODE, Requests, Shares


def command_uri(component_jid: str, node: str) -> str:
    """XEP-0147 / XEP-0050 section 5: the URI that opens a command."""
    return f"xmpp:{component_jid}?command;node={node}"


def management_body(payload: dict[str, Any], component_jid: str) -> str | None:
    """The text for a management message's outbox row, or None for a row of no known kind."""
    if "handshake" in payload:
        return _handshake(payload["handshake"], payload.get("peer"), component_jid)
    if "devicesharing" in payload:
        return _sharing(payload["devicesharing"], payload.get("peer"), payload.get("device"), component_jid)
    return None


def _handshake(attrs: dict[str, str], peer: str | None, component_jid: str) -> str:
    who = peer or "Your contact"
    whose = f"{peer}'s" if peer else "your contact's"
    status, side = attrs.get("status"), attrs.get("type")
    answer = (
        f'To accept or decline, run the command "{Requests.name}" of {component_jid}:'
        f" {command_uri(component_jid, REQUESTS_NODE)}"
    )
    texts = {
        ("received", "pending"): f"{who} asks to see your presence. {answer}",
        ("sent", "pending"): (
            f"You asked {peer or 'a contact'} to share their presence with you; you will be told"
            " when they answer."
        ),
        ("received", "accepted"): (
            f"You now share your presence with {peer or 'a contact'}. To stop, run the command"
            f' "{Requests.name}" of {component_jid}.'
        ),
        ("sent", "accepted"): f"{who} accepted: you now see their presence.",
        ("received", "declined"): f"You declined to share your presence with {peer or 'a contact'}.",
        ("sent", "declined"): f"{who} declined to share their presence with you.",
        ("received", "canceled"): f"{who} no longer asks to see your presence.",
        ("sent", "canceled"): f"Your request to see {whose} presence is canceled.",
        ("received", "interrupted"): f"You stopped sharing your presence with {peer or 'a contact'}.",
        ("sent", "interrupted"): f"{who} stopped sharing their presence with you.",
    }
    return texts.get((side or "", status or ""), f"Presence request {attrs.get('id')}: {status}.")


def _sharing(attrs: dict[str, str], peer: str | None, device: str | None, component_jid: str) -> str:
    name = f'"{device}"' if device else "a device"
    status, side, code = attrs.get("status"), attrs.get("type"), attrs.get("id", "")
    if side == "received":
        manager = peer or "The device's manager"
        texts = {
            "pending": (
                f"{manager} invites you to see the presence of {name}. To accept or deny, run"
                f' the command "{Shares.name}" of {component_jid}: {redeem_uri(component_jid, code)}'
            ),
            "accept": f"You now see the presence of {name}.",
            "deny": f"You denied the invitation to see {name}.",
            "cancel": f"The sharing of {name} with you has ended.",
            "overtime": f"The invitation to see {name} has expired.",
            "invalid": f"The invitation to see {name} no longer holds: the device changed.",
        }
    else:
        invitee = peer or "whoever holds the code"
        texts = {
            "pending": (
                f"You invited {invitee} to see {name}. To cancel, run the command"
                f' "{Shares.name}" of {component_jid}.'
            ),
            "accept": f"{invitee} accepted your invitation to see {name}.",
            "deny": f"{invitee} denied your invitation to see {name}.",
            "cancel": f"Your sharing of {name} with {invitee} is canceled.",
            "overtime": f"Your invitation of {invitee} to see {name} has expired.",
            "invalid": f"Your invitation of {invitee} to see {name} no longer holds: the device changed.",
        }
    return texts.get(status or "", f"Device share of {name}: {status}.")
