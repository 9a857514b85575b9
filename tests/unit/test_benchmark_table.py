"""benchmarks/run.py's table: a CPU baseline under /proc's 10 ms tick (0 us in a --quick
round) gives no ratio and no verdict, instead of ending the run with ZeroDivisionError."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

RUN_PY = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_run", None)


def test_a_ratio_needs_a_baseline_above_zero(bench) -> None:
    assert bench.ratio(3.0, 2.0) == 1.5
    assert bench.ratio(83.0, 0.0) is None
    assert bench.fmt_ratio(bench.ratio(3.0, 2.0), "x") == "1.50x"
    assert bench.fmt_ratio(None) == "n/a (baseline 0)"
    assert bench.meets(1.5, lambda r: r <= 1.5) is True
    assert bench.meets(1.6, lambda r: r <= 1.5) is False
    assert bench.meets(None, lambda r: r <= 1.5) is None


def test_the_table_says_n_a_for_a_target_it_cannot_judge(bench, capsys) -> None:
    r = bench.ratio(83.0, 0.0)
    rows = [
        bench.Row("drain", "83 us", "0 us plain component", bench.fmt_ratio(r), "<= 1.5x",
                  bench.meets(r, lambda x: x <= 1.5)),
        bench.Row("info row", "1", "2", "0.50", "-", None),
        bench.Row("missed", "9", "1", "9.00", "<= 1.5x", False),
    ]
    bench.print_table(rows, [], "quick", [])
    out = capsys.readouterr().out
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
             for line in out.splitlines() if line.startswith("| ") and "figure" not in line}
    assert cells["drain"][3:] == ["n/a (baseline 0)", "<= 1.5x", "n/a"]
    assert cells["info row"][5] == "info"
    assert cells["missed"][5] == "FAIL"
    assert "FAIL: missed" in out and "FAIL: drain" not in out
