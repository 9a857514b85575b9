"""The README's ejabberd section, exactly as written: its `ejabberd.yml` block (loaded with
`include_config_file`, only the two port numbers and the component secret changed) and its
`[roster]` block, with the real service, real clients and a real ejabberd 23.01."""

from __future__ import annotations

import re
import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from local_ejabberd import LocalEjabberd, ensure_ejabberd_installed, free_port
from tests.e2e.conftest import (
    COMPONENT,
    DOMAIN,
    PASSWORDS,
    REPO,
    SECRET,
    RestApi,
    ServiceFactory,
    jid,
    management,
)

pytestmark = pytest.mark.e2e


def readme_block(marker: str) -> str:
    """The fenced block right after `<!-- MARKER: tested by ... -->` in README.md."""
    text = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- {re.escape(marker)}: tested by [^>]*-->\n```\w+\n(.*?)```", text, re.S)
    assert found, f"README.md has no block marked {marker!r}"
    return found.group(1)


@pytest.fixture
def readme_ejabberd() -> Iterator[LocalEjabberd]:
    """An ejabberd whose service part is the README's block (ports and secret changed)."""
    ensure_ejabberd_installed()
    component_port, api_port = free_port(), free_port()
    snippet = readme_block("ejabberd.yml")
    assert snippet.count("port: 5347") == 1 and snippet.count("port: 5281") == 1
    assert snippet.count('"COMPONENT-SECRET"') == 1
    snippet = (
        snippet.replace("port: 5347", f"port: {component_port}")
        .replace("port: 5281", f"port: {api_port}")
        .replace('"COMPONENT-SECRET"', f'"{SECRET}"')
    )
    workdir = Path(tempfile.mkdtemp(prefix="e2e-ejabberd-readme-"))
    server = LocalEjabberd(
        workdir / "node", domain=DOMAIN, component_jid=COMPONENT, component_secret=SECRET,
        component_port=component_port, api_port=api_port, include=snippet,
    )
    try:
        for name in ("alice", "bob"):
            server.register(name, PASSWORDS[name])
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def test_the_readme_ejabberd_setup_works_as_written(
    readme_ejabberd: LocalEjabberd, make_service: ServiceFactory, xmpp_users, http: aiohttp.ClientSession
) -> None:
    roster = tomllib.loads(readme_block("config.toml"))["roster"]
    assert roster == {"backend": "ejabberd_api", "ejabberd_api_url": "http://127.0.0.1:5281/api"}
    roster["ejabberd_api_url"] = readme_ejabberd.api_url  # the test's own port
    running = await make_service(readme_ejabberd, sections={"roster": roster})  # healthy: roster granted
    api = RestApi(http, running.base_url)
    alice = await xmpp_users("alice", readme_ejabberd)
    bob = await xmpp_users("bob", readme_ejabberd)
    a, b = await api.login("alice"), await api.login("bob")

    status, body = await api.create(a, toJid=jid("bob"))
    request_id = body["data"]["id"]
    status, body = await api.transition(b, request_id, "accept")
    assert (status, body["data"]["status"]) == (200, "accepted")
    seen = await alice.next_management(2)
    assert seen == [
        management(request_id, "create", "sent", "pending"), management(request_id, "update", "sent", "accepted"),
    ]
    # ejabberd 23.01 makes type="management" normal (no type): the child element is what counts.
    assert {m.type for m in seen} <= {None, "normal"}, seen
    assert await alice.roster_push_for(jid("bob"), "to") == [(jid("bob"), "to")]
    assert await bob.roster_push_for(jid("alice"), "from") == [(jid("alice"), "from")]

    # api_permissions as written: the three roster commands, nothing else.
    async with aiohttp.ClientSession() as raw:
        async with raw.post(f"{readme_ejabberd.api_url}/status", json={}) as resp:
            assert resp.status == 403
        async with raw.post(f"{readme_ejabberd.api_url}/registered_users", json={"host": DOMAIN}) as resp:
            assert resp.status == 403
        async with raw.post(
            f"{readme_ejabberd.api_url}/get_roster", json={"user": "alice", "server": DOMAIN}
        ) as resp:
            assert resp.status == 200
            assert [e["jid"] for e in await resp.json()] == [jid("bob")]
