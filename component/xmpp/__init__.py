"""The XEP-0114 component: the XMPP adapter around the domain actions.

It parses stanzas into commands, calls the actions, and answers; it also implements
the outbox dispatcher's Transport (management messages, presence, roster changes
through the configured roster backend, the delivery barrier). It never touches SQL. One module per concern:

- session.py: the connection life cycle, privileges, status, the IQ error boundary;
- presence_sharing.py (family 1), subscriptions.py (family 2), device_sharing.py
  (family 3): each family's stanza handlers;
- rosters.py: the roster checks, the account checks, and `[roster] backend = "xep0356"`
  (privileged roster IQs); ejabberd_api.py: `backend = "ejabberd_api"` (ejabberd's
  mod_http_api); the backend behind the dispatcher is chosen in session.py;
- commands.py: the ad-hoc commands as data; adhoc.py: their XEP-0050 adapter (and
  the reply a message to the service gets); notices.py: the readable text of
  management messages;
- stanzas.py: the payload elements; slixfix.py: every workaround for slixmpp.
"""

from __future__ import annotations

from component.xmpp.adhoc import AdhocCommands
from component.xmpp.device_sharing import DeviceShareIqs
from component.xmpp.presence_sharing import PresenceSharingIqs
from component.xmpp.rosters import RosterAccess
from component.xmpp.subscriptions import SubscriptionPresence


class PresenceComponent(
    RosterAccess, SubscriptionPresence, PresenceSharingIqs, DeviceShareIqs, AdhocCommands
):
    """The component: the session (component.xmpp.session) and each family's handlers."""

    def register_families(self) -> None:
        self.register_presence_sharing()
        self.register_subscriptions()
        self.register_device_sharing()
        self.register_commands()


__all__ = ["PresenceComponent"]
