"""The README's first command, as a new user runs it: `bash scripts/run.sh`."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import signal
import socket
import stat
import tempfile
from pathlib import Path

import aiohttp
import pytest

from local_prosody import free_port
from tests.e2e.conftest import REPO, wait_for_health

pytestmark = pytest.mark.e2e


def demo_env(demo: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DEMO_DIR": str(demo),
        "C2S_PORT": str(free_port()),
        "COMPONENT_PORT": str(free_port()),
        "HTTP_PORT": str(free_port()),
        "SMTP_PORT": str(free_port()),
    }


async def test_run_sh_brings_the_demo_up_with_private_files_and_stops_everything(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    env = demo_env(demo)
    proc = await start_demo(env, tmp_path / "run.log")
    base = f"http://127.0.0.1:{env['HTTP_PORT']}"
    try:
        await wait_until_granted(base, tmp_path / "run.log", demo / "xmpp" / "prosody.log")
        await log_in(base, "alice")
        # Secrets, configs, the database and Prosody's data are for their owner only.
        for path in [demo, demo / "xmpp", demo / "xmpp" / "data", demo / "mailbox"]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
        for path in [demo / "secret", demo / "admin_token", demo / "config.toml",
                     demo / "presence.sqlite3", demo / "xmpp" / "prosody.cfg.lua"]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        await ctrl_c(proc, 30)
    # Ctrl-C stopped Prosody, the mailbox and the service: nothing listens any more.
    for name in ("C2S_PORT", "COMPONENT_PORT", "HTTP_PORT", "SMTP_PORT"):
        assert not listening(int(env[name])), name
    # The service's one line per request, as an operator reads it on the terminal.
    log = (tmp_path / "run.log").read_text(errors="replace")
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO http_bridge: http GET "
                     r"/api/rainbow/authentication/v1\.0/login -> 200 in [\d.]+ ms request_id=[0-9a-f]{32} user=\S+$",
                     log, re.MULTILINE), log[-3000:]


async def test_run_sh_with_xmpp_server_ejabberd_runs_the_demo_on_ejabberd(tmp_path: Path) -> None:
    """`XMPP_SERVER=ejabberd bash scripts/run.sh`: the same demo on ejabberd 23.01, rosters
    through its HTTP API; run twice on one .demo/ (the users are there already).

    The demo folder is made with `tempfile`, traversable: ejabberdctl runs the node as the
    `ejabberd` user, which cannot enter pytest's 0700 base folder."""
    top = Path(tempfile.mkdtemp(prefix="e2e-demo-"))
    top.chmod(0o711)
    try:
        demo = top / "demo"
        env = demo_env(demo) | {"XMPP_SERVER": "ejabberd", "API_PORT": str(free_port()), "DIST_PORT": str(free_port())}
        for run in (1, 2):
            proc = await start_demo(env, tmp_path / f"run-{run}.log")
            base = f"http://127.0.0.1:{env['HTTP_PORT']}"
            try:
                await wait_until_granted(
                    base, tmp_path / f"run-{run}.log", demo / "ejabberd" / "logs" / "ejabberd.log",
                    demo / "ejabberd" / "logs" / "error.log",
                )
                await log_in(base, "bob")
                assert 'backend = "ejabberd_api"' in (demo / "config.toml").read_text()
            finally:
                await ctrl_c(proc, 60)
            for name in ("C2S_PORT", "COMPONENT_PORT", "HTTP_PORT", "SMTP_PORT", "API_PORT", "DIST_PORT"):
                assert not listening(int(env[name])), (run, name)
    finally:  # also when the test fails or is interrupted
        shutil.rmtree(top, ignore_errors=True)


async def start_demo(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    """`bash scripts/run.sh` in its own process group (ctrl_c stops it), stderr to `log`."""
    with open(log, "wb") as stderr:  # noqa: ASYNC230 - a local file, once per run; the child keeps its own copy
        return await asyncio.create_subprocess_exec(
            "bash", "scripts/run.sh", cwd=str(REPO), env=env, start_new_session=True,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
        )


async def log_in(base: str, user: str) -> None:
    """The README's first curl: a demo user's password login answers 200."""
    async with aiohttp.ClientSession() as http:
        basic = base64.b64encode(f"{user}@example.test:{user}-password".encode()).decode()
        async with http.get(
            f"{base}/api/rainbow/authentication/v1.0/login", headers={"Authorization": f"Basic {basic}"}
        ) as resp:
            assert resp.status == 200, await resp.text()


async def wait_until_granted(base: str, *logs: Path) -> None:
    """/healthz says the session is up and rosters can be changed; otherwise fail with the
    end of each log (run.sh's and the XMPP server's), which is all a CI run keeps."""
    try:
        await wait_for_health(base, lambda s, b: s == 200 and b.get("roster") == "granted", timeout=120)
    except AssertionError as exc:
        tails = []
        for path in logs:
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError as error:
                lines = [f"(unreadable: {error})"]
            tails.append(f"--- {path.name} (last 40 lines) ---\n" + "\n".join(lines[-40:]))
        raise AssertionError("\n".join([str(exc), *tails])) from None


async def ctrl_c(proc: asyncio.subprocess.Process, timeout: float) -> None:
    """Stop run.sh as Ctrl-C does (SIGINT to its process group); past `timeout` seconds,
    kill the group and fail."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # closed connections may linger
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


async def test_run_sh_refuses_a_taken_port_before_starting_anything(tmp_path: Path) -> None:
    env = demo_env(tmp_path / "demo")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(env["HTTP_PORT"])))
        taken.listen()
        proc = await asyncio.create_subprocess_exec(
            "bash", "scripts/run.sh", cwd=str(REPO), env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 2, out.decode()
    assert f"127.0.0.1:{env['HTTP_PORT']} (HTTP_PORT) is already in use" in out.decode()
    assert not listening(int(env["C2S_PORT"]))  # Prosody never started
