"""The benchmark tool keeps working: a --quick run (tiny sizes, seconds) completes.

No figure is asserted here (machines are shared and noisy): `--quick` exits 0
whatever the ratios, and 2 when the benchmark itself breaks (an error answer, a
lost message, a dead process).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.postgresql]  # the postgresql figure runs on PostgreSQL


def run_tool(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a benchmark script, its output captured. Past `timeout` it is stopped as Ctrl-C
    stops it, so that it stops every process it started (a SIGKILL, subprocess.run's way,
    would leave its Prosody and services running), and the test fails with its output."""
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=10)
        pytest.fail(f"{Path(argv[1]).name} did not end within {timeout:.0f} s:\n{(out + err)[-4000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def test_benchmark_quick_run_completes_and_prints_every_figure() -> None:
    # --against this very checkout: the side-by-side service runs too (ratio about 1).
    result = run_tool([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--against", str(ROOT)],
                      ROOT, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for figure in (
        "cycles/s (create+accept+interrupt, delivery complete)",
        "service CPU per REST write (create, accept), delivery excluded",
        "REST reads (get one, list first page)",
        "cycles/s on PostgreSQL, 1 instance",
        "REST reads/s on PostgreSQL, 1 instance",
        "cycles/s on PostgreSQL, 2 instances",
        "list received p99",
        "service peak RSS",
        "service CPU per delivered stanza, draining",
        "service CPU per accept, 1000-item rosters",
        "(info) REST reads vs the reference read handlers",
        "(info) reference component CPU per accept, 1000-item rosters",
        "(info) XML parse of one 1000-item roster answer, as the service parses it",
        "(info) REST reads vs the --against checkout",
    ):
        assert figure in result.stdout, output[-4000:]
    assert "--against service up" in output, output[-4000:]


@pytest.mark.parametrize("argv, says", [
    (["--against", "/"], "not a checkout of the service"),
    (["--against", str(ROOT), "--only", "cycles"], "add reads to --only"),
])
def test_benchmark_refuses_an_against_it_cannot_use_before_starting_anything(argv, says, tmp_path) -> None:
    result = run_tool([sys.executable, str(ROOT / "benchmarks" / "run.py"), *argv], tmp_path, timeout=60)
    assert result.returncode == 2 and says in result.stderr, result.stderr[-2000:]
    assert "work folder" not in result.stdout + result.stderr  # refused before any setup


def test_login_benchmark_tiny_run_completes_and_prints_both_figures() -> None:
    result = run_tool([sys.executable, str(ROOT / "benchmarks" / "logins.py"), "--rounds", "1", "--rate-logins",
                       "20", "--logins", "150", "--users", "10"], ROOT, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for line in ("logins/s, 32 concurrent, valid passwords", "ratio service/baseline (medians)",
                 "service RSS over 150 logins", "growth after 100 -> after 150",
                 "login_failures_per_address=1000000"):
        assert line in result.stdout, output[-4000:]
