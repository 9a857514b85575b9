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


async def test_a_second_service_on_the_same_database_exits_with_status_2(tmp_path: Path) -> None:
    """ejabberd load-balances connections of one component JID: two services on one
    SQLite database would both send its outbox. The second refuses, in one line."""
    db = tmp_path / "presence.sqlite3"

    def config(name: str, port: int) -> Path:
        path = tmp_path / name
        path.write_text(toml_text({
            "component": {"jid": "presence.example.test", "secret": "s", "server_port": 1},
            "http": {"host": "127.0.0.1", "port": port},
            "storage": {"path": str(db)},
        }))
        return path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        first_port = probe.getsockname()[1]
    first = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "component", "--config", str(config("first.toml", first_port)),
        cwd=str(REPO), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        lock = Path(f"{db}.lock")
        async with asyncio.timeout(20):
            while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
                await asyncio.sleep(0.05)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            second_port = probe.getsockname()[1]
        status, out = await run_service(config("second.toml", second_port))
    finally:
        first.terminate()
        await first.wait()
    assert status == 2, out
    lines = [line for line in out.splitlines() if "ERROR" in line]
    assert len(lines) == 1 and f"another service (pid {first.pid}) already runs on this database" in lines[0], out
    assert "PostgreSQL" in lines[0] and "Traceback" not in out
    # The lock went with the first process: the database is free again.
    status, out = await run_service_briefly(config("third.toml", second_port))
    assert "already runs on this database" not in out


async def run_service_briefly(config: Path) -> tuple[int, str]:
    """Start the service and stop it (SIGTERM) once it logged its HTTP listener."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "component", "--config", str(config),
        cwd=str(REPO), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    out = []
    try:
        async with asyncio.timeout(20):
            while line := (await proc.stdout.readline()).decode():
                out.append(line)
                if "http bridge listening" in line:
                    break
    finally:
        proc.terminate()
        rest, _ = await proc.communicate()
    return proc.returncode or 0, "".join(out) + rest.decode()
