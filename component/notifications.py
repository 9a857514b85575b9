"""What each transition tells the XMPP world, as outbox rows (data, not XML).

The outbox dispatcher turns these into stanzas:
- kind 'message': the management message of the Rainbow API, sent from the
  component's JID to one party: `<message type='management'><presencehandshake
  xmlns='jabber:iq:configuration' id action type status/></message>`.
- kind 'roster': one direction of one item in the recipient's roster, added or
  removed (`{"jid", "direction": "to"|"from", "op": "add"|"remove", "name"?}`). The
  dispatcher reads the item first and changes only that direction, keeping the
  user's name, groups and other direction (component.rosters).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from component.model import BareJid, DeviceShare, PresenceRequest

MESSAGE = "message"
ROSTER = "roster"


@dataclass(frozen=True)
class Notification:
    kind: str
    recipient: BareJid
    payload: dict[str, Any]


def handshake_messages(request: PresenceRequest, action: str, status: str) -> list[Notification]:
    """The seed's management message, to the sender (type='sent') and receiver ('received').

    `handshake` is the Rainbow child element's attributes, exactly; `peer` (the other
    party) is for the readable body stock clients show (component.xmpp.notices)."""
    return [
        Notification(
            MESSAGE,
            party.jid,
            {
                "handshake": {"id": request.id, "action": action, "type": side, "status": status},
                "peer": other.jid,
            },
        )
        for party, other, side in (
            (request.from_user, request.to_user, "sent"),
            (request.to_user, request.from_user, "received"),
        )
    ]


def roster_grant(owner: BareJid, contact: str, direction: str, name: str | None = None) -> Notification:
    """Add `direction` (to: `owner` sees `contact`; from: `contact` sees `owner`) to the
    item for `contact` in `owner`'s roster; a new item is named `name` (default: the
    contact's localpart)."""
    return Notification(
        ROSTER,
        owner,
        {"jid": contact, "direction": direction, "op": "add", "name": name or contact.partition("@")[0]},
    )


def roster_revoke(owner: BareJid, contact: str, direction: str) -> Notification:
    """Remove `direction` from the item for `contact` in `owner`'s roster (the item goes
    too if the service created it and no direction is left)."""
    return Notification(ROSTER, owner, {"jid": contact, "direction": direction, "op": "remove"})


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


# ---- family 3: device sharing ------------------------------------------------------


def sharing_messages(
    share: DeviceShare, device_name: str | None, action: str, state: str | None = None
) -> list[Notification]:
    """The management message for a share's change, to the manager (type='sent') and to
    the invited user when known (type='received'): the family 1 shape with a
    `<devicesharing/>` child instead of `<presencehandshake/>`. `peer` and `device`
    (the device's name, None once it is deleted) are for the readable body."""
    attrs = {
        "id": share.invite_code,
        "action": action,
        "status": state or share.state.value,
        "device_id": share.device_id,
        "mode": share.mode.value,
    }
    invitee = share.to_user.jid if share.to_user is not None else share.to_email
    parties = [(share.from_user.jid, invitee, "sent")]
    if share.to_user is not None:
        parties.append((share.to_user.jid, share.from_user.jid, "received"))
    return [
        Notification(
            MESSAGE, jid, {"devicesharing": {**attrs, "type": side}, "peer": peer, "device": device_name}
        )
        for jid, peer, side in parties
    ]


@dataclass(frozen=True)
class Mail:
    recipient: str
    subject: str
    body: str


def invite_mail(
    share: DeviceShare, device_name: str, expire_iso: str, public_url: str, component_jid: str,
    xmpp_uri: str,
) -> Mail:
    """The e-mail of an `email` share: the invite code and how to accept it, from an XMPP
    client (the URI opens the service's shares command) or over REST."""
    base = public_url.rstrip("/")
    body = f"""{share.from_user.jid} invites you to see the presence of the device "{device_name}".

Invite code: {share.invite_code}
The invitation expires at {expire_iso}.

From an XMPP client (Conversations, Gajim, ...), open this address to accept or decline:

    {xmpp_uri}

or run the ad-hoc command "Device shares" of {component_jid} and enter the code.

Over HTTP, sign in and send, with your token in the Access-Token header:

    POST {base}/v2/share/device/accept
    {{"invite_code": "{share.invite_code}"}}

To decline, send the same body to {base}/v2/share/device/deny.

If you did not expect this invitation, ignore this message: it expires by itself.
"""
    # A header is one line: a device name may hold a line break (it is free text), which
    # would make the Subject header refuse to be built.
    name = " ".join(device_name.split())
    return Mail(share.to_email or "", f'{share.from_user.jid} shares "{name}" with you', body)
