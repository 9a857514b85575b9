"""GET /metrics: the service's figures in Prometheus' text format (prometheus-client).

The figures are read when Prometheus scrapes (DESIGN "Operations"): the component's
counters and its backlog come from `Services.metrics` (plain numbers: nothing in the
core imports a metrics library), the HTTP requests by family and status are counted
here, by the request middleware. A registry per application, not the library's global
one, so that two services in one process (tests) never share figures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from http_bridge.context import SERVICES
from http_bridge.envelopes import KAZOO_PREFIX, XLINK_PREFIX

# (family, status) -> requests answered, counted by the request middleware.
HTTP_COUNTS = web.AppKey("http_counts", Counter)

RAINBOW_PREFIX = "/api/rainbow"


def family_of(path: str) -> str:
    """Which REST family a path belongs to (a bounded label set: no path goes into a label)."""
    for family, prefix in (("kazoo", KAZOO_PREFIX), ("xlink", XLINK_PREFIX), ("rainbow", RAINBOW_PREFIX)):
        if path == prefix or path.startswith(prefix + "/"):
            return family
    return "other"


def count_request(app: web.Application, path: str, status: int) -> None:
    app[HTTP_COUNTS][(family_of(path), str(status))] += 1


class _Reading(Collector):
    """Turns one reading of the service (and the HTTP counts) into metric families."""

    def __init__(self, reading: Mapping[str, Any], http_counts: Counter) -> None:
        self.reading = reading
        self.http_counts = http_counts

    def collect(self) -> Iterator[Metric]:
        r = self.reading
        for name, doc, key in (
            ("presence_outbox_pending", "Notifications committed and not yet taken by the XMPP server.", "outbox_pending"),
            ("presence_outbox_oldest_age_seconds", "Age of the oldest notification waiting in the outbox.", "outbox_oldest_age_seconds"),
            ("presence_mail_pending", "Invitation e-mails not yet sent.", "mail_pending"),
            ("presence_dead_letters", "Notifications and e-mails given up on, kept in dead_letters.", "dead_letters"),
            ("presence_xmpp_connected", "1 while the component session is up.", "xmpp_connected"),
            ("presence_roster_granted", "1 while the server grants roster access (read and write).", "roster_granted"),
        ):
            yield GaugeMetricFamily(name, doc, value=r.get(key, 0))
        for name, doc, key in (
            ("presence_delivered", "Outbox rows the XMPP server took.", "delivered"),
            ("presence_roster_errors", "Roster IQs the server refused or failed.", "roster_errors"),
            ("presence_consents_ended_from_clients", "Consents a user ended from a stock XMPP client.", "consents_ended_from_clients"),
        ):
            yield CounterMetricFamily(name, doc, value=r.get(key, 0))
        dead = CounterMetricFamily(
            "presence_dead_lettered", "Deliveries moved to dead_letters since start.", labels=["source"]
        )
        for source, value in sorted(r.get("dead_lettered", {}).items()):
            dead.add_metric([source], value)
        yield dead
        logins = CounterMetricFamily("presence_logins", "Logins by outcome.", labels=["result"])
        for result in ("accepted", "refused", "limited", "forbidden", "unavailable"):
            logins.add_metric([result], r.get("logins", {}).get(result, 0))
        yield logins
        requests = CounterMetricFamily(
            "presence_http_requests", "HTTP requests answered, by REST family and status.", labels=["family", "status"]
        )
        for (family, status), value in sorted(self.http_counts.items()):
            requests.add_metric([family, status], value)
        yield requests


async def metrics(request: web.Request) -> web.Response:
    reading = await request.app[SERVICES].metrics()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Reading(reading, request.app[HTTP_COUNTS]))
    # The classic text format (0.0.4), which every Prometheus version scrapes; our names
    # need no escaping.
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
