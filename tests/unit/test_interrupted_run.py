"""A pytest run stopped by SIGTERM or SIGHUP leaves nothing running (tests/conftest.py).

Each case runs a tiny suite in a pytest of its own, with tests/conftest.py loaded as the
real suite loads it. The suite starts what the real fixtures start: a "server" in a
session of its own (the signal never reaches it, as it never reaches Prosody, ejabberd or
PostgreSQL) from a session fixture, a child process from an async fixture, and one from
the async test's body, stopped in its `finally`. The case signals that pytest once all
three run, and checks that every one of them is gone once it has exited; with SIGINT at
its default and with SIGINT ignored (a background job of a script), which conftest.py
turns back on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SUITE = '''
import asyncio, os, subprocess, sys
from pathlib import Path
import pytest

PIDS = Path(os.environ["PIDS_FILE"])
SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def note(line):
    with open(PIDS, "a") as f:
        f.write(line + "\\n")


@pytest.fixture(scope="session")
def server():
    proc = subprocess.Popen(SLEEPER, start_new_session=True)
    note(f"pid {proc.pid}")
    yield
    proc.terminate()
    proc.wait()


@pytest.fixture
async def child():
    proc = await asyncio.create_subprocess_exec(*SLEEPER)
    note(f"pid {proc.pid}")
    yield
    proc.terminate()
    await proc.wait()


async def test_runs_until_signalled(server, child):
    proc = await asyncio.create_subprocess_exec(*SLEEPER)
    note(f"pid {proc.pid}")
    try:
        note("ready")
        await asyncio.sleep(120)
    finally:
        proc.terminate()
        await proc.wait()
'''

INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""


def alive(pid: int) -> bool:
    """Running, or at least not yet reaped by anyone: a zombie has exited, so it counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    ("signum", "sigint"),
    [(signal.SIGTERM, "default"), (signal.SIGTERM, "ignored"), (signal.SIGHUP, "default")],
    ids=["SIGTERM", "SIGTERM-sigint-ignored", "SIGHUP"],
)
def test_a_signalled_run_tears_down_and_leaves_nothing_running(
    tmp_path: Path, signum: signal.Signals, sigint: str
) -> None:
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "pytest.ini").write_text(INI)
    pids_file = tmp_path / "pids"
    disposition = signal.SIG_DFL if sigint == "default" else signal.SIG_IGN
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), str(tmp_path / "test_suite.py")],
        cwd=str(REPO),
        env={**os.environ, "PIDS_FILE": str(pids_file), "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, disposition),
    )
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 15
        while not (pids_file.exists() and "ready" in pids_file.read_text()):
            assert proc.poll() is None, proc.communicate()[0].decode()
            assert time.monotonic() < deadline, "the tiny suite did not get going"
            time.sleep(0.05)
        pids = [int(line.split()[1]) for line in pids_file.read_text().splitlines() if line.startswith("pid ")]
        assert len(pids) == 3 and all(alive(pid) for pid in pids)

        proc.send_signal(signum)
        out = proc.communicate(timeout=15)[0].decode()

        assert [pid for pid in pids if alive(pid)] == [], out
        assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    finally:
        # Whatever the outcome, this test leaves nothing running either.
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
