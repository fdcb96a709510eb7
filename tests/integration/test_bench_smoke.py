"""scripts/bench.py must run: a small smoke run, no timed assertion (the targets are the full run's)."""
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench.py"


def test_bench_quick_runs_and_prints_every_measure():
    result = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for measure in ("start-up: --version / import requests", "new TCP connections / W",
                    "speed-up over sequential", "peak RSS", "connections <= W"):
        assert measure in result.stdout
    assert "PASS  every account fetched" in result.stdout
    assert "PASS  connections <= W" in result.stdout
