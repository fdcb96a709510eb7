"""Bad input to the script (SPEC §8, §9): flags, environment, directories and output paths that
make no sense give exit status 2 and one clear line on stderr (never a traceback), before any
request is sent or any token read; and a directory holding every kind of bad credential file at
once, run as a real process at -vv, still reports every healthy account, exits 1 and shows no
token anywhere.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from oauth_usage_tracker import refresh as refresh_module
from oauth_usage_tracker import credentials, demo
from support import CLAUDE_ACCESS, CLAUDE_REFRESH, CODEX_ACCESS, CODEX_REFRESH, SECRETS

import hostile_server as hs
import test_bad_files as bad_files

NOW = datetime.now(timezone.utc)
SCRIPT = shutil.which("oauth-usage-tracker")
HEALTHY = ("cli-healthy-claude-access-5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70",
           "cli-healthy-claude-refresh-708192a3b4c5d6e7f8091a2b3c4d5e6f708192",
           "cli-healthy-codex-access-92a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5",
           "cli-healthy-codex-refresh-b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7")
ALL_TOKENS = SECRETS + HEALTHY + bad_files.ODD_TOKENS


@pytest.fixture
def healthy_dir(fake, auth_dir):
    """One healthy account of each provider, known to the fake."""
    fake.add_account(demo.FakeAccount("claude", "ok@example.com"), HEALTHY[0], HEALTHY[1])
    fake.add_account(demo.FakeAccount("codex", "ok@example.com"), HEALTHY[2], HEALTHY[3])
    demo.write_credential(str(auth_dir), "claude", "ok@example.com", HEALTHY[0], HEALTHY[1],
                          NOW + timedelta(hours=6))
    demo.write_credential(str(auth_dir), "codex", "ok@example.com", HEALTHY[2], HEALTHY[3],
                          NOW + timedelta(days=5))
    return auth_dir


@pytest.fixture
def pointed(fake, monkeypatch):
    for name, value in fake.environ().items():
        monkeypatch.setenv(name, value)
    return fake


def assert_clean_usage_error(run, *words):
    """Exit 2, a short message on stderr naming the problem, nothing on stdout, no traceback."""
    assert run.status == 2, (run.status, run.stderr)
    assert run.stdout == ""
    assert "Traceback" not in run.stderr
    assert run.stderr.strip(), "no message"
    assert len(run.stderr) < 2000
    for word in words:
        assert word.lower() in run.stderr.lower(), run.stderr
    hs.assert_no_tokens(ALL_TOKENS, run.stdout, run.stderr)


# --- flags --------------------------------------------------------------------------------------

BAD_FLAGS = {
    "timeout-zero": (["--timeout", "0"], "timeout"),
    "timeout-negative": (["--timeout", "-1"], "timeout"),
    "timeout-nan": (["--timeout", "nan"], "timeout"),
    "timeout-infinite": (["--timeout", "inf"], "timeout"),
    "timeout-overflowing": (["--timeout", "1e309"], "timeout"),
    "timeout-not-a-number": (["--timeout", "fifteen"], "timeout"),
    "timeout-empty": (["--timeout", ""], "timeout"),
    "timeout-above-600": (["--timeout", "601"], "timeout"),
    "workers-zero": (["--workers", "0"], "workers"),
    "workers-negative": (["--workers", "-3"], "workers"),
    "workers-fraction": (["--workers", "1.5"], "workers"),
    "workers-huge": (["--workers", str(10 ** 30)], "workers"),
    "workers-257": (["--workers", "257"], "workers"),
    "fail-below-not-a-number": (["--fail-below", "half"], "fail-below"),
    "provider-unknown": (["--provider", "gemini"], "provider"),
    "provider-empty": (["--provider", ""], "provider"),
    "watch-zero": (["--watch", "0"], "watch"),
    "watch-nan": (["--watch", "nan"], "watch"),
    "watch-negative": (["--watch", "-5"], "watch"),
    "unknown-flag": (["--frobnicate"], "frobnicate"),
    "flag-missing-its-value": (["--auth-dir"], "auth-dir"),
}


@pytest.mark.parametrize("name", sorted(BAD_FLAGS))
def test_bad_flag_exits_2_with_one_clear_message_and_sends_nothing(healthy_dir, pointed, capsys,
                                                                   name):
    argv, word = BAD_FLAGS[name]
    run = hs.run_cli(["--auth-dir", str(healthy_dir), "--json"] + argv, capsys)
    assert_clean_usage_error(run, word)
    assert pointed.requests == {}


@pytest.mark.parametrize("value", ["nan", "-inf", "1e309", "-50", "150"])
def test_odd_but_numeric_fail_below_is_harmless(healthy_dir, pointed, capsys, value):
    run = hs.run_cli(["--auth-dir", str(healthy_dir), "--json", "--fail-below", value], capsys)
    assert run.status in (0, 2, 3), run.stderr
    assert "Traceback" not in run.stderr
    if run.status != 2:
        assert all(a["error"] is None for a in run.report["accounts"])
    hs.assert_no_tokens(ALL_TOKENS, run.stdout, run.stderr)


# --- directories and output paths ---------------------------------------------------------------

def _file(tmp):
    (tmp / "plain").write_text("{}")
    return str(tmp / "plain")


def _fifo(tmp):
    os.mkfifo(str(tmp / "fifo"))
    return str(tmp / "fifo")


def _loop(tmp):
    os.symlink(str(tmp / "loop-b"), str(tmp / "loop-a"))
    os.symlink(str(tmp / "loop-a"), str(tmp / "loop-b"))
    return str(tmp / "loop-a")


BAD_AUTH_DIRS = {
    "missing": lambda tmp: str(tmp / "nope"),
    "a-regular-file": _file,
    "a-fifo": _fifo,
    "a-symlink-loop": _loop,
    "with-a-nul-byte": lambda tmp: str(tmp) + "/a\x00b",
    "very-long-path": lambda tmp: str(tmp / ("x" * 300) / ("y" * 300)),
}


@pytest.mark.parametrize("name", sorted(BAD_AUTH_DIRS))
def test_bad_auth_dir_exits_2_naming_it(tmp_path, pointed, capsys, name):
    directory = BAD_AUTH_DIRS[name](tmp_path)
    run = hs.run_cli(["--auth-dir", directory, "--json"], capsys)
    assert_clean_usage_error(run, "auth")
    assert pointed.requests == {}


def test_bad_auth_dir_from_environment_exits_2(tmp_path, pointed, capsys, monkeypatch):
    monkeypatch.setenv("OAUTH_USAGE_TRACKER_AUTH_DIR", str(tmp_path / "nope"))
    run = hs.run_cli(["--json"], capsys)
    assert_clean_usage_error(run, "OAUTH_USAGE_TRACKER_AUTH_DIR")


BAD_OUTPUTS = {
    "output-in-missing-directory": lambda tmp: ["--output", str(tmp / "no" / "report.json")],
    "output-is-a-directory": lambda tmp: ["--output", str(tmp)],
    "prometheus-in-missing-directory": lambda tmp: ["--prometheus",
                                                    str(tmp / "no" / "m.prom")],
    "prometheus-is-a-directory": lambda tmp: ["--prometheus", str(tmp)],
}


@pytest.mark.parametrize("name", sorted(BAD_OUTPUTS))
def test_unwritable_output_exits_2_without_traceback(healthy_dir, pointed, tmp_path, capsys,
                                                     name):
    target = tmp_path / "out"
    target.mkdir()
    run = hs.run_cli(["--auth-dir", str(healthy_dir), "--json"] + BAD_OUTPUTS[name](target),
                     capsys)
    assert run.status == 2, run.stderr
    assert "Traceback" not in run.stderr and run.stderr.strip()
    hs.assert_no_tokens(ALL_TOKENS, run.stdout, run.stderr)
    assert [p.name for p in target.iterdir() if p.name.endswith(".tmp")] == []


# --- environment --------------------------------------------------------------------------------

REFUSED_URLS = {
    "ftp-scheme": "ftp://127.0.0.1/usage",
    "plain-http-to-a-remote-host": "http://example.com/usage",
    "loopback-lookalike-host": "http://127.0.0.1.nip.io/usage",
    "localhost-lookalike-host": "http://localhost.evil.example/usage",
    "unclosed-ipv6-bracket": "http://[::1/usage",
    "any-address": "http://0.0.0.0:8080/usage",
    "javascript-scheme": "javascript:alert(1)",
    "no-host": "http:///usage",
    "https-without-host": "https://",
    "just-a-word": "usage",
    "file-scheme": "file:///etc/passwd",
}


@pytest.mark.parametrize("variable", ["CODEX_USAGE_URL", "CLAUDE_USAGE_URL",
                                      "CLAUDE_TOKEN_URL"])
@pytest.mark.parametrize("name", sorted(REFUSED_URLS))
def test_refused_endpoint_url_exits_2_before_any_request(healthy_dir, pointed, capsys,
                                                         monkeypatch, variable, name):
    monkeypatch.setenv("OAUTH_USAGE_TRACKER_" + variable, REFUSED_URLS[name])
    run = hs.run_cli(["--auth-dir", str(healthy_dir), "--json", "-vv"], capsys)
    assert_clean_usage_error(run, "Refused")
    assert pointed.requests == {}


ODD_ENVIRONMENT = {
    "port-out-of-range": ("OAUTH_USAGE_TRACKER_CODEX_USAGE_URL", "http://127.0.0.1:99999/u"),
    "port-not-a-number": ("OAUTH_USAGE_TRACKER_CLAUDE_USAGE_URL", "http://127.0.0.1:http/u"),
    "user-agent-with-crlf": ("OAUTH_USAGE_TRACKER_CLAUDE_USER_AGENT", "x\r\nX-Injected: 1"),
    "token-user-agent-with-crlf": ("OAUTH_USAGE_TRACKER_CLAUDE_TOKEN_USER_AGENT",
                                   "axios/1\r\nX-Injected: 1"),
    "user-agent-non-latin1": ("OAUTH_USAGE_TRACKER_CLAUDE_USER_AGENT", "agent-\u2603"),
    "time-zone-garbage": ("TZ", "Mars/Olympus_Mons"),
}


@pytest.mark.parametrize("name", sorted(ODD_ENVIRONMENT))
def test_odd_environment_gives_a_clear_outcome_not_a_crash(healthy_dir, pointed, capsys,
                                                           monkeypatch, name):
    """Values the URL policy lets through but that cannot work: a usage error (2) or that
    endpoint's accounts failing with a sentence (1); the other provider is unaffected."""
    variable, value = ODD_ENVIRONMENT[name]
    monkeypatch.setenv(variable, value)
    if variable == "TZ":
        time.tzset()
    argv = ["--auth-dir", str(healthy_dir), "--json", "-vv", "--timeout", "2"]
    if "TOKEN" in variable:
        # An expired Claude account makes the token endpoint matter.
        pointed.add_account(demo.FakeAccount("claude", "old@example.com"), CLAUDE_ACCESS,
                            CLAUDE_REFRESH)
        pointed.expire_access(CLAUDE_ACCESS)
        demo.write_credential(str(healthy_dir), "claude", "old@example.com", CLAUDE_ACCESS,
                              CLAUDE_REFRESH, NOW - timedelta(hours=1))
        argv.append("--refresh-expired")
    before = {p.name: p.read_bytes() for p in healthy_dir.path.iterdir()}
    run = hs.run_cli(argv, capsys)
    assert run.status in (0, 1, 2), run.stderr
    assert "Traceback" not in run.stderr
    hs.assert_no_tokens(ALL_TOKENS, run.stdout, run.stderr)
    assert "x-injected" not in json.dumps(pointed.usage_headers).lower()
    if run.status == 2:
        assert run.stderr.strip() and run.stdout == ""
        return
    for account in run.report["accounts"]:
        if account["error"]:
            hs.assert_sentence(account["error"])
            assert not account["error"].startswith("Unexpected"), account["error"]
    if "TOKEN" in variable:
        # The refresh never went out, so the credential file must be as it was.
        after = {p.name: p.read_bytes() for p in healthy_dir.path.iterdir()
                 if p.name.endswith(".json")}
        assert after == {k: v for k, v in before.items() if k.endswith(".json")} or \
            pointed.count(demo.TOKEN_PATH) == 1


# --- every bad file at once, in a real process --------------------------------------------------

def _all_bad_files(auth_dir: Path, outside: Path) -> None:
    """Every kind of test_bad_files in one directory, each entry renamed `<kind>-<name>`."""
    staging = outside / "staging"
    for kind, case in sorted(bad_files.CASES.items()):
        place = staging / kind
        place.mkdir(parents=True)
        case.make(place, outside)
        for entry in os.listdir(os.fsencode(str(place))):
            os.rename(os.path.join(os.fsencode(str(place)), entry),
                      os.path.join(os.fsencode(str(auth_dir)), os.fsencode(kind) + b"-" + entry))


def run_script(args, env, timeout=60):
    command = [SCRIPT] if SCRIPT else [sys.executable, "-m", "oauth_usage_tracker"]
    started = time.monotonic()
    result = subprocess.run(command + list(args), env=env, capture_output=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    return result, time.monotonic() - started


def _register_bad_file_tokens(fake):
    fake.add_account(demo.FakeAccount("claude", "bad@example.com"), CLAUDE_ACCESS, CLAUDE_REFRESH)
    fake.add_account(demo.FakeAccount("codex", "bad@example.com"), CODEX_ACCESS, CODEX_REFRESH)


def _check_every_entry_reported(report, directory):
    by_id = {a["id"]: a for a in report["accounts"]}
    for account_id in ("claude-ok@example.com.json", "codex-ok@example.com.json"):
        assert by_id[account_id]["error"] is None and by_id[account_id]["windows"]
    listed = set(by_id) | {item["id"] for item in report["skipped"]}
    raw = os.fsencode(str(directory))
    on_disk = {os.fsdecode(name) for name in os.listdir(raw)
               if name.endswith(b".json") and not os.path.isdir(os.path.join(raw, name))}
    assert on_disk <= listed, sorted(on_disk - listed)
    for account in report["accounts"]:
        if account["error"]:
            hs.assert_sentence(account["error"])
            assert not account["error"].startswith("Unexpected"), account["error"]


def test_every_bad_file_at_once_in_a_real_process_keeps_the_healthy_accounts(healthy_dir, fake,
                                                                             tmp_path):
    """The installed script, as cron runs it: its real stdout and stderr bytes."""
    outside = tmp_path / "outside"
    outside.mkdir()
    _all_bad_files(healthy_dir.path, outside)
    _register_bad_file_tokens(fake)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH_USAGE_TRACKER_")}
    env.update(fake.environ())
    result, elapsed = run_script(["--auth-dir", str(healthy_dir), "-vv", "--timeout", "2",
                                  "--json"], env)
    stdout = result.stdout.decode("utf-8", "replace")
    stderr = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr, stderr[-3000:]
    assert result.returncode == 1, stderr[-3000:]
    assert elapsed < 30
    issued = bad_files.tokens_in_directory(str(healthy_dir))
    hs.assert_no_tokens(ALL_TOKENS + tuple(issued), stdout, stderr)
    _check_every_entry_reported(json.loads(stdout), healthy_dir.path)


def test_every_bad_file_at_once_in_table_mode_keeps_the_healthy_accounts(healthy_dir, pointed,
                                                                         tmp_path, capsys,
                                                                         monkeypatch):
    """The table for people, in-process (re-read pauses shortened), from the same directory."""
    monkeypatch.setattr(credentials, "READ_PAUSE", 0.001)
    real = refresh_module.refresh_tokens
    monkeypatch.setattr(refresh_module, "refresh_tokens",
                        lambda *a, **k: real(*a, **dict(k, invalid_grant_wait=0.1)))
    outside = tmp_path / "outside"
    outside.mkdir()
    _all_bad_files(healthy_dir.path, outside)
    _register_bad_file_tokens(pointed)
    run = hs.run_cli(["--auth-dir", str(healthy_dir), "-vv", "--timeout", "2"], capsys)
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.status == 1, run.stderr[-3000:]
    issued = bad_files.tokens_in_directory(str(healthy_dir))
    hs.assert_no_tokens(ALL_TOKENS + tuple(issued), run.stdout, run.stderr)
    assert run.stdout.count("ok@example.com") >= 2
    assert "unreadable" in run.stdout and "unsupported type" in run.stdout
