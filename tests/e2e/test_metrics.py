"""GET /metrics on the running service: Prometheus' text format, the figures DESIGN
"Operations" names, moving with what the service does."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import RestApi, XmppUser, jid, wait_until

pytestmark = pytest.mark.e2e


async def scrape(api: RestApi) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with api.http.get(f"{api.base_url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_follow_logins_requests_and_deliveries(
    api: RestApi, alice: XmppUser, bob: XmppUser
) -> None:
    before = await scrape(api)
    for name in (
        "presence_outbox_pending", "presence_outbox_oldest_age_seconds", "presence_mail_pending",
        "presence_dead_letters", "presence_xmpp_connected", "presence_roster_granted",
        "presence_delivered_total", "presence_roster_errors_total", "presence_consents_ended_from_clients_total",
    ):
        assert (name, ()) in before, name
    assert before[("presence_xmpp_connected", ())] == 1
    assert before[("presence_roster_granted", ())] == 1

    a = await api.login("alice")
    status, body = await api.call(
        "GET", api.LOGIN, headers={"Authorization": "Basic " + "Ym9iQGV4YW1wbGUudGVzdDp3cm9uZw=="}  # bob:wrong
    )
    assert status == 401
    status, created = await api.create(a, toJid=jid("bob"))
    assert status == 200

    async def delivered() -> bool:
        return (await scrape(api))[("presence_delivered_total", ())] >= before[("presence_delivered_total", ())] + 2

    await wait_until(delivered)
    after = await scrape(api)
    assert after[("presence_logins_total", (("result", "accepted"),))] == (
        before[("presence_logins_total", (("result", "accepted"),))] + 1
    )
    assert after[("presence_logins_total", (("result", "refused"),))] == (
        before[("presence_logins_total", (("result", "refused"),))] + 1
    )
    rainbow_200 = ("presence_http_requests_total", (("family", "rainbow"), ("status", "200")))
    assert after[rainbow_200] >= before.get(rainbow_200, 0) + 2
    assert after[("presence_http_requests_total", (("family", "rainbow"), ("status", "401")))] >= 1
    assert after[("presence_dead_lettered_total", (("source", "outbox"),))] == 0
    assert after[("presence_outbox_pending", ())] == 0
