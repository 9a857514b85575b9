"""Starting the service as an operator does: `python -m component --config FILE`."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, toml_text

pytestmark = pytest.mark.e2e


async def run_service(config: Path, timeout: float = 20) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "component", "--config", str(config),
        cwd=str(REPO), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("the service did not exit") from None
    return proc.returncode or 0, out.decode()


async def test_a_taken_http_port_is_a_clean_exit_with_status_2(tmp_path: Path) -> None:
    """It used to log the bind error, then aiosqlite thread tracebacks, and hang."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "config.toml"
        config.write_text(toml_text({
            "component": {"jid": "presence.example.test", "secret": "s", "server_port": 1},
            "http": {"host": "127.0.0.1", "port": port},
            "storage": {"path": str(tmp_path / "presence.sqlite3")},
        }))
        status, out = await run_service(config)
    assert status == 2, out
    assert f"cannot start: 127.0.0.1:{port} is already in use" in out
    assert "Traceback" not in out
