"""openapi.yaml against the live service: a bounded, deterministic schemathesis run.

The service runs as the other end-to-end tests run it (in-process, the real Prosody, a
fresh database), serving example.test and other.test. Logins give the tokens; the admin
token provisions the example.test account (alice, who manages a desk phone and a
softphone), a spare device, a spare user and a spare other.test account for the DELETE
operations to remove; carol, dave and alice ask bob for his presence; alice makes a QR
share. Those ids are offered to the generator (8 times in 10, the rest generated), so
calls get past 401/403/404 to the operations' own answers. schemathesis (pinned in the
`test` extra) runs in a child process, so the service keeps answering on this loop.

What must hold for every generated call: no 5xx, a status code the operation lists, the
listed content type, a body that validates against the listed schema, and the listed
headers. Generation is derandomized (deterministic mode, a fixed seed, no example
database) and bounded (MAX_EXAMPLES per operation and phase; about a minute here,
RUN_BUDGET_S at most), so CI makes the same calls every run.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from local_prosody import LocalProsody
from tests.e2e.conftest import ADMIN_TOKEN, OTHER_DOMAIN, PASSWORDS, RestApi, ServiceFactory, Session
from tests.e2e.test_subscriptions import assert_kazoo_success, provision

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "openapi.yaml"
MAX_EXAMPLES = 50
SEED = 20260101
RUN_BUDGET_S = 300
# The response checks (schemathesis's other checks judge the API's design, not openapi.yaml).
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)
OTHER_CHECKS = (
    "negative_data_rejection", "positive_data_acceptance", "missing_required_header",
    "unsupported_method", "allow_header_conformance", "use_after_free",
    "ensure_resource_availability", "ignored_auth", "object_level_authorization",
)

RAINBOW_AS_ALICE = (
    "sendPresenceSharingRequest", "getReceivedPresenceSharingRequests",
    "getSentPresenceSharingRequests", "getPresenceSharingRequest",
    "cancelSubmittedPresenceSharingRequest",
)
RAINBOW_AS_BOB = ("acceptPresenceSharing", "declinePresenceSharingRequest", "stopPresenceSharing")
KAZOO = (  # but the DELETEs, configured one by one
    "createAccount", "listAccounts", "getAccount", "createAccountUser", "listAccountUsers",
    "getAccountUser", "changeUserPresence", "createDevice", "listDevices", "getDevice",
    "changeDevicePresence", "listPresenceSubscriptions", "getExtensionPresence",
    "changeExtensionPresence",
)
XLINK = (
    "shareDevice", "cancelDeviceShare", "acceptDeviceShare", "denyDeviceShare",
    "listDeviceShares", "deleteDeviceShare", "getDeviceShareQrCode",
)


@dataclass
class Operations:
    """One [[operations]] entry: headers and parameter dictionaries for these operation ids."""

    ids: tuple[str, ...]
    headers: dict[str, str] = field(default_factory=dict)
    bindings: dict[str, str] = field(default_factory=dict)  # parameter -> dictionary name
    basic: tuple[str, str] | None = None
    # False: no ids taken from other operations' answers (no stateful links, no response
    # values reused), only the bindings' and generated ones.
    reuse_ids: bool = True


def toml_string(value: str) -> str:
    return json.dumps(value)  # a TOML basic string is a JSON string for these values


def toml_table(values: dict[str, str]) -> str:
    return "{ " + ", ".join(f"{toml_string(k)} = {v}" for k, v in values.items()) + " }"


def binding(dictionary: str) -> str:
    return f'{{ dictionary = "{dictionary}", probability = 0.8 }}'


def schemathesis_config(
    dictionaries: dict[str, list[str]], bindings: dict[str, str], operations: list[Operations]
) -> str:
    """schemathesis.toml: the checks, bounded derandomized generation, the test's own ids as
    likely parameter values, and each operation's token header."""
    lines = [
        f"seed = {SEED}",
        "[generation]",
        f"max-examples = {MAX_EXAMPLES}",
        "deterministic = true",
        'database = "none"',
        "with-security-parameters = false",
        "[checks]",
        *(f"{check}.enabled = true" for check in CHECKS),
        *(f"{check}.enabled = false" for check in OTHER_CHECKS),
        "[dictionaries]",
        *(f"{name}.values = [{', '.join(map(toml_string, values))}]" for name, values in dictionaries.items()),
        "[parameters]",
        *(f"{toml_string(param)} = {binding(name)}" for param, name in bindings.items()),
    ]
    for ops in operations:
        lines += ["[[operations]]", f"include-operation-id = [{', '.join(map(toml_string, ops.ids))}]"]
        if ops.headers:
            lines.append(f"headers = {toml_table({k: toml_string(v) for k, v in ops.headers.items()})}")
        if ops.bindings:
            lines.append(f"parameters = {toml_table({k: binding(v) for k, v in ops.bindings.items()})}")
        if not ops.reuse_ids:
            lines.append("phases.stateful.enabled = false")
            lines += [f"phases.{phase}.extra-data-sources.responses = false" for phase in ("examples", "coverage", "fuzzing")]
        if ops.basic:
            user, password = ops.basic
            lines.append(f"auth.basic = {{ username = {toml_string(user)}, password = {toml_string(password)} }}")
    return "\n".join(lines) + "\n"


async def ask(api: RestApi, sender: Session, receiver: Session) -> str:
    status, body = await api.create(sender, toJid=receiver.jid)
    assert status == 200, body
    return body["data"]["id"]


async def put(api: RestApi, path: str, data: dict[str, object]) -> str:
    status, body = await api.kazoo("PUT", path, body={"data": data})
    return assert_kazoo_success(status, body, 201)["id"]


async def test_the_live_service_answers_as_openapi_yaml_says(
    make_service: ServiceFactory, ensure_prosody_up: LocalProsody, http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    service = await make_service(ensure_prosody_up, domains=["example.test", OTHER_DOMAIN])
    api = RestApi(http, service.base_url)
    alice, bob, carol, dave = [await api.login(name) for name in ("alice", "bob", "carol", "dave")]
    revoked = await api.login("alice")  # the logout operation's: the first call revokes it
    tenant = await provision(api)
    accounts = f"/v2/accounts/{tenant.account_id}"
    spare_device = await put(api, f"{accounts}/devices", {"name": "Spare", "sip": {"username": "1003"}})
    spare_user = await put(api, f"{accounts}/users", {"username": "dave"})
    spare_account = await put(api, "/v2/accounts", {"name": "Other", "realm": OTHER_DOMAIN})
    requests = [await ask(api, sender, bob) for sender in (alice, carol, dave)]
    status, body = await api.xlink(
        "POST", "/v2/share/device", alice.token, body={"device_id": tenant.desk_id, "expire": 3600, "mode": "qrcode"}
    )
    assert status == 200, body

    config = tmp_path / "schemathesis.toml"
    config.write_text(
        schemathesis_config(
            dictionaries={
                "alice": [alice.user_id],
                "bob": [bob.user_id],
                "others": [bob.user_id, carol.user_id],
                "jids": [bob.jid, carol.jid, "erin@other.test"],
                "requests": requests,
                "accounts": [tenant.account_id],
                "spare_accounts": [spare_account],
                "account_users": [tenant.alice_id, spare_user],
                "spare_users": [spare_user],
                "devices": [tenant.desk_id, tenant.soft_id],
                "spare_devices": [spare_device],
                "extensions": ["2001", "1002", "*3101"],
                "invite_codes": [body["invite_code"]],
                "realms": ["example.test", OTHER_DOMAIN],
                "sip_usernames": ["1004", "1005", "user100"],
            },
            bindings={
                "path.userId": "alice",
                "path.presenceReqId": "requests",
                "path.extension": "extensions",
                "path.invite_code": "invite_codes",
                "body.toUserId": "others",
                "body.toJid": "jids",
                "body.device_id": "devices",
                "body.invite_code": "invite_codes",
                "body.data.owner_id": "account_users",
                "body.data.realm": "realms",
                "body.data.sip.username": "sip_usernames",
            },
            operations=[
                Operations(RAINBOW_AS_ALICE, {"Authorization": f"Bearer {alice.token}"}),
                Operations(RAINBOW_AS_BOB, {"Authorization": f"Bearer {bob.token}"}, {"path.userId": "bob"}),
                Operations(("logout",), {"Authorization": f"Bearer {revoked.token}"}),
                # Carol's token is no operation's: each login beyond [limits]
                # max_tokens_per_user (20) revokes its user's oldest token, alice's would go.
                Operations(("login",), basic=(carol.jid, PASSWORDS["carol"])),
                Operations(KAZOO, {"X-Auth-Token": ADMIN_TOKEN}, {
                    "path.account_id": "accounts", "path.user_id": "account_users", "path.device_id": "devices",
                }),
                # The DELETEs get spare objects and nothing learnt from other answers (stateful
                # links, reused response values would hand them the tenant's ids): the tenant's
                # objects stay for every other call.
                Operations(("deleteAccount",), {"X-Auth-Token": ADMIN_TOKEN}, {
                    "path.account_id": "spare_accounts",
                }, reuse_ids=False),
                Operations(("deleteAccountUser",), {"X-Auth-Token": ADMIN_TOKEN}, {
                    "path.account_id": "accounts", "path.user_id": "spare_users",
                }, reuse_ids=False),
                Operations(("deleteDevice",), {"X-Auth-Token": ADMIN_TOKEN}, {
                    "path.account_id": "accounts", "path.device_id": "spare_devices",
                }, reuse_ids=False),
                Operations(XLINK, {"Access-Token": alice.token}),
            ],
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config),
        "run", str(SPEC), "--url", service.base_url, "--workers", "1", "--no-color",
        "--report", "har", "--report-dir", str(tmp_path / "report"),  # every call, to look into
        cwd=str(tmp_path), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(RUN_BUDGET_S):
            output, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"schemathesis did not finish within {RUN_BUDGET_S} s") from None
    text = output.decode(errors="replace")
    print(text)  # shown with -s, and kept in the report of a failure
    assert proc.returncode == 0, f"{text[-20000:]}\n(every call: {tmp_path / 'report'})"
    # The tokens the operations were given held for the whole run: revoked half-way, the
    # remaining calls would only meet 401 and never reach the operations' own answers.
    for session, box in ((alice, "sent"), (bob, "received")):
        status, body = await api.list(session, box)
        assert status == 200, (session.jid, status, body)
