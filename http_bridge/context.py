"""What handlers reach through the application: the component's actions."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from component.actions import Identity, PresenceSharing
from component.config import HttpConfig
from component.device_sharing import DeviceSharing
from component.provisioning import Provisioning
from component.subscriptions import PresenceStates

HealthCheck = Callable[[], Awaitable[tuple[bool, dict[str, object]]]]
# One reading of the service's figures for /metrics (http_bridge/metrics.py names them).
MetricsReading = Callable[[], Awaitable[dict[str, Any]]]


async def _no_metrics() -> dict[str, Any]:
    return {}


# The request line's logger (component/__main__.write_request_line writes as it).
REQUEST_LOGGER = logging.getLogger("http_bridge")


def log_request_line(line: str) -> None:
    """The request line through the logging module, logger `http_bridge` at INFO (the
    default `Services.request_log`; the service's own writes it faster, component/__main__.py)."""
    REQUEST_LOGGER.info("%s", line)


@dataclass(frozen=True)
class Services:
    identity: Identity
    sharing: PresenceSharing
    health: HealthCheck
    max_page_size: int = 1000
    provisioning: Provisioning | None = None
    states: PresenceStates | None = None
    # Reported as each subscription's `stalker` (who holds it) in family 2 listings.
    component_jid: str = ""
    device_sharing: DeviceSharing | None = None
    metrics: MetricsReading = _no_metrics
    # Where the request middleware puts its one line per request (http_bridge/app.py).
    request_log: Callable[[str], None] = log_request_line


SERVICES = web.AppKey("services", Services)
# The `[http]` settings: the listener's limits, and the body deadline read_json_object keeps.
HTTP_SETTINGS = web.AppKey("http_settings", HttpConfig)
# Per-request values the logging middleware reports.
REQUEST_ID = web.RequestKey("request_id", str)
USER_JID = web.RequestKey("user_jid", str)


def services_of(request: web.Request) -> Services:
    return request.app[SERVICES]
