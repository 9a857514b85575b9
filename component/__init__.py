"""Presence-consent service for XMPP: domain actions, notifications and the XEP-0114 component."""
