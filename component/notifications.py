"""What each transition tells the XMPP world, as outbox rows (data, not XML).

The outbox dispatcher turns these into stanzas:
- kind 'message': the management message of the Rainbow API, sent from the
  component's JID to one party: `<message type='management'><presencehandshake
  xmlns='jabber:iq:configuration' id action type status/></message>`.
- kind 'roster': one roster item to set in the recipient's roster through
  XEP-0356 (`subscription='remove'` deletes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from component.model import BareJid, PresenceRequest

MESSAGE = "message"
ROSTER = "roster"


@dataclass(frozen=True)
class Notification:
    kind: str
    recipient: BareJid
    payload: dict[str, Any]


def handshake_messages(request: PresenceRequest, action: str, status: str) -> list[Notification]:
    """The seed's management message, to the sender (type='sent') and receiver ('received')."""
    return [
        Notification(
            MESSAGE,
            party.jid,
            {"handshake": {"id": request.id, "action": action, "type": side, "status": status}},
        )
        for party, side in ((request.from_user, "sent"), (request.to_user, "received"))
    ]


def roster_item(owner: BareJid, contact: BareJid, subscription: str) -> Notification:
    """Set `contact` in `owner`'s roster with `subscription` (to/from/both/remove)."""
    return Notification(
        ROSTER,
        owner,
        {"jid": contact, "subscription": subscription, "name": contact.partition("@")[0]},
    )


def subscription_for(sees_contact: bool, seen_by_contact: bool) -> str:
    """RFC 6121 section 2.1.2.5: the owner's subscription to a contact."""
    if sees_contact and seen_by_contact:
        return "both"
    if sees_contact:
        return "to"
    if seen_by_contact:
        return "from"
    return "remove"


# ---- family 2: presence of extensions --------------------------------------------

PRESENCE = "presence"


def extension_presence(
    subscriber: BareJid,
    extension: str,
    state: str | None,
    sequence: int | None = None,
    presence_type: str | None = None,
) -> Notification:
    """Presence from `{extension}@{component}` to a subscriber.

    `presence_type` is None for a state notification (available presence carrying
    the state), or 'subscribed' / 'unsubscribed' / 'unavailable'.
    """
    payload: dict[str, Any] = {"extension": extension}
    if presence_type is not None:
        payload["type"] = presence_type
    if state is not None:
        payload["state"] = state
    if sequence is not None:
        payload["sequence"] = sequence
    return Notification(PRESENCE, subscriber, payload)
