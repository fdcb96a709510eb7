"""The metrics as an operator runs them: the real node_exporter reads the tool's textfile while
`--watch 1` rewrites it, and promtool checks every file the tool wrote.

A planted set of accounts covers the states (ok, stale, rate limited, blocked, login failed,
expired, disabled, unreadable); every scrape must show all of them, whole, with
`node_textfile_scrape_error 0`.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from oauth_usage_tracker import demo
from oauth_usage_tracker.models import UsageWindow
from oauth_usage_tracker.state import AccountState as StoredState
from oauth_usage_tracker.state import StateStore
from support import require_tool

SCRIPT = shutil.which("oauth-usage-tracker")
COMMAND = [SCRIPT] if SCRIPT else [sys.executable, "-m", "oauth_usage_tracker"]
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
WAIT = 60.0  # seconds; reached only when the test is about to fail

PLANTED = {
    "claude-alice@example.com.json": "ok",
    "codex-dave@example.com.json": "ok",
    "claude-stale@example.com.json": "stale",
    "claude-limited@example.com.json": "rate_limited",
    "codex-frank@example.com.json": "blocked",
    "claude-gone@example.com.json": "login_failed",
    "claude-old@example.com.json": "expired",
    "codex-off@example.com.json": "disabled",
    "claude-torn.json": "unreadable",
}


def plant(fake, auth_dir: Path, state_dir: Path) -> None:
    """Write the planted credential files, register them with the fake, and store last good
    values for the one that must show as stale."""
    now = datetime.now(timezone.utc)
    later = now + timedelta(hours=5)
    cast = [("claude", "alice@example.com", "ok"), ("codex", "dave@example.com", "ok"),
            ("claude", "stale@example.com", "rate_limited"),
            ("claude", "limited@example.com", "rate_limited"),
            ("codex", "frank@example.com", "cloudflare"), ("codex", "off@example.com", "ok")]
    for provider, email, behaviour in cast:
        name = email.split("@")[0]
        fake.add_account(demo.FakeAccount(provider, email, [30.0, 50.0], behaviour),
                         "demo-a-" + name, "demo-r-" + name)
        demo.write_credential(str(auth_dir), provider, email, "demo-a-" + name, "demo-r-" + name,
                              later, disabled=email.startswith("off"))
    # Tokens the fake never issued: 401, then invalid_grant on the refresh.
    demo.write_credential(str(auth_dir), "claude", "gone@example.com", "demo-a-gone",
                          "demo-r-gone", later)
    demo.write_credential(str(auth_dir), "claude", "old@example.com", "demo-a-old", "demo-r-old",
                          now - timedelta(hours=2))
    (auth_dir / "claude-torn.json").write_text('{"type": "claude", "email": "torn@exa')
    (auth_dir / "gemini-grace@example.com.json").write_text('{"type": "gemini"}')
    window = UsageWindow("five_hour", "5-hour", 20.0, now + timedelta(hours=2))
    StateStore(str(state_dir)).save([(("claude", "claude-stale@example.com.json"),
                                      StoredState(windows=(window,), fetched_at=now))])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int) -> str:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as answer:
        return answer.read().decode("utf-8")


def start_node_exporter(binary: str, directory: Path, log: Path):
    """node_exporter on a free loopback port with only the textfile collector; return the
    process and its port once it answers."""
    for _ in range(5):
        port = free_port()
        with log.open("wb") as errors:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(
                [binary, "--web.listen-address=127.0.0.1:%d" % port,
                 "--collector.disable-defaults", "--collector.textfile",
                 "--collector.textfile.directory=%s" % directory],
                stdout=subprocess.DEVNULL, stderr=errors)
        deadline = time.monotonic() + WAIT
        while process.poll() is None and time.monotonic() < deadline:
            try:
                scrape(port)
                return process, port
            except OSError:
                time.sleep(0.1)
        process.kill()
        process.wait()
    raise AssertionError("node_exporter did not start: %s" % log.read_text()[-2000:])


def states_in(families) -> dict:
    current = {}
    for sample in families["oauth_usage_account_state"].samples:
        if sample.value == 1:
            assert sample.labels["account"] not in current, sample
            current[sample.labels["account"]] = sample.labels["state"]
    return current


def check_scrape(text: str) -> dict:
    """Assert one scrape is whole and says what was planted; return its families."""
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["node_textfile_scrape_error"].samples[0].value == 0, text[-3000:]
    assert states_in(families) == PLANTED
    counts = {s.labels["state"]: s.value for s in families["oauth_usage_accounts"].samples}
    assert counts == {"ok": 2, "stale": 1, "rate_limited": 1, "blocked": 1, "error": 0,
                      "login_failed": 1, "expired": 1, "disabled": 1, "unreadable": 1}
    used = {(s.labels["account"], s.labels["window"]): s.value
            for s in families["oauth_usage_window_used_ratio"].samples}
    assert used[("claude-alice@example.com.json", "five_hour")] == 0.3
    assert used[("claude-stale@example.com.json", "five_hour")] == 0.2
    cooling = {s.labels["account"] for s in
               families["oauth_usage_account_cooldown_until_timestamp_seconds"].samples}
    assert cooling == {"claude-stale@example.com.json", "claude-limited@example.com.json"}
    info = {s.labels["account"]: s.labels["email"]
            for s in families["oauth_usage_account_info"].samples}
    assert info["claude-gone@example.com.json"] == "gone@example.com"
    assert families["oauth_usage_tracker_build_info"].samples[0].labels["name"] == "oauth_usage"
    return families


def test_node_exporter_scrapes_every_state_while_watch_rewrites_the_file(tmp_path):
    node_exporter = require_tool("prometheus-node-exporter", NODE_EXPORTER)
    promtool = require_tool("promtool")
    auth_dir, state_dir, textfiles = tmp_path / "auth", tmp_path / "state", tmp_path / "textfile"
    for directory in (auth_dir, state_dir, textfiles):
        directory.mkdir()
    metrics = textfiles / "oauth_usage.prom"
    with demo.FakeProviders() as fake:
        plant(fake, auth_dir, state_dir)
        env = dict({k: v for k, v in os.environ.items()
                    if not k.startswith("OAUTH_USAGE_TRACKER_")}, **fake.environ())
        exporter, port = start_node_exporter(node_exporter, textfiles, tmp_path / "ne.log")
        tool = subprocess.Popen(COMMAND + ["--watch", "1", "-q", "--auth-dir", str(auth_dir),
                                           "--state-dir", str(state_dir), "--json",
                                           "--output", str(tmp_path / "report.json"),
                                           "--prometheus", str(metrics)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            runs, files_checked, deadline = set(), set(), time.monotonic() + WAIT
            while len(runs) < 3 and time.monotonic() < deadline:
                assert tool.poll() is None, tool.stderr.read().decode()
                if not metrics.exists():
                    time.sleep(0.05)
                    continue
                families = check_scrape(scrape(port))
                runs.add(families["oauth_usage_last_run_timestamp_seconds"].samples[0].value)
                mtimes = families["node_textfile_mtime_seconds"].samples
                assert [s.labels["file"] for s in mtimes] in (["oauth_usage.prom"],
                                                             [str(metrics)])
                text = metrics.read_bytes()
                if text not in files_checked:  # every distinct file the tool wrote
                    files_checked.add(text)
                    check = subprocess.run([promtool, "check", "metrics"], input=text,
                                           capture_output=True, timeout=60)
                    assert check.returncode == 0, check.stdout + check.stderr
            assert len(runs) >= 3, "the watch loop did not rewrite the file three times"
            assert os.listdir(textfiles) == ["oauth_usage.prom"]  # no temp file left to read
        finally:
            tool.send_signal(signal.SIGTERM)
            status = tool.wait(WAIT)
            stderr = tool.stderr.read().decode()
            tool.stderr.close()
            exporter.terminate()
            exporter.wait(WAIT)
    assert status == 0, stderr
    # -q: only the states that need a human, at ERROR, each naming its file and state.
    named = {tuple(line.split(": ")[2:4]) for line in stderr.splitlines()}
    assert all(line.startswith("oauth-usage-tracker: ERROR: ") for line in stderr.splitlines())
    assert named == {("claude-gone@example.com.json", "login_failed"),
                     ("claude-old@example.com.json", "expired"),
                     ("claude-torn.json", "unreadable")}
    report = json.loads((tmp_path / "report.json").read_text())
    states = {a["id"]: a["state"] for a in report["accounts"] + report["skipped"]}
    assert states == dict(PLANTED, **{"gemini-grace@example.com.json": None})


def test_two_runs_into_one_textfile_directory_never_collide(tmp_path):
    """Two auth directories, two metrics files in one textfile directory: node_exporter reads
    both without a collision, and the per-run series tell the runs apart by `name`."""
    node_exporter = require_tool("prometheus-node-exporter", NODE_EXPORTER)
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    with demo.FakeProviders() as fake:
        env = dict({k: v for k, v in os.environ.items()
                    if not k.startswith("OAUTH_USAGE_TRACKER_")}, **fake.environ())
        for pool, extra in (("pool-a", []), ("pool-b", ["--metrics-name", "second"])):
            auth_dir = tmp_path / pool
            auth_dir.mkdir()
            demo.populate(fake, str(auth_dir), claude=1, codex=1)
            for path in auth_dir.iterdir():  # one account set per pool: distinct file names
                path.rename(auth_dir / ("%s-%s" % (pool, path.name)))
            result = subprocess.run(
                COMMAND + ["-q", "--no-state", "--auth-dir", str(auth_dir), "--output",
                           os.devnull, "--prometheus", str(textfiles / (pool + ".prom"))] + extra,
                env=env, capture_output=True, text=True, timeout=WAIT)
            assert result.returncode == 0, result.stderr
        exporter, port = start_node_exporter(node_exporter, textfiles, tmp_path / "ne.log")
        try:
            text = scrape(port)
        finally:
            exporter.terminate()
            exporter.wait(WAIT)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["node_textfile_scrape_error"].samples[0].value == 0
    names = sorted(s.labels["name"] for s in families["oauth_usage_last_run_timestamp_seconds"]
                   .samples)
    assert names == ["pool-a", "second"]
    ok = [s for s in families["oauth_usage_account_state"].samples
          if s.labels["state"] == "ok" and s.value == 1]
    assert len(ok) == 4
