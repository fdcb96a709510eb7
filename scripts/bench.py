#!/usr/bin/env python3
"""Benchmark oauth-usage-tracker against the loopback fake that `--demo` uses.

Every figure is measured in this one run and printed as a ratio against its own baseline, so the
result does not depend on how fast this machine is:

- wall time of a fetch of N accounts with W workers against the ideal ceil(N / W) x latency, and
  the speed-up over a sequential fetch (W = 1) of the same accounts;
- new TCP connections the fake saw, against W;
- start-up: `oauth-usage-tracker --version` against `python -c "import requests"` (median of 5);
- peak RSS of a run over many accounts, and how wall time grows with N / W.

    python3 scripts/bench.py                 # the full run (about a minute)
    python3 scripts/bench.py --quick         # a small smoke run (targets are meant for the full run)
    python3 scripts/bench.py --strict        # exit 1 when a target is missed
"""
import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from oauth_usage_tracker import demo

MiB = 1024 * 1024


def tool_command():
    script = shutil.which("oauth-usage-tracker")
    return [script] if script else [sys.executable, "-m", "oauth_usage_tracker"]


def timed(command, env=None):
    """Run a command; return (wall seconds, peak RSS bytes, exit status)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss * 1024, process.returncode


def median_startup(command, runs=5):
    return statistics.median(timed(command)[0] for _ in range(runs))


def fetch(accounts, workers, latency):
    """Fetch `accounts` accounts (half Claude, half Codex) with the real CLI; return figures."""
    with demo.FakeProviders(latency=latency) as fake, tempfile.TemporaryDirectory() as tmp:
        auth = os.path.join(tmp, "auth")
        os.mkdir(auth)
        demo.populate(fake, auth, claude=accounts // 2, codex=accounts - accounts // 2)
        # A real run keeps state (cooldowns, last good values): keep it in the temp dir too.
        env = dict(os.environ, XDG_STATE_HOME=os.path.join(tmp, "state"), **fake.environ())
        command = tool_command() + ["--auth-dir", auth, "--json", "--output",
                                    os.path.join(tmp, "report.json"), "--workers", str(workers),
                                    "-q", "--no-token-refresh"]
        wall, rss, status = timed(command, env)
        requests = fake.count(demo.CLAUDE_PATH) + fake.count(demo.CODEX_PATH)
        return {"wall": wall, "rss": rss, "status": status, "connections": fake.connections,
                "requests": requests}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--rss-accounts", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="small N, for a smoke test")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.quick:
        args.accounts, args.workers, args.latency, args.rss_accounts = 16, 4, 0.02, 40
    n, w, latency = args.accounts, args.workers, args.latency
    rows, checks = [], []

    startup_tool = median_startup(tool_command() + ["--version"])
    startup_requests = median_startup([sys.executable, "-c", "import requests"])
    startup_ratio = startup_tool / startup_requests
    rows.append(("start-up: --version / import requests (median of 5)",
                 "%.3f s / %.3f s" % (startup_tool, startup_requests), "%.2f" % startup_ratio))
    checks.append(("start-up <= 1.3 x import requests", startup_ratio <= 1.3))

    parallel = fetch(n, w, latency)
    ideal = math.ceil(n / w) * latency
    ratio = (parallel["wall"] - startup_tool) / ideal
    rows.append(("fetch N=%d W=%d latency %g s: (wall - start-up) / ideal" % (n, w, latency),
                 "%.2f s / %.2f s" % (parallel["wall"] - startup_tool, ideal), "%.2f" % ratio))
    checks.append(("(wall - start-up) / ideal <= 1.25", ratio <= 1.25))
    checks.append(("every account fetched (exit 0, %d requests)" % parallel["requests"],
                   parallel["status"] == 0 and parallel["requests"] == n))
    rows.append(("new TCP connections / W", "%d / %d" % (parallel["connections"], w),
                 "%.2f" % (parallel["connections"] / w)))
    checks.append(("connections <= W", parallel["connections"] <= w))

    sequential = fetch(n, 1, latency)
    speedup = sequential["wall"] / parallel["wall"]
    rows.append(("speed-up over sequential (W=1)",
                 "%.2f s / %.2f s" % (sequential["wall"], parallel["wall"]), "%.1fx" % speedup))

    ratios = []
    for factor in (0.5, 2):
        size = max(w, int(n * factor))
        result = fetch(size, w, latency)
        ratios.append((result["wall"] - startup_tool) / (math.ceil(size / w) * latency))
        rows.append(("linearity: N=%d, (wall - start-up) / ideal" % size,
                     "%.2f s" % result["wall"], "%.2f" % ratios[-1]))
    ratios.append(ratio)
    spread = max(ratios) / min(ratios)
    checks.append(("wall grows linearly with N / W (ratio spread %.2f <= 1.25)" % spread,
                   spread <= 1.25))

    big = fetch(args.rss_accounts, w, 0.0)
    rows.append(("peak RSS, %d accounts" % args.rss_accounts, "%.1f MiB" % (big["rss"] / MiB),
                 "%.2f of 60 MiB" % (big["rss"] / MiB / 60)))
    checks.append(("peak RSS <= 60 MiB at %d accounts" % args.rss_accounts,
                   big["rss"] <= 60 * MiB and big["status"] == 0))

    width = max(len(row[0]) for row in rows)
    print("%-*s  %-22s  %s" % (width, "measure", "measured", "ratio"))
    for name, measured, value in rows:
        print("%-*s  %-22s  %s" % (width, name, measured, value))
    print()
    for name, held in checks:
        print("%s  %s" % ("PASS" if held else "FAIL", name))
    return 1 if args.strict and not all(held for _, held in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
