"""Cooldowns across runs of the real script against a loopback fake that answers 429."""
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from oauth_usage_tracker import demo

SCRIPT = shutil.which("oauth-usage-tracker")
NOW = datetime.now(timezone.utc)
KEY = "claude/claude-limited@example.com.json"


def run(args, env):
    command = [SCRIPT] if SCRIPT else [sys.executable, "-m", "oauth_usage_tracker"]
    return subprocess.run(command + args, env=env, capture_output=True, text=True, timeout=60)


def age_state(path: Path, minutes: int) -> None:
    """Pretend the stored values were fetched `minutes` earlier."""
    data = json.loads(path.read_text())
    entry = data["accounts"][KEY]
    fetched = datetime.strptime(entry["fetched_at"], "%Y-%m-%dT%H:%M:%SZ")
    entry["fetched_at"] = (fetched - timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("retry_after, cooldown", [
    ("300", 300), ("1200", 1200), ("0", 300), (None, 300), ("soon", 300),
    ("Wed, 21 Oct 2099 07:28:00 GMT", 3600), ("10", 60),
])
def test_429_then_cooldown_run_sends_nothing_and_reports_stale_age(auth_dir, tmp_path,
                                                                   retry_after, cooldown):
    state_dir = tmp_path / "state"
    with demo.FakeProviders() as fake:
        limited = demo.FakeAccount("claude", "limited@example.com", [30.0, 60.0])
        fake.add_account(limited, "demo-limited", "demo-limited-r")
        demo.write_credential(str(auth_dir), "claude", "limited@example.com", "demo-limited",
                              "demo-limited-r", NOW + timedelta(hours=5))
        env = dict(os.environ, **fake.environ())
        base = ["--auth-dir", str(auth_dir), "--state-dir", str(state_dir)]

        first = run(base + ["--json"], env)
        assert first.returncode == 0, first.stderr
        age_state(state_dir / "state.json", minutes=10)

        limited.behaviour, limited.retry_after = "rate_limited", retry_after
        second = run(base + ["--json"], env)
        assert fake.count(demo.CLAUDE_PATH) == 2
        assert second.returncode == 0, second.stderr  # stale, but younger than --max-stale
        [account] = json.loads(second.stdout)["accounts"]
        assert account["stale"] is True and "429" in account["error"]
        assert [w["used_percent"] for w in account["windows"]][:2] == [30.0, 60.0]
        stored = json.loads((state_dir / "state.json").read_text())["accounts"][KEY]
        assert stored["cooldown_seconds"] == cooldown
        assert account["fetched_at"] == stored["fetched_at"]

        third = run(base, env)
        assert fake.count(demo.CLAUDE_PATH) == 2  # inside the cooldown: no request at all
        assert third.returncode == 0, third.stderr
        assert "stale: values from 10 minutes ago" in third.stdout
        assert "cooldown" in third.stdout

        strict = run(base + ["--json", "--max-stale", "60"], env)
        assert strict.returncode == 1  # ten minutes old is too stale for this caller
        assert fake.count(demo.CLAUDE_PATH) == 2


def test_no_state_flag_keeps_asking_and_writes_nothing(auth_dir, tmp_path):
    state_dir = tmp_path / "state"
    with demo.FakeProviders() as fake:
        fake.add_account(demo.FakeAccount("claude", "limited@example.com", behaviour="rate_limited"),
                         "demo-limited", "demo-limited-r")
        demo.write_credential(str(auth_dir), "claude", "limited@example.com", "demo-limited",
                              "demo-limited-r", NOW + timedelta(hours=5))
        env = dict(os.environ, **fake.environ())
        for _ in range(2):
            result = run(["--auth-dir", str(auth_dir), "--state-dir", str(state_dir),
                          "--no-state", "--json"], env)
            assert result.returncode == 1
            assert "429" in json.loads(result.stdout)["accounts"][0]["error"]
        assert fake.count(demo.CLAUDE_PATH) == 2
    assert not state_dir.exists()
