"""Events from the real script: consecutive cron-style runs and one `--watch` process, against
the loopback fake, announce the same changes, each once; hooks never change the exit status."""
import json
import signal
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from oauth_usage_tracker import demo

from support import assert_no_secrets, process_gone, signal_and_reap, wait_for
from test_script import run, started

NOW = datetime.now(timezone.utc)
# Less than 5 % of the 5-hour window has elapsed, so no pace projection adds events here (the
# pace's own event is tested in test_events.py).
BASE = int((NOW + timedelta(hours=4, minutes=50)).timestamp())
FIVE_HOURS = 18000

# What each account answers to its 1st, 2nd, … usage request (the last answer repeats):
# (5-hour used %, period number), or "login" for a dead token (401).
STORY = {
    "ann": [(50.0, 0), (95.0, 0), (97.0, 0), (96.0, 1), (30.0, 1)],
    "bob": [(20.0, 0), "login", "login", (20.0, 0), (20.0, 0)],
}
EXPECTED = [
    [],
    ["quota_low ann ok ok primary_window", "login_failed bob login_failed ok",
     "account_failing bob login_failed ok"],
    [],
    ["quota_reset ann ok ok primary_window", "quota_low ann ok ok primary_window",
     "login_recovered bob ok login_failed", "account_recovered bob ok login_failed"],
    [],
]


class StoryFake(demo.FakeProviders):
    """The demo fake, answering each account from its STORY, one step per request."""

    def __init__(self):
        super().__init__()
        self.steps = {name: 0 for name in STORY}
        self.step_lock = threading.Lock()

    def _usage(self, path, account):
        name = account.email.split("@")[0]
        with self.step_lock:
            index = self.steps[name]
            self.steps[name] += 1
        step = STORY[name][min(index, len(STORY[name]) - 1)]
        if step == "login":
            return 401, {}, b'{"error": {"message": "Provided authentication token is expired.",'\
                            b' "code": "token_expired"}}'
        used, period = step
        payload = demo.codex_payload([used, 10.0], datetime.now(timezone.utc))
        payload["rate_limit"]["primary_window"]["reset_at"] = BASE + period * FIVE_HOURS
        payload["rate_limit"]["secondary_window"]["reset_at"] = BASE + 5 * 86400
        return 200, {}, json.dumps(payload).encode("utf-8")

    def served(self):
        with self.step_lock:
            return min(self.steps.values())


def cast(fake, auth_dir):
    for name in STORY:
        email = "%s@example.com" % name
        fake.add_account(demo.FakeAccount("codex", email), "demo-a-" + name, "demo-r-" + name)
        demo.write_credential(str(auth_dir), "codex", email, "demo-a-" + name, "demo-r-" + name,
                              NOW + timedelta(days=5))


def hook(tmp_path):
    """A real --on-event script: one line per event, from its environment and stdin."""
    path = tmp_path / "hook.sh"
    path.write_text('#!/bin/sh\nline=$(cat)\n'
                    'printf "%%s %%s\\n" "$OAUTH_USAGE_EVENT" "$line" >> "%s"\n'
                    % (tmp_path / "hook.out"))
    path.chmod(0o755)
    return str(path)


def summary(text):
    """The events of a log or hook output, in short: 'type account state previous [window]'."""
    lines = []
    for line in text.splitlines():
        kind, _, data = line.partition(" ") if not line.startswith("{") else ("", "", line)
        event = json.loads(data)
        assert not kind or kind == event["event"]
        lines.append(" ".join(filter(None, [
            event["event"], event["account"]["email"].split("@")[0], event["state"],
            event["previous_state"] or "none", (event["window"] or {}).get("key")])))
    return lines


def flags(tmp_path, auth_dir, name):
    return ["--auth-dir", str(auth_dir), "--state-dir", str(tmp_path / name), "--json",
            "--output", str(tmp_path / (name + ".json")), "--failing-after", "0",
            "--events-log", str(tmp_path / (name + ".jsonl")), "--on-event", hook(tmp_path)]


def read(path):
    return path.read_text() if path.exists() else ""


def test_cron_runs_and_watch_announce_the_same_events_once(auth_dir, tmp_path):
    expected_all = sum(EXPECTED, [])
    with StoryFake() as fake:
        cast(fake, auth_dir)
        log = tmp_path / "cron.jsonl"
        for number, expected in enumerate(EXPECTED):
            before = len(read(log).splitlines())
            result = run(flags(tmp_path, auth_dir, "cron"), fake.environ())
            assert result.returncode == (1 if STORY["bob"][number] == "login" else 0), \
                result.stderr
            assert summary("\n".join(read(log).splitlines()[before:])) == expected, number
        cron_hook = (tmp_path / "hook.out").read_text()
        (tmp_path / "hook.out").unlink()
        assert summary(cron_hook) == expected_all

    with StoryFake() as fake:
        cast(fake, auth_dir)
        args = flags(tmp_path, auth_dir, "watch") + ["--watch", "0.2"]
        with started(args, fake.environ()) as process:
            # The watcher starts a refresh only after the previous one was reported (its
            # events delivered), so a 7th request means the first 6 refreshes are done; the
            # 6th repeats the 5th answers and must add nothing.
            assert wait_for(lambda: fake.served() >= 7, timeout=60), process.stderr
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
    assert summary(read(tmp_path / "watch.jsonl")) == expected_all
    assert summary((tmp_path / "hook.out").read_text()) == expected_all
    assert_no_secrets(read(tmp_path / "watch.jsonl"), read(tmp_path / "cron.jsonl"),
                      cron_hook, stderr)


@pytest.mark.parametrize("hook_body", ["exit 7\n", "kill -KILL $$\n"])
def test_failing_or_missing_hook_is_a_warning_and_keeps_the_exit_status(auth_dir, tmp_path,
                                                                        hook_body):
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\n" + hook_body)
    bad.chmod(0o755)
    with StoryFake() as fake:
        cast(fake, auth_dir)
        fake.steps["ann"] = 1  # 95 % used: quota_low at once
        args = ["--auth-dir", str(auth_dir), "--state-dir", str(tmp_path / "s"), "--json",
                "--on-event", str(tmp_path / "missing-hook"), "--on-event", str(bad),
                "--events-log", str(tmp_path / "log.jsonl")]
        result = run(args, fake.environ())
    assert result.returncode == 0, result.stderr
    assert "could not be started" in result.stderr
    assert "for quota_low" in result.stderr and "WARNING" in result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)  # the report is intact
    assert [(a["email"], a["error"]) for a in report["accounts"]] == [
        ("ann@example.com", None), ("bob@example.com", None)]
    assert summary(read(tmp_path / "log.jsonl")) == ["quota_low ann ok none primary_window"]


def test_no_consumer_keeps_no_events_memory(auth_dir, tmp_path):
    with StoryFake() as fake:
        cast(fake, auth_dir)
        result = run(["--auth-dir", str(auth_dir), "--state-dir", str(tmp_path / "s"), "--json"],
                     fake.environ())
    assert result.returncode == 0, result.stderr
    assert not Path(tmp_path / "s" / "events.json").exists()


def test_sigterm_while_a_hook_runs_ends_the_run_and_the_hook(auth_dir, tmp_path):
    pid_file = tmp_path / "hook.pid"
    slow = tmp_path / "slow.sh"
    slow.write_text('#!/bin/sh\nsleep 60 &\necho $! > "%s.tmp"\nmv "%s.tmp" "%s"\nwait\n'
                    % (pid_file, pid_file, pid_file))
    slow.chmod(0o755)
    with StoryFake() as fake:
        cast(fake, auth_dir)
        fake.steps["ann"] = 1  # quota_low at once
        args = ["--auth-dir", str(auth_dir), "--state-dir", str(tmp_path / "s"), "--json",
                "--on-event", str(slow)]
        with started(args, fake.environ()) as process:
            assert wait_for(pid_file.exists, timeout=60), process.stderr
            begun = time.monotonic()
            _, stderr, _ = signal_and_reap(process, signal.SIGTERM)
    assert process.returncode == 143, stderr
    assert time.monotonic() - begun < 15  # not the hook's 30 s deadline, nor its 60 s sleep
    assert "Traceback" not in stderr
    child = int(pid_file.read_text())
    assert wait_for(lambda: process_gone(child), timeout=10), "the hook's child outlived the run"
