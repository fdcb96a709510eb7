"""Delivering events: real child processes for --on-event, a real file for --events-log."""
import json
import os
import stat
import time
from datetime import datetime, timedelta, timezone

import pytest

from oauth_usage_tracker import notify as module
from oauth_usage_tracker.cli import main
from oauth_usage_tracker.events import EventLedger, decide
from oauth_usage_tracker.models import AccountState, AccountUsage, Provider, UsageWindow

from support import SECRETS, assert_no_secrets, process_gone

T0 = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)
LOW = AccountUsage(id="claude-alice@example.com.json", provider=Provider.CLAUDE,
                   email="alice@example.com", state=AccountState.OK,
                   windows=(UsageWindow("five_hour", "5-hour", 93.0,
                                        T0 + timedelta(hours=3)),))
BROKEN = AccountUsage(id="codex-bob@example.com.json", provider=Provider.CODEX,
                      email="bob@example.com", state=AccountState.LOGIN_FAILED,
                      error="Codex token was rejected (401); log in again with CLIProxyAPI")


def some_events():
    return decide({}, [LOW, BROKEN], [], T0)[0]


def hook(tmp_path, body, name="hook.sh"):
    """A real shell script, executable, in tmp_path."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def environ_with_secrets():
    env = dict(os.environ, OAUTH_USAGE_TRACKER_CPA_KEY="management-key-" + SECRETS[0],
               OAUTH_USAGE_TRACKER_CLAUDE_USAGE_URL="http://127.0.0.1:9/x",
               MANAGEMENT_PASSWORD="cpa-" + SECRETS[1], NTFY_TOKEN="tk_user_own_token")
    return env


def test_run_command_gets_event_json_on_stdin_and_type_in_environment(tmp_path):
    out = tmp_path / "out"
    script = hook(tmp_path, 'cat > "%s/stdin"; env > "%s/env"; echo "$@" > "%s/args"\n'
                  % (out, out, out))
    out.mkdir()
    event = some_events()[0]
    status = module.run_command([script, "one", "two words"], event,
                                environ=environ_with_secrets())
    assert status == 0
    data = json.loads((out / "stdin").read_text())
    assert data == event.to_json() and data["event"] == "quota_low"
    env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines()
               if "=" in line)
    assert env["OAUTH_USAGE_EVENT"] == "quota_low"
    assert env["OAUTH_USAGE_EVENT_MESSAGE"].startswith("Claude alice@example.com: 5-hour")
    assert env["NTFY_TOKEN"] == "tk_user_own_token"  # the user's own variables stay
    assert not [name for name in env if name.startswith("OAUTH_USAGE_TRACKER_")]
    assert "MANAGEMENT_PASSWORD" not in env
    assert (out / "args").read_text() == "one two words\n"
    assert_no_secrets((out / "env").read_text(), (out / "stdin").read_text())


def test_run_command_past_deadline_kills_the_whole_process_group(tmp_path, caplog):
    pid_file = tmp_path / "child.pid"
    script = hook(tmp_path, 'sleep 60 & echo $! > "%s"; wait\n' % pid_file)
    started = time.monotonic()
    assert module.run_command([script], some_events()[0], deadline=0.5) is None
    assert time.monotonic() - started < 10
    assert "did not finish within 0.5 s" in caplog.text
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10  # killed with the group; init reaps it soon after
    while not process_gone(child):
        assert time.monotonic() < deadline, "the command's child survived its deadline"
        time.sleep(0.05)


def test_run_command_ignoring_sigterm_is_killed(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(module, "KILL_GRACE", 0.2)
    script = hook(tmp_path, "trap '' TERM; while :; do sleep 0.1; done\n")
    started = time.monotonic()
    assert module.run_command([script], some_events()[0], deadline=0.3) is None
    assert time.monotonic() - started < 10
    assert "killed it" in caplog.text


def test_run_command_missing_or_not_executable_is_a_warning(tmp_path, caplog):
    event = some_events()[0]
    assert module.run_command([str(tmp_path / "no-such-hook")], event) is None
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\nexit 0\n")
    assert module.run_command([str(plain)], event) is None
    assert caplog.text.count("could not be started") == 2
    assert "quota_low not delivered" in caplog.text


def test_run_command_failing_status_and_signal_are_warnings(tmp_path, caplog):
    event = some_events()[0]
    assert module.run_command([hook(tmp_path, "exit 3\n")], event) == 3
    assert "exited with status 3 for quota_low" in caplog.text
    assert module.run_command([hook(tmp_path, "kill -KILL $$\n", "k.sh")], event) == -9
    assert "was killed by SIGKILL" in caplog.text


def test_run_command_that_never_reads_stdin_is_fine(tmp_path):
    assert module.run_command([hook(tmp_path, "exec 0<&-; exit 0\n")], some_events()[0]) == 0


def test_notifier_failing_command_does_not_block_the_next_events(tmp_path):
    seen = tmp_path / "seen"
    failing = hook(tmp_path, "exit 1\n", "fail.sh")
    recording = hook(tmp_path, 'echo "$OAUTH_USAGE_EVENT" >> "%s"\n' % seen, "rec.sh")
    notifier = module.Notifier(EventLedger(), [[str(tmp_path / "missing")], [failing],
                                               [recording]], str(tmp_path / "events.jsonl"))
    found = notifier.handle([LOW, BROKEN], [], T0)
    assert [e.type.value for e in found] == ["quota_low", "login_failed"]
    assert seen.read_text().split() == ["quota_low", "login_failed"]
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["quota_low", "login_failed"]
    assert notifier.handle([LOW, BROKEN], [], T0 + timedelta(minutes=5)) == []


def test_append_to_log_creates_private_file_and_appends(tmp_path):
    path = tmp_path / "events.jsonl"
    old = os.umask(0o022)
    try:
        module.append_to_log(str(path), some_events())
        module.append_to_log(str(path), some_events()[:1])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["event"] for e in events] == ["quota_low", "login_failed", "quota_low"]
    path.chmod(0o640)
    module.append_to_log(str(path), some_events()[:1])
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # an existing file keeps its mode


def test_append_to_log_never_follows_a_symlink_or_a_hard_link(tmp_path, caplog):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "link").symlink_to(victim)
    module.append_to_log(str(tmp_path / "link"), some_events())
    os.link(victim, tmp_path / "hard")
    module.append_to_log(str(tmp_path / "hard"), some_events())
    assert victim.read_text() == "precious\n"
    assert caplog.text.count("events log") == 2 and "hard links" in caplog.text


def test_append_to_log_writes_into_devices_and_never_blocks_on_a_fifo(tmp_path, caplog):
    module.append_to_log(os.devnull, some_events())
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    module.append_to_log(str(fifo), some_events())  # no reader: a warning, not a hang
    assert "Cannot open the events log" in caplog.text


def test_event_line_is_ascii_json_even_for_hostile_text():
    odd = AccountUsage(id="claude-\x1b[31m\u202e\udcff.json", provider=Provider.CLAUDE,
                       email="e\nvil@example.com", state=AccountState.LOGIN_FAILED, error="x")
    [event] = decide({}, [odd], [], T0)[0]
    line = module.event_line(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["account"]["email"] == "e\nvil@example.com"
    env = module.command_environment(event, {})
    assert "\n" not in env["OAUTH_USAGE_EVENT_MESSAGE"]
    assert "\x1b" not in env["OAUTH_USAGE_EVENT_MESSAGE"]


@pytest.mark.parametrize("value", ["", "   ", "'unclosed"])
def test_split_command_refuses_empty_and_broken_quotes(value, capsys):
    with pytest.raises(ValueError):
        module.split_command(value)
    assert main(["--on-event", value, "--auth-dir", "/nonexistent"]) == 2
    assert "--on-event" in capsys.readouterr().err


def test_split_command_splits_like_a_shell_without_expanding():
    assert module.split_command("curl -d \"$X y\" 'a b' c\\ d") == ["curl", "-d", "$X y", "a b",
                                                                  "c d"]


def test_main_with_no_state_warns_that_each_run_starts_without_memory(tmp_path, capsys):
    auth = tmp_path / "auth"
    auth.mkdir()
    status = main(["--auth-dir", str(auth), "--no-state", "--json",
                   "--events-log", str(tmp_path / "events.jsonl")])
    assert status == 0
    assert "--no-state: events are decided without memory" in capsys.readouterr().err


@pytest.mark.parametrize("trusted", [True, False])
def test_append_to_log_to_a_fifo_that_never_drains_gives_up_at_the_deadline(
        tmp_path, caplog, monkeypatch, trusted):
    from oauth_usage_tracker import files
    from support import StuckFifo
    directory = tmp_path / "logs"
    directory.mkdir()
    os.chmod(directory, 0o700 if trusted else 0o1777)
    monkeypatch.setattr(files, "WRITE_DEADLINE", 0.5)
    fifo = StuckFifo(directory / "events.jsonl")
    try:
        started = time.monotonic()
        module.append_to_log(str(directory / "events.jsonl"), some_events())
        elapsed = time.monotonic() - started
        leaked = fifo.taken()
    finally:
        fifo.close()
    assert stat.S_ISFIFO(os.lstat(directory / "events.jsonl").st_mode)
    assert "Cannot append to the events log" in caplog.text
    if trusted:
        assert 0.4 <= elapsed < 3, elapsed
        assert "took nothing for 0.5 s" in caplog.text
    else:
        assert elapsed < 0.4, elapsed  # refused at once, nothing written
        assert "others can write" in caplog.text
        assert leaked == b""


def test_append_to_log_fifo_with_a_reader_in_a_private_directory_gets_the_lines(tmp_path):
    os.chmod(tmp_path, 0o700)
    fifo = tmp_path / "events.jsonl"
    os.mkfifo(fifo, 0o600)
    reader = os.open(str(fifo), os.O_RDONLY | os.O_NONBLOCK)
    try:
        module.append_to_log(str(fifo), some_events())
        data = os.read(reader, 65536)
    finally:
        os.close(reader)
    lines = data.splitlines()
    assert len(lines) == len(some_events()) and all(json.loads(line) for line in lines)


def test_commands_get_at_most_max_hook_events_per_run_and_one_warning(tmp_path, monkeypatch,
                                                                      caplog):
    monkeypatch.setattr(module, "MAX_HOOK_EVENTS", 1)
    ran = tmp_path / "ran"
    first = hook(tmp_path, 'echo "a $OAUTH_USAGE_EVENT" >> %s\n' % ran, "a.sh")
    second = hook(tmp_path, 'echo "b $OAUTH_USAGE_EVENT" >> %s\n' % ran, "b.sh")
    events = some_events()
    assert len(events) == 2
    notifier = module.Notifier(EventLedger(), [[first], [second]], str(tmp_path / "events.log"))
    with caplog.at_level("WARNING", logger="oauth_usage_tracker"):
        notifier.deliver(events)
    # Each command ran for the first event only; the log holds both.
    assert ran.read_text().splitlines() == ["a " + events[0].type.value,
                                            "b " + events[0].type.value]
    assert len((tmp_path / "events.log").read_text().splitlines()) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["2 events in this run: the --on-event commands got the first 1; the "
                        "other 1 were not passed to them (they are in the events log %s)"
                        % (tmp_path / "events.log")]
    caplog.clear()
    module.Notifier(EventLedger()).deliver(events)  # no command: nothing was held back
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
