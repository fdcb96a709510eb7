"""scripts/bench.py must run and measure right: a small smoke run (no timed assertion, the targets
are the full run's), its least-squares fit, and a peak RSS that is the child's own."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench.py"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_quick_runs_and_prints_every_measure():
    result = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    for measure in ("machine", "load", "tool / baseline", "one account",
                    "script / python -c http.client", "wall = a + b * N/W",
                    "max residual", "wall N=64 / fit", "peak RSS = c + s * N"):
        assert measure in result.stdout
    for check in ("fetch N=16: every account fetched, once each, on <= W connections",
                  "fetch N=40: every account fetched, once each, on <= W connections",
                  "script N=8: exit 0, every account fetched once",
                  "script N=64: exit 0, every account fetched once"):
        assert "PASS  " + check in result.stdout


def test_fit_finds_the_line_through_exact_points(bench):
    a, b = bench.fit([(1.0, 5.0), (2.0, 7.0), (4.0, 11.0)])
    assert a == pytest.approx(3.0)
    assert b == pytest.approx(2.0)


def test_fit_of_noisy_points_is_least_squares(bench):
    a, b = bench.fit([(0.0, 0.0), (1.0, 2.0), (2.0, 1.0)])
    assert (a, b) == (pytest.approx(0.5), pytest.approx(0.5))


def test_peak_rss_is_the_childs_own_not_its_parents(bench, tmp_path):
    # os.wait4's ru_maxrss would report this process's ballast as the child's peak.
    ballast = b"\x01" * (160 * MiB)
    peak_file = str(tmp_path / "peak")
    wall, status = bench.script(["--version"], dict(os.environ), peak_file)
    assert status == 0
    peak = int(Path(peak_file).read_text()) * 1024
    assert 4 * MiB < peak < 100 * MiB
    assert len(ballast) == 160 * MiB
