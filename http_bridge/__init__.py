"""aiohttp REST bridge: the public REST families, auth and error envelopes, calling component actions."""

from http_bridge.app import build_app
from http_bridge.context import Services
from http_bridge.listener import HttpListener

__all__ = ["HttpListener", "Services", "build_app"]
