#!/usr/bin/env python3
"""Benchmark oauth-usage-tracker against the loopback fake that `--demo` uses.

Every target is a ratio of two figures measured in this one run, so that it does not depend on
how fast the machine is; the machine's own figures are printed beside the ratios, with the load
average (other work on the machine slows the tool and its baseline alike, but not exactly).

- fetch: the tool's fetch of N accounts with W workers (the library's `refresh_and_wait`,
  cooldown state kept, as the script runs it) against a bare client on the same fake: the
  standard library's `http.client`, W threads, one keep-alive connection each, reading and
  parsing every body. Both run in this process, interleaved, best of 3, and the fake runs in a
  process of its own (ForkedFake), as a real endpoint runs elsewhere;
- one account: the script's whole run (start-up included) against `python -c` of a one-request
  `http.client` script (interpreter start-up included), best of 5, both started by a Python
  like an operator's installation, without this environment's .pth files (Interpreter);
- memory: the script's peak RSS (VmHWM, read by the child itself as it exits: os.wait4's
  ru_maxrss would count the memory of the process that forked it) at several N, each run with
  the state file an earlier run left, and the slope of a least-squares line through them;
- linearity: wall = a + b * N / W fitted by least squares over runs with N <= 1,000 (the
  start-up is the intercept a), its largest relative residual, and a 10,000-account run against
  the fit's prediction.

    python3 scripts/bench.py                 # the full run (a few minutes)
    python3 scripts/bench.py --quick         # a smoke run (the targets are the full run's)
    python3 scripts/bench.py --strict        # exit 1 when a target is missed
"""
import argparse
import json
import multiprocessing
import os
import platform
import site
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import venv
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from oauth_usage_tracker import demo
from oauth_usage_tracker.accounts import discover_accounts
from oauth_usage_tracker.config import Settings
from oauth_usage_tracker.models import Discovery
from oauth_usage_tracker.tracker import OAuthUsageTracker

MiB = 1024 * 1024
KiB = 1024

# Runs the script in this interpreter, then, as the interpreter exits (after every thread was
# joined), writes the process's own peak RSS (VmHWM, kB) to the file named by argv[1].
PEAK_WRAPPER = """\
import atexit, sys
def _peak(path=sys.argv[1]):
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(path, "w") as out:
        out.write(kib)
atexit.register(_peak)
sys.argv = ["oauth-usage-tracker"] + sys.argv[2:]
from oauth_usage_tracker.cli import run
run()
"""

# The baseline's one-request run: what a person writing it by hand with the standard library gets.
ONE_REQUEST = """\
import http.client, json, sys
connection = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=15)
connection.request("GET", sys.argv[3], headers={"Authorization": "Bearer " + sys.argv[4]})
response = connection.getresponse()
json.loads(response.read())
connection.close()
sys.exit(response.status != 200)
"""


def child_environ() -> Dict[str, str]:
    """The environment of the children: this one, but with bytecode caching allowed, as an
    installed package has it (pip compiles it); without it every run compiles the package."""
    environ = dict(os.environ)
    environ.pop("PYTHONDONTWRITEBYTECODE", None)
    return environ


class Interpreter:
    """This Python as an operator's installation runs it: `site` as usual, this package and its
    dependencies on sys.path, but none of this environment's .pth files. An editable install's
    finder (`__editable__.*.pth`) imports pathlib, urllib.parse and importlib.util at every
    interpreter start, about 16 M instructions that the one-request baseline would never pay on
    a normal installation (requests imports them anyway, so the script pays them either way); coverage's
    hook is one more. A throwaway venv whose one .pth names the directories is that Python."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="oauth-usage-bench-python-")
        venv.create(self._tmp.name, with_pip=False, symlinks=os.name != "nt")
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(demo.__file__)))
        paths = [package_root] + [sysconfig.get_path(name) for name in ("purelib", "platlib")]
        paths += site.getsitepackages()  # a distribution's own (Debian's dist-packages)
        if site.ENABLE_USER_SITE:
            paths.append(site.getusersitepackages())
        paths = [path for path in paths if os.path.isdir(path)]
        purelib = sysconfig.get_path("purelib", vars={"base": self._tmp.name,
                                                      "platbase": self._tmp.name})
        with open(os.path.join(purelib, "oauth-usage-bench.pth"), "w") as handle:
            handle.write("".join(path + "\n" for path in dict.fromkeys(paths)))
        self.executable = os.path.join(self._tmp.name, "bin", "python")
        subprocess.check_call([self.executable, "-c", "import requests, oauth_usage_tracker"],
                              env=child_environ())

    def __enter__(self) -> "Interpreter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._tmp.cleanup()


def _serve_fake(conn: Connection, latency: float, auth: str, claude: int, codex: int) -> None:
    """The forked fake's process: serve the accounts written into `auth`, answer the bench's
    questions about what the fake saw, until told to stop."""
    fake = demo.FakeProviders(latency=latency)
    fake.start()
    try:
        paths = demo.populate(fake, auth, claude=claude, codex=codex)
        conn.send((fake.base_url, fake.environ(), paths))
        while True:
            question = conn.recv()
            if question[0] == "count":
                conn.send(fake.count(question[1]))
            elif question[0] == "connections":
                conn.send(fake.connections)
            elif question[0] == "latency":
                fake.latency = question[1]
                conn.send(None)
            else:
                return
    finally:
        fake.stop()


class ForkedFake:
    """The loopback fake that `--demo` uses, in a process of its own, as a real usage endpoint
    runs elsewhere: its request handlers never share the measured client's interpreter lock (in
    the bench's own process they would, and a client whose threads hold it longer per request
    would be slowed by the fake's work as well as its own). Asked through a pipe for what it
    saw (`count`, `connections`) and told its latency."""

    def __init__(self, latency: float, auth: str, claude: int, codex: int):
        context = multiprocessing.get_context("fork")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve_fake,
                                         args=(child, latency, auth, claude, codex), daemon=True)
        self._process.start()
        child.close()
        self.base_url, self._environ, self.paths = self._conn.recv()
        self._latency = latency

    def count(self, path: str) -> int:
        self._conn.send(("count", path))
        return int(self._conn.recv())

    @property
    def connections(self) -> int:
        self._conn.send(("connections",))
        return int(self._conn.recv())

    @property
    def latency(self) -> float:
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._conn.send(("latency", seconds))
        self._conn.recv()
        self._latency = seconds

    def environ(self) -> Dict[str, str]:
        return dict(self._environ)

    def stop(self) -> None:
        self._conn.send(("stop",))
        self._process.join(30)
        self._conn.close()


class Pool:
    """N healthy accounts (half Claude, half Codex) in a temp auth dir, served by one fake in a
    process of its own (ForkedFake)."""

    def __init__(self, accounts: int, latency: float):
        self.accounts = accounts
        self.latency = latency
        self._tmp = tempfile.TemporaryDirectory(prefix="oauth-usage-bench-")
        self.dir = self._tmp.name
        self.auth = os.path.join(self.dir, "auth")
        self.state = os.path.join(self.dir, "state")

    def __enter__(self) -> "Pool":
        os.mkdir(self.auth)
        self.fake = ForkedFake(self.latency, self.auth, claude=self.accounts // 2,
                               codex=self.accounts - self.accounts // 2)
        paths = self.fake.paths
        self.targets: List[Tuple[str, str]] = []
        for path in paths:
            with open(path) as handle:
                data = json.load(handle)
            usage = demo.CLAUDE_PATH if data["type"] == "claude" else demo.CODEX_PATH
            self.targets.append((usage, data["access_token"]))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.fake.stop()
        self._tmp.cleanup()

    def requests(self) -> int:
        return self.fake.count(demo.CLAUDE_PATH) + self.fake.count(demo.CODEX_PATH)

    def environ(self) -> Dict[str, str]:
        return dict(child_environ(), XDG_STATE_HOME=self.state, **self.fake.environ())


class Fetch(NamedTuple):
    wall: float
    requests: int
    connections: int
    ok: bool


def counted(pool: Pool, action: Callable[[], bool]) -> Fetch:
    """Run `action` and return its wall time and what the fake saw meanwhile."""
    requests, connections = pool.requests(), pool.fake.connections
    started = time.perf_counter()
    ok = action()
    wall = time.perf_counter() - started
    return Fetch(wall, pool.requests() - requests, pool.fake.connections - connections, ok)


def baseline_fetch(pool: Pool, workers: int) -> bool:
    """The bare client: W threads draining one iterator of requests, one keep-alive
    http.client connection per thread. Return True when every answer was a 200 with JSON."""
    import http.client
    host, port = pool.fake.base_url[len("http://"):].split(":")
    work: Iterator[Tuple[str, str]] = iter(pool.targets)
    lock = threading.Lock()
    failures: List[int] = []

    def worker() -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=15)
        try:
            while True:
                with lock:
                    target = next(work, None)
                if target is None:
                    return
                connection.request("GET", target[0],
                                   headers={"Authorization": "Bearer " + target[1]})
                response = connection.getresponse()
                json.loads(response.read())
                if response.status != 200:
                    failures.append(response.status)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(min(workers, len(pool.targets)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return not failures


def tool_fetch(pool: Pool, found: Discovery, workers: int) -> bool:
    """The tool's fetch of the accounts found, as the script runs it: a tracker that keeps its
    cooldown state. Return True when every account came back with windows."""
    settings = Settings.from_environ(pool.fake.environ(), workers=workers,
                                     allow_token_refresh=False)
    with OAuthUsageTracker(settings=settings, state_dir=pool.state) as tracker:
        results = tracker.refresh_and_wait(found.codex, found.claude)
    return len(results) == pool.accounts and all(r.windows and not r.error for r in results)


def script(arguments: Sequence[str], environ: Dict[str, str], peak_file: Optional[str] = None,
           python: str = sys.executable) -> Tuple[float, int]:
    """Run the script with `python` (under the peak wrapper when `peak_file` is given); return
    its wall time and exit status."""
    if peak_file:
        command = [python, "-c", PEAK_WRAPPER, peak_file] + list(arguments)
    else:
        command = [python, "-m", "oauth_usage_tracker"] + list(arguments)
    started = time.perf_counter()
    status = subprocess.call(command, env=environ, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started, status


def script_run(pool: Pool, workers: int) -> Tuple[Fetch, int]:
    """One whole run of the script over the pool, JSON report to a file, after an unmeasured
    one without latency that leaves the state file behind (every cron run but the first finds
    one); return the figures and the peak RSS in bytes."""
    peak_file = os.path.join(pool.dir, "peak")
    arguments = ["--auth-dir", pool.auth, "--json", "--output",
                 os.path.join(pool.dir, "report.json"), "--workers", str(workers), "-q",
                 "--no-token-refresh"]

    def run() -> bool:
        return script(arguments, pool.environ(), peak_file)[1] == 0

    latency, pool.fake.latency = pool.fake.latency, 0.0
    seeded = run() and os.path.exists(os.path.join(pool.state, "oauth-usage-tracker",
                                                   "state.json"))
    pool.fake.latency = latency
    fetch = counted(pool, run)
    fetch = fetch._replace(ok=fetch.ok and seeded)
    with open(peak_file) as handle:
        return fetch, int(handle.read()) * KiB


def fit(points: Sequence[Tuple[float, float]]) -> Tuple[float, float]:
    """Given (x, y) points, return (a, b) of the least-squares line y = a + b * x."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    b = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx if sxx else 0.0
    return mean_y - b * mean_x, b


class Bench:
    """Rows of figures and the checks on them, printed at the end."""

    def __init__(self) -> None:
        self.rows: List[Tuple[str, str, str]] = []
        self.checks: List[Tuple[str, bool]] = []

    def row(self, measure: str, measured: str, ratio: str = "") -> None:
        self.rows.append((measure, measured, ratio))
        print(("  %s: %s %s" % (measure, measured, ratio)).rstrip(), file=sys.stderr, flush=True)

    def check(self, name: str, held: bool) -> None:
        self.checks.append((name, held))

    def print(self) -> None:
        width = max(len(row[0]) for row in self.rows)
        print("%-*s  %-32s  %s" % (width, "measure", "measured", "ratio"))
        for name, measured, value in self.rows:
            print(("%-*s  %-32s  %s" % (width, name, measured, value)).rstrip())
        print()
        for name, held in self.checks:
            print("%s  %s" % ("PASS" if held else "FAIL", name))

    @property
    def passed(self) -> bool:
        return all(held for _, held in self.checks)


def bench_fetch(bench: Bench, sizes: Sequence[int], workers: int, latency: float, repeats: int
                ) -> None:
    """The fetch target: the tool against the bare client, interleaved, best of `repeats`."""
    for size in sizes:
        with Pool(size, latency) as pool:
            found = discover_accounts(pool.auth)
            tool: List[Fetch] = []
            base: List[Fetch] = []
            for _ in range(repeats):
                base.append(counted(pool, lambda: baseline_fetch(pool, workers)))
                tool.append(counted(pool, lambda: tool_fetch(pool, found, workers)))
        best_tool = min(f.wall for f in tool)
        best_base = min(f.wall for f in base)
        ratio = best_tool / best_base
        bench.row("fetch N=%d W=%d %g s: tool / baseline (best of %d)"
                  % (size, workers, latency, repeats),
                  "%.3f s / %.3f s" % (best_tool, best_base), "%.3f" % ratio)
        bench.check("fetch N=%d: tool <= 1.04 x baseline (%.3f)" % (size, ratio), ratio <= 1.04)
        bench.check("fetch N=%d: every account fetched, once each, on <= W connections"
                    % size, all(f.ok and f.requests == size and f.connections <= workers
                                for f in tool))


def bench_one_account(bench: Bench, latency: float, repeats: int) -> None:
    """The one-account target: the whole script against a one-request stdlib script, both
    started by the Python of an operator's installation (Interpreter)."""
    with Interpreter() as python, Pool(1, latency) as pool:
        host, port = pool.fake.base_url[len("http://"):].split(":")
        one = [python.executable, "-c", ONE_REQUEST, host, port] + list(pool.targets[0])
        tool: List[float] = []
        base: List[float] = []
        statuses = []
        for _ in range(repeats):
            started = time.perf_counter()
            statuses.append(subprocess.call(one, env=child_environ(), stdout=subprocess.DEVNULL))
            base.append(time.perf_counter() - started)
            wall, status = script(["--auth-dir", pool.auth, "-q", "--no-token-refresh"],
                                  pool.environ(), python=python.executable)
            tool.append(wall)
            statuses.append(status)
    ratio = min(tool) / min(base)
    bench.row("one account %g s: script / python -c http.client (best of %d)"
              % (latency, repeats), "%.3f s / %.3f s" % (min(tool), min(base)),
              "%.2f" % ratio)
    bench.check("one account: script <= 1.5 x one-request stdlib script (%.2f)" % ratio,
                ratio <= 1.5 and not any(statuses))


def bench_scaling(bench: Bench, small: Sequence[int], big: int, workers: int, latency: float,
                  memory_targets: Dict[int, float]) -> None:
    """Whole script runs: wall time and peak RSS against N, fitted by least squares."""
    runs: Dict[int, Tuple[Fetch, int]] = {}
    for size in list(small) + [big]:
        with Pool(size, latency) as pool:
            runs[size] = script_run(pool, workers)
        fetch, peak = runs[size]
        bench.row("script N=%d W=%d %g s: wall, peak RSS" % (size, workers, latency),
                  "%.2f s, %.1f MiB" % (fetch.wall, peak / MiB))
        bench.check("script N=%d: exit 0, every account fetched once" % size,
                    fetch.ok and fetch.requests == size)
    a, b = fit([(size / workers, runs[size][0].wall) for size in small])
    residual = max(abs(runs[size][0].wall - (a + b * size / workers)) / runs[size][0].wall
                   for size in small)
    predicted = a + b * big / workers
    ratio = runs[big][0].wall / predicted
    bench.row("wall = a + b * N/W over N <= %d" % max(small),
              "a %.3f s, b %.3f s, max residual %.1f%%" % (a, b, residual * 100))
    bench.row("wall N=%d / fit" % big, "%.2f s / %.2f s" % (runs[big][0].wall, predicted),
              "%.3f" % ratio)
    bench.check("wall at N=%d within 1.1 x the fit from N <= %d (%.3f)"
                % (big, max(small), ratio), ratio <= 1.1)
    base, slope = fit([(size, runs[size][1]) for size in runs])
    bench.row("peak RSS = c + s * N", "c %.1f MiB, s %.2f KiB/account" % (base / MiB,
                                                                         slope / KiB),
              "%.2f of 3 KiB" % (slope / KiB / 3))
    bench.check("peak RSS slope <= 3 KiB per account (%.2f)" % (slope / KiB), slope <= 3 * KiB)
    for size, limit in sorted(memory_targets.items()):
        peak = runs[size][1]
        bench.row("peak RSS N=%d / %g MiB" % (size, limit), "%.1f MiB" % (peak / MiB),
                  "%.2f" % (peak / MiB / limit))
        bench.check("peak RSS at N=%d <= %g MiB (%.1f MiB)" % (size, limit, peak / MiB),
                    peak <= limit * MiB)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true", help="small N, for a smoke test")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    workers, latency = args.workers, args.latency
    if args.quick:
        workers, latency = 4, 0.02
        fetch_sizes, repeats, small, big, memory = (16, 40), 1, (8, 16, 32), 64, {}
    else:
        fetch_sizes, repeats, small, big = (200, 1000), 3, (100, 250, 500, 1000), 10000
        memory = {1000: 36.0, 10000: 60.0}

    bench = Bench()
    load = os.getloadavg()
    bench.row("machine", "%s, Python %s, %d CPUs" % (platform.machine(),
                                                     platform.python_version(), os.cpu_count()))
    bench.row("started", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "load %.2f %.2f %.2f" % load)
    bench_fetch(bench, fetch_sizes, workers, latency, repeats)
    bench_one_account(bench, latency, 3 if args.quick else 5)
    bench_scaling(bench, small, big, workers, latency, memory)
    bench.row("finished", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "load %.2f %.2f %.2f" % os.getloadavg())
    print(file=sys.stderr)
    bench.print()
    return 1 if args.strict and not bench.passed else 0


if __name__ == "__main__":
    sys.exit(main())
