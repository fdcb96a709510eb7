"""The script's own entry point ends the process without the interpreter's finalisation
(cli.end_process): the atexit handlers still run, stdout and stderr are flushed, the status is
the run's; and it leaves the exit to the interpreter whenever that finalisation may still matter.
A library caller of cli.main() is never ended. In process with os._exit recorded, then through a
real interpreter whose teardown would show."""
import contextlib
import json
import os
import subprocess
import sys
import threading

import pytest

import oauth_usage_tracker.cli as module
from oauth_usage_tracker import demo


class Ended(BaseException):
    """Raised by the recorded os._exit instead of ending the test process."""


@pytest.fixture
def exits(monkeypatch):
    """What end_process does, in order, recorded: the atexit handlers (this process's are not
    run) and os._exit (raising Ended). No tracer is seen (coverage's is)."""
    calls = []

    def exit_(status):
        calls.append(("exit", status))
        raise Ended(status)

    monkeypatch.setattr(module.os, "_exit", exit_)
    monkeypatch.setattr(module.atexit, "_run_exitfuncs", lambda: calls.append(("atexit",)))
    monkeypatch.setattr(module, "_observed", lambda: False)
    return calls


def recorded_streams(monkeypatch, calls):
    """Replace stdout and stderr with streams whose flushes are recorded in `calls` (in the test
    itself: pytest puts its capture back between a fixture and the test)."""
    for name in ("stdout", "stderr"):
        monkeypatch.setattr(sys, name, Stream(name, calls))


class Stream:
    """A std stream whose flush is recorded, or raises `error`."""

    def __init__(self, name, calls, error=None):
        self.name, self.calls, self.error, self.closed = name, calls, error, False

    def flush(self):
        if self.error is not None:
            raise self.error
        self.calls.append(("flush", self.name))


def test_end_process_runs_the_atexit_handlers_flushes_then_exits_with_the_status(exits, monkeypatch):
    recorded_streams(monkeypatch, exits)
    with pytest.raises(Ended):
        module.end_process(3)
    assert exits == [("atexit",), ("flush", "stdout"), ("flush", "stderr"), ("exit", 3)]


def test_end_process_skips_a_closed_stream(exits, monkeypatch):
    recorded_streams(monkeypatch, exits)
    sys.stdout.closed = True
    with pytest.raises(Ended):
        module.end_process(0)
    assert exits == [("atexit",), ("flush", "stderr"), ("exit", 0)]


@pytest.mark.parametrize("error", [BrokenPipeError(32, "Broken pipe"),
                                   OSError(28, "No space left on device"), ValueError("closed")])
def test_a_failing_flush_is_left_to_the_interpreters_exit(exits, monkeypatch, error):
    recorded_streams(monkeypatch, exits)
    monkeypatch.setattr(sys, "stdout", Stream("stdout", exits, error))
    module.end_process(0)  # returns: the caller's sys.exit lets the interpreter report it
    assert ("exit", 0) not in exits


@contextlib.contextmanager
def running_thread(daemon):
    """A thread (daemon or not) that runs until the body ends."""
    release = threading.Event()
    thread = threading.Thread(target=release.wait, daemon=daemon)
    thread.start()
    try:
        yield thread
    finally:
        release.set()
        thread.join()


def test_a_running_non_daemon_thread_is_left_to_the_interpreter(exits, monkeypatch):
    recorded_streams(monkeypatch, exits)
    with running_thread(daemon=False):
        module.end_process(0)
    assert exits == []  # not even the atexit handlers: the interpreter runs them after the join


def test_a_running_daemon_thread_does_not_hold_the_exit(exits, monkeypatch):
    recorded_streams(monkeypatch, exits)
    with running_thread(daemon=True), pytest.raises(Ended):
        module.end_process(1)
    assert exits[-1] == ("exit", 1)


def test_a_profiler_is_seen():
    sys.setprofile(lambda *args: None)
    try:
        assert module._observed()
    finally:
        sys.setprofile(None)


def test_run_ends_the_process_only_from_the_entry_point(exits, monkeypatch):
    monkeypatch.setattr(module, "main", lambda process_exit: 3)
    with pytest.raises(SystemExit) as exited:
        module.run()
    assert exited.value.code == 3
    assert exits == []
    with pytest.raises(Ended):
        module.run(end_at_once=True)
    assert exits[-1] == ("exit", 3)


def test_the_entry_point_asks_for_the_fast_exit(monkeypatch):
    import oauth_usage_tracker.__main__ as entry
    seen = []
    monkeypatch.setattr(module, "run", lambda **flags: seen.append(flags))
    try:
        entry.main()
    finally:
        import gc
        gc.enable()
    assert seen == [{"end_at_once": True}]


def test_a_library_caller_of_main_is_never_ended(exits, fake, auth_dir, monkeypatch):
    for name, value in fake.environ().items():
        monkeypatch.setenv(name, value)
    demo.populate(fake, str(auth_dir), claude=1, codex=0)
    report = auth_dir.path.parent / "report.json"
    assert module.main(["--auth-dir", str(auth_dir), "--json", "-q", "--output",
                        str(report)]) == 0
    assert module.main(["--fail-below", "100", "--auth-dir", str(auth_dir), "-q",
                        "--output", str(report)]) == 3
    assert exits == []


# Through a real interpreter: the script's entry point, as the console script calls it, with an
# atexit handler, which must still run.
ENTRY = """\
import atexit, os, sys
atexit.register(os.write, 2, b"atexit ran\\n")
sys.argv[0] = "oauth-usage-tracker"
from oauth_usage_tracker.__main__ import main
main()
"""


def script(args, env, flags=()):
    return subprocess.run([sys.executable, *flags, "-c", ENTRY] + args, env=env,
                          capture_output=True, timeout=120)


@pytest.fixture
def pool(fake, auth_dir, tmp_path):
    """300 healthy accounts on the fake, and the script's environment."""
    demo.populate(fake, str(auth_dir), claude=150, codex=150)
    env = dict(os.environ, **fake.environ())
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    return env


def test_a_run_ends_without_teardown_and_a_piped_report_arrives_whole(pool, auth_dir):
    ran = script(["--auth-dir", str(auth_dir), "--json", "-q"], pool)
    assert ran.returncode == 0, ran.stderr
    assert len(ran.stdout) > 64 * 1024  # more than a pipe holds: it was drained as written
    report = json.loads(ran.stdout)
    assert len(report["accounts"]) == 300
    assert ran.stderr == b"atexit ran\n"


def test_the_interpreter_is_not_finalised(pool, auth_dir):
    # -v: the interpreter says what it imports and, when it finalises, what it clears.
    ran = script(["--auth-dir", str(auth_dir), "--json", "-q"], pool, flags=["-v"])
    assert ran.returncode == 0
    assert b"import 'oauth_usage_tracker.tracker'" in ran.stderr
    assert b"atexit ran\n" in ran.stderr
    assert b"# clear sys.path" not in ran.stderr


def test_the_table_through_a_pipe_and_the_fail_below_status(pool, auth_dir):
    ran = script(["--auth-dir", str(auth_dir), "-q", "--fail-below", "100", "--layout", "lines"],
                 pool)
    assert ran.returncode == 3
    assert all(b"%s%04d@example.com" % (provider, index) in ran.stdout
               for provider in (b"claude", b"codex") for index in range(150))
    assert ran.stderr == b"atexit ran\n"


def test_a_usage_error_keeps_its_status_and_message(pool):
    ran = script(["--no-such-flag"], pool)
    assert ran.returncode == 2
    assert b"unrecognized arguments: --no-such-flag" in ran.stderr
    assert ran.stderr.endswith(b"atexit ran\n")


def test_a_report_into_a_closed_pipe_exits_as_before(pool, auth_dir):
    read, write = os.pipe()
    os.close(read)
    try:
        ran = subprocess.run([sys.executable, "-c", ENTRY, "--auth-dir", str(auth_dir), "--json",
                              "-q"], env=pool, stdout=write, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write)
    assert ran.returncode == 2
    assert b"Cannot write the report: Broken pipe" in ran.stderr
    assert b"atexit ran\n" in ran.stderr
