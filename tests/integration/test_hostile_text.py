"""Hostile text (SPEC §12), through the installed script against real loopback servers: escape
sequences, newlines, bidi controls, lone surrogates and undecodable file names in e-mails, file
names and every server string reach no output raw, crash no encoder, and forge no line; in the
table (plain and on a real TTY with colour), JSON, metrics, `--output` and the logs.
"""
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import assert_no_secrets, codex_credentials, signal_and_reap, wait_for, write_compact

import hostile_server as hs
from hostile_server import CLAUDE_PATH, CODEX_PATH

COMMAND = ([shutil.which("oauth-usage-tracker")] if shutil.which("oauth-usage-tracker")
           else [sys.executable, "-m", "oauth_usage_tracker"])

TITLE = "\x1b]0;owned\x07"                      # sets the terminal title
CLIPBOARD = "\x1b]52;c;ZWNobyBvd25lZA==\x07"    # OSC 52: writes the clipboard
CLEAR = "\x1b[2J\x1b[H"
CSI8 = "\x9b31m"                                # 8-bit CSI
RLO = "\u202e"
FORGED = "\n\nCodex  forged@example.com\n  5-hour  [####################] 100% left"
EMAILS = {
    "codex-title.json": TITLE + "title@example.com",
    "codex-clip.json": CLIPBOARD + "clip@example.com",
    "codex-forge.json": "forge@example.com" + FORGED,
    "codex-bidi.json": "bidi" + RLO + "moc.elpmaxe@",
    "codex-surrogate.json": "\ud800surrogate@example.com",
    "codex-csi.json": CSI8 + "csi@example.com",
}
RAW_NAME = b"codex-\xff\xfe" + CLEAR.encode() + b".json"  # not UTF-8, escapes in the name
BAD = ("\x1b", "\x07", "\x9b", RLO, "\x00", "\ud800")


def _iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def codex_payload():
    now = datetime.now(timezone.utc)
    window = {"used_percent": 10, "limit_window_seconds": 18000, "reset_after_seconds": 3600}
    return {"plan_type": "plus" + TITLE,
            "rate_limit": {"primary_window": window},
            "additional_rate_limits": [
                {"limit_name": "Spark" + CLEAR, "rate_limit": {"primary_window": window}},
                {"limit_name": RLO + "kraps", "rate_limit": {"primary_window": window}},
                {"limit_name": "x\ud800y", "rate_limit": {"primary_window": window}}],
            "credits": {"has_credits": True, "balance": "5"},
            "generated": _iso(now)}


def claude_payload():
    now = datetime.now(timezone.utc)
    later = _iso(now + timedelta(hours=3))
    return {"five_hour": {"utilization": 10, "resets_at": later,
                          "locked_reason": CLIPBOARD + "locked" + FORGED},
            "seven_day_\ud800tangelo": {"utilization": 5, "resets_at": later},
            "bucket" + TITLE: {"utilization": 7, "resets_at": later},
            "limits": [{"kind": "weekly_scoped", "percent": 50, "resets_at": later,
                        "scope": {"model": {"display_name": "Opus" + CLEAR + "\n4"}}}],
            "extra_usage": {"is_enabled": True, "utilization": 20, "used_credits": 100,
                            "monthly_limit": 1000, "currency": "USD" + TITLE}}


@pytest.fixture
def hostile(auth_dir, tmp_path):
    """Accounts whose e-mails and file names are hostile, against servers whose strings are."""
    for name, email in EMAILS.items():
        write_compact(auth_dir.path / name, codex_credentials(email=email))
    fd = os.open(os.path.join(os.fsencode(str(auth_dir)), RAW_NAME),
                 os.O_WRONLY | os.O_CREAT, 0o600)
    nameless = codex_credentials()
    del nameless["email"]  # the table shows the file name instead
    os.write(fd, json.dumps(nameless).encode())
    os.close(fd)
    auth_dir.claude(email="claude" + TITLE + "@example.com")
    auth_dir.raw("gemini.json", json.dumps({"type": "gem" + CLIPBOARD + "ini", "email": "g"}))
    with hs.HostileServer(hs.send_json(codex_payload()), CODEX_PATH) as codex, \
            hs.HostileServer(hs.send_json(claude_payload()), CLAUDE_PATH) as claude:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH_USAGE_TRACKER_")}
        env.update(hs.endpoint_environ(codex.base_url, claude.base_url, claude.base_url))
        env.update(HOME=str(tmp_path / "home"), TERM="xterm-256color")
        env.pop("NO_COLOR", None)
        yield auth_dir, env


def _run(args, env):
    return subprocess.run(COMMAND + args, env=env, capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def _decoded(data):
    return data.decode("utf-8") if isinstance(data, bytes) else data


def _assert_clean(text, allow_sgr=False):
    text = _decoded(text)
    if allow_sgr:
        text = re.sub("\x1b\\[[0-9;]*m", "", text)
    for bad in BAD:
        assert bad not in text, "%r reached the output" % bad
    assert "Traceback" not in text


def _account_headers(table):
    return [line for line in table.splitlines() if re.match(r"^(Codex|Claude)  ", line)
            and not re.match(r"^\w+ +\d+ of \d+ usable", line)]  # the pool summary


def test_table_plain_escapes_everything_and_forges_no_block(hostile):
    auth_dir, env = hostile
    result = _run(["--auth-dir", str(auth_dir), "--no-state", "-vv"], env)
    assert result.returncode in (0, 1), result.stderr
    _assert_clean(result.stdout)
    _assert_clean(result.stderr)
    log_lines = _decoded(result.stderr).splitlines()
    assert log_lines and all(line.startswith("oauth-usage-tracker: ") for line in log_lines)
    table = _decoded(result.stdout)
    assert len(_account_headers(table)) == len(EMAILS) + 2  # + the raw name + the Claude one
    assert "forged@example.com" in table
    assert not any(line.startswith("Codex  forged") for line in table.splitlines())
    assert "\\x1b]0;owned\\x07title@example.com" in table
    assert "\\u202e" in table and "\\udcff" in table
    assert "\\ud800surrogate@example.com" in table
    assert "locked: \\x1b]52;c;" in table and "USD\\x1b]0;owned" in table
    assert_no_secrets(result.stdout, result.stderr)


def test_table_on_a_tty_has_only_its_own_colour_codes(hostile):
    auth_dir, env = hostile
    master, slave = pty.openpty()
    process = subprocess.Popen(COMMAND + ["--auth-dir", str(auth_dir), "--no-state"], env=env,
                               stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
        _, err = process.communicate(timeout=30)
    out = b"".join(chunks).decode("utf-8")
    assert "\x1b[1m" in out  # colour is on
    _assert_clean(out, allow_sgr=True)
    _assert_clean(err)
    assert len(_account_headers(re.sub("\x1b\\[[0-9;]*m", "", out))) == len(EMAILS) + 2


def test_json_is_ascii_and_holds_the_values_exactly(hostile):
    auth_dir, env = hostile
    result = _run(["--auth-dir", str(auth_dir), "--no-state", "--json"], env)
    assert result.returncode in (0, 1), result.stderr
    result.stdout.decode("ascii")
    _assert_clean(result.stderr)
    report = json.loads(result.stdout)
    emails = {account["id"]: account["email"] for account in report["accounts"]}
    for name, email in EMAILS.items():
        assert emails[name] == email
    assert emails[os.fsdecode(RAW_NAME)] is None
    codex = next(a for a in report["accounts"] if a["id"] == "codex-title.json")
    assert codex["plan"] == "plus" + TITLE


def test_prometheus_and_output_files_are_written_and_parse(hostile, tmp_path):
    auth_dir, env = hostile
    metrics, output = tmp_path / "usage.prom", tmp_path / "report.txt"
    result = _run(["--auth-dir", str(auth_dir), "--no-state", "--prometheus", str(metrics),
                   "--output", str(output)], env)
    assert result.returncode in (0, 1), result.stderr
    _assert_clean(result.stderr)
    text = metrics.read_text("utf-8")
    _assert_clean(text)
    _assert_clean(output.read_text("utf-8"))
    series = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in series, "duplicate series %r" % (key,)
            series.add(key)
    accounts = {labels["account"] for name, labels in
                ((name, dict(labels)) for name, labels in series)
                if name == "oauth_usage_account_info"}
    assert len(accounts) == len(EMAILS) + 2


def test_watch_with_prometheus_survives_hostile_text_and_exits_0(hostile, tmp_path):
    auth_dir, env = hostile
    metrics = tmp_path / "usage.prom"
    process = subprocess.Popen(COMMAND + ["--auth-dir", str(auth_dir), "--no-state", "--json",
                                          "--watch", "3600", "--prometheus", str(metrics)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: metrics.exists(), timeout=30)
        assert process.poll() is None  # still watching
        out, err, _ = signal_and_reap(process, signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    _assert_clean(err)
    _assert_clean(metrics.read_text("utf-8"))


def test_latin1_locale_stdout_gets_escapes_not_a_traceback(hostile):
    auth_dir, env = hostile
    env = dict(env, PYTHONIOENCODING="latin-1", LC_ALL="C")
    auth_dir.codex(email="\u6f22\u5b57@example.com", name="codex-cjk.json")
    result = _run(["--auth-dir", str(auth_dir), "--no-state"], env)
    assert result.returncode in (0, 1), result.stderr
    table = result.stdout.decode("latin-1")
    assert "\\u6f22\\u5b57@example.com" in table
    assert b"Traceback" not in result.stderr
