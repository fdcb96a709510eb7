"""The installed script, end to end, in subprocesses against the loopback fake of both providers."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from oauth_usage_tracker import demo
from support import assert_no_secrets, signal_and_reap, wait_for

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = shutil.which("oauth-usage-tracker")
NOW = datetime.now(timezone.utc)


@pytest.fixture
def accounts(fake, auth_dir):
    """Two healthy accounts of each provider, registered with the fake."""
    demo.populate(fake, str(auth_dir), claude=2, codex=2)
    return auth_dir


COMMAND = [SCRIPT] if SCRIPT else [sys.executable, "-m", "oauth_usage_tracker"]


def script_env(env_extra=None, home=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH_USAGE_TRACKER_")}
    env.update(env_extra or {})
    if home is not None:
        env["HOME"] = str(home)
    return env


def run(args, env_extra=None, timeout=60, home=None):
    return subprocess.run(COMMAND + list(args), env=script_env(env_extra, home),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@contextmanager
def started(args, env_extra):
    """The script running in the background; killed if the test leaves it running."""
    process = subprocess.Popen(COMMAND + list(args), env=script_env(env_extra),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_demo_in_fresh_home_shows_dashboard_and_writes_nothing_outside_temp(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    result = run(["--demo"], home=home)
    assert result.returncode == 0, result.stderr
    assert "alice@example.com" in result.stdout
    assert "Carol@example.com  12% left  (token refreshed)" in result.stdout
    # The story: Carol's 5-hour window runs out before it resets; dave is idle; erin frees up.
    carol = result.stdout[result.stdout.index("Carol@"):result.stdout.index("dave@")]
    assert "! at this pace, runs out in 2" in carol
    assert "Codex  dave@example.com  [plus]  100% left" in result.stdout
    assert re.search(r"\n {8}next to free up in 1[45]m: erin@example.com\n", result.stdout)
    assert "5-hour" in result.stdout and "% left" in result.stdout
    assert "error: Codex usage API returned 403" in result.stdout
    assert "unsupported type 'gemini'" in result.stdout
    assert "\x1b[" not in result.stdout  # not a TTY: no colour
    assert list(home.iterdir()) == []


def test_demo_lines_layout_sorted_by_headroom_fits_80_columns(tmp_path):
    result = run(["--demo", "--layout", "lines", "--sort", "headroom"], home=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    order = [line[2:].split()[1] for line in lines
             if line[2:].split()[:1] in (["claude"], ["codex"])]
    assert order == ["dave@example.com", "alice@example.com", "Carol@example.com",
                     "erin@example.com", "frank@example.com"]
    assert any(line.startswith("! claude  Carol@example.com") for line in lines)


def test_demo_json_is_a_version_1_report(tmp_path):
    result = run(["--demo", "--json"], home=tmp_path)
    report = json.loads(result.stdout)
    assert report["version"] == 1
    refreshed = [a for a in report["accounts"] if a["token_refreshed"]]
    assert [a["email"] for a in refreshed] == ["Carol@example.com"]
    assert [a["provider"] for a in report["accounts"]] == ["claude"] * 2 + ["codex"] * 3


def test_json_run_all_accounts_fetched_exits_0(fake, accounts):
    result = run(["--auth-dir", str(accounts), "--json"], fake.environ())
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [a["email"] for a in report["accounts"]] == [
        "claude0000@example.com", "claude0001@example.com",
        "codex0000@example.com", "codex0001@example.com"]
    assert all(a["error"] is None and a["windows"] for a in report["accounts"])
    assert report["generated_at"].endswith("Z")
    window = report["accounts"][0]["windows"][0]
    assert {"key", "title", "used_percent", "remaining_percent", "reset_date",
            "reset_text"} <= set(window)  # version 1: keys are added, never renamed
    assert window["reset_date"].endswith("Z")


def test_failing_account_exits_1_and_others_still_reported(fake, accounts):
    path = demo.write_credential(str(accounts), "codex", "broken@example.com", "demo-unknown",
                                 "demo-unknown-r", NOW + timedelta(days=1))
    result = run(["--auth-dir", str(accounts), "--json"], fake.environ())
    assert result.returncode == 1
    report = json.loads(result.stdout)
    by_id = {a["id"]: a for a in report["accounts"]}
    assert "token_expired" in by_id[os.path.basename(path)]["error"]
    assert sum(1 for a in report["accounts"] if a["windows"]) == 4


def test_unreadable_file_exits_1_with_skip_reason(fake, accounts):
    (Path(str(accounts)) / "claude-torn.json").write_text('{"type": "claude", "email"')
    result = run(["--auth-dir", str(accounts), "--json"], fake.environ())
    assert result.returncode == 1
    skipped = json.loads(result.stdout)["skipped"]
    assert skipped == [{"id": "claude-torn.json", "provider": None, "email": None,
                        "reason": "unreadable: not valid JSON", "state": "unreadable",
                        "source": "local"}]


def test_quiet_run_explains_every_state_that_needs_a_human_on_stderr(fake, accounts):
    """What cron mails and the journal keeps for a failed unit: one ERROR line each."""
    (Path(str(accounts)) / "claude-torn.json").write_text('{"type": "claude", "email"')
    demo.write_credential(str(accounts), "claude", "gone@example.com", "demo-unknown",
                          "demo-unknown-r", NOW + timedelta(hours=5))
    demo.write_credential(str(accounts), "claude", "old@example.com", "demo-x", "demo-x-r",
                          NOW - timedelta(hours=1))
    result = run(["--auth-dir", str(accounts), "-q", "--output", os.devnull], fake.environ())
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 3, result.stderr
    assert all(line.startswith("oauth-usage-tracker: ERROR: ") for line in lines)
    said = {line.split(": ")[2]: line.split(": ")[3] for line in lines}
    assert said == {"claude-torn.json": "unreadable", "claude-gone@example.com.json":
                    "login_failed", "claude-old@example.com.json": "expired"}
    assert "--refresh-expired" in result.stderr


def test_expired_account_alone_exits_1_and_refresh_expired_brings_it_back(fake, auth_dir):
    fake.add_account(demo.FakeAccount("claude", "old@example.com"), "demo-old", "demo-old-r")
    fake.expire_access("demo-old")
    demo.write_credential(str(auth_dir), "claude", "old@example.com", "demo-old", "demo-old-r",
                          NOW - timedelta(hours=1))
    skipped = run(["--auth-dir", str(auth_dir), "--json"], fake.environ())
    assert skipped.returncode == 1
    assert json.loads(skipped.stdout)["skipped"][0]["state"] == "expired"
    assert fake.requests == {}
    refreshed = run(["--auth-dir", str(auth_dir), "--json", "--refresh-expired"], fake.environ())
    assert refreshed.returncode == 0, refreshed.stderr
    [account] = json.loads(refreshed.stdout)["accounts"]
    assert account["state"] == "ok" and account["token_refreshed"] is True


def test_fail_below_exits_3_over_1(fake, accounts):
    demo.write_credential(str(accounts), "codex", "broken@example.com", "demo-unknown",
                          "demo-unknown-r", NOW + timedelta(days=1))
    result = run(["--auth-dir", str(accounts), "--fail-below", "60"], fake.environ())
    assert result.returncode == 3


def test_refused_endpoint_url_exits_2_before_any_request(fake, accounts):
    env = dict(fake.environ(), OAUTH_USAGE_TRACKER_CLAUDE_TOKEN_URL="http://192.0.2.1/token")
    result = run(["--auth-dir", str(accounts)], env)
    assert result.returncode == 2
    assert "Refused Claude token URL" in result.stderr
    assert fake.requests == {}


def test_missing_auth_directory_exits_2(tmp_path):
    result = run(["--auth-dir", str(tmp_path / "nope")])
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_flag_exits_2():
    assert run(["--workers", "zero"]).returncode == 2


def test_provider_flag_limits_the_query(fake, accounts):
    result = run(["--auth-dir", str(accounts), "--json", "--provider", "codex"], fake.environ())
    providers = {a["provider"] for a in json.loads(result.stdout)["accounts"]}
    assert providers == {"codex"}
    assert fake.count(demo.CLAUDE_PATH) == 0


def test_output_and_prometheus_files_are_written_and_parse(fake, accounts, tmp_path):
    output, metrics = tmp_path / "report.json", tmp_path / "metrics" / "oauth.prom"
    metrics.parent.mkdir()
    result = run(["--auth-dir", str(accounts), "--json", "--output", str(output),
                  "--prometheus", str(metrics)], fake.environ())
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert len(json.loads(output.read_text())["accounts"]) == 4
    families = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
    ok = [s for s in families["oauth_usage_account_state"].samples if s.labels["state"] == "ok"]
    assert len(ok) == 4 and all(sample.value == 1 for sample in ok)
    assert families["oauth_usage_last_run_timestamp_seconds"].samples[0].labels == {
        "name": "oauth"}
    used = families["oauth_usage_window_used_ratio"].samples
    assert {s.labels["window"] for s in used} == {"five_hour", "seven_day",
                                                     "seven_day_sonnet", "weekly_scoped:opus",
                                                     "primary_window", "secondary_window"}
    assert os.listdir(metrics.parent) == ["oauth.prom"]


def test_python_m_and_entry_script_print_version():
    module = subprocess.run([sys.executable, "-m", "oauth_usage_tracker", "--version"],
                            capture_output=True, text=True, timeout=30)
    script = subprocess.run([sys.executable, str(ROOT / "scripts" / "oauth-usage-tracker"),
                             "--version"], capture_output=True, text=True, timeout=30)
    assert module.returncode == script.returncode == 0
    assert module.stdout.startswith("oauth-usage-tracker ") and module.stdout == script.stdout


def test_verbose_run_with_refresh_leaks_no_token(fake, auth_dir):
    from support import CLAUDE_ACCESS, CLAUDE_REFRESH
    demo.write_credential(str(auth_dir), "claude", "stale@example.com", CLAUDE_ACCESS,
                          CLAUDE_REFRESH, NOW - timedelta(minutes=5))
    fake.add_account(demo.FakeAccount("claude", "stale@example.com"), CLAUDE_ACCESS,
                     CLAUDE_REFRESH)
    result = run(["--auth-dir", str(auth_dir), "--refresh-expired", "-vv", "--json"],
                 fake.environ())
    assert result.returncode == 0, result.stderr
    written = json.loads((Path(str(auth_dir)) / "claude-stale@example.com.json").read_text())
    assert written["refresh_token"] != CLAUDE_REFRESH
    assert json.loads(result.stdout)["accounts"][0]["token_refreshed"] is True
    assert_no_secrets(result.stdout, result.stderr)
    for token in (written["access_token"], written["refresh_token"]):
        assert token not in result.stdout and token not in result.stderr



def test_watch_picks_up_new_file_and_exits_0_on_sigterm(fake, accounts, tmp_path):
    output = tmp_path / "report.json"

    def emails():
        try:
            return {a["email"] for a in json.loads(output.read_text())["accounts"]}
        except (OSError, ValueError):
            return set()

    args = ["--auth-dir", str(accounts), "--json", "--output", str(output), "--watch", "3600"]
    with started(args, fake.environ()) as process:
        assert wait_for(lambda: len(emails()) == 4)
        # The new account is registered with the fake before its file appears.
        fake.add_account(demo.FakeAccount("codex", "new@example.com"), "demo-new", "demo-new-r")
        demo.write_credential(str(accounts), "codex", "new@example.com", "demo-new",
                              "demo-new-r", NOW + timedelta(days=1))
        begun = time.monotonic()
        assert wait_for(lambda: "new@example.com" in emails(), timeout=10)
        print("watch picked up the new file in %.2f s" % (time.monotonic() - begun))
        _, stderr, _ = signal_and_reap(process, signal.SIGTERM)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


@contextmanager
def slow_refresh_run(auth_dir, fake, extra_args=()):
    """The script refreshing one expired Claude token against a slow token endpoint; yields
    (credential path, process) once the refresh request is on the wire."""
    fake.add_account(demo.FakeAccount("claude", "term@example.com"), "demo-term", "demo-term-r")
    fake.expire_access("demo-term")
    path = Path(demo.write_credential(str(auth_dir), "claude", "term@example.com", "demo-term",
                                      "demo-term-r", NOW - timedelta(minutes=1)))
    args = ["--auth-dir", str(auth_dir), "--refresh-expired", "--json"] + list(extra_args)
    with started(args, fake.environ()) as process:
        assert wait_for(lambda: fake.count(demo.TOKEN_PATH) == 1)
        yield path, process


@pytest.mark.parametrize("number, extra_args, status, repeats", [
    (signal.SIGTERM, [], 143, 1), (signal.SIGINT, [], 130, 3), (signal.SIGTERM, [], 143, 3),
    (signal.SIGTERM, ["--watch", "3600", "--output", "/dev/null"], 0, 3),
    (signal.SIGINT, ["--watch", "3600", "--output", "/dev/null"], 0, 3),
])
def test_signals_during_token_refresh_wait_for_the_write(auth_dir, number, extra_args, status,
                                                         repeats):
    """The refresh request is on the wire when the signal arrives (once, or three times): the
    run exits only once the rotated tokens are on disk, or the spent refresh token's successor
    is lost."""
    with demo.FakeProviders(latency=1.5) as fake:
        with slow_refresh_run(auth_dir, fake, extra_args) as (path, process):
            for _ in range(repeats):
                process.send_signal(number)
                time.sleep(0.2)
            _, stderr = process.communicate(timeout=30)
        assert process.returncode == status, stderr
        assert "Traceback" not in stderr
        if repeats > 1:
            assert "still finishing token writes" in stderr
        written = json.loads(path.read_text())
        assert written["refresh_token"].startswith("demo-refresh-")  # the rotated one, on disk
        assert fake.count(demo.TOKEN_PATH) == 1


def test_watch_reports_even_when_a_refresh_takes_longer_than_the_interval(fake, auth_dir,
                                                                          tmp_path):
    fake.latency = 1.2
    demo.populate(fake, str(auth_dir), claude=1, codex=1)
    output = tmp_path / "report.json"
    args = ["--auth-dir", str(auth_dir), "--json", "--output", str(output), "--watch", "0.5"]
    with started(args, fake.environ()) as process:
        assert wait_for(output.exists, timeout=15)
        assert len(json.loads(output.read_text())["accounts"]) == 2
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0


def test_demo_ignores_a_dead_http_proxy(tmp_path):
    dead = "http://127.0.0.1:9"
    result = run(["--demo", "--json"], {"HTTP_PROXY": dead, "HTTPS_PROXY": dead,
                                        "http_proxy": dead, "https_proxy": dead}, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["accounts"]) == 5
