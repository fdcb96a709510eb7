"""The script (cli, run, options), in process: a run from flags to exit status, the demo,
--watch, and shutdown by a real signal delivered to this process (the handlers are the script's
own, installed and restored around each run)."""
import json
import logging
import os
import signal
import threading
import types

import pytest

import oauth_usage_tracker.cli as module
import oauth_usage_tracker.run as run_module
from oauth_usage_tracker.errors import CredentialError
from oauth_usage_tracker.options import Options
from oauth_usage_tracker.refresh import GUARD


@pytest.fixture(autouse=True)
def handlers_restored():
    """Every test leaves SIGTERM and SIGINT as it found them."""
    before = {number: signal.getsignal(number)
              for number in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
    yield
    for number, handler in before.items():
        assert signal.getsignal(number) is handler


def test_main_bad_flag_is_a_usage_error(capsys):
    assert module.main(["--layout", "grid"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_main_missing_auth_dir_is_a_usage_error_with_a_sentence(tmp_path, capfd):
    assert module.main(["--auth-dir", str(tmp_path / "missing"), "--no-state"]) == 2
    assert "missing" in capfd.readouterr().err


def test_main_empty_auth_dir_reports_no_accounts_and_exits_0(auth_dir, capsys):
    assert module.main(["--auth-dir", str(auth_dir), "--no-state", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accounts"] == [] and report["skipped"] == []


def test_main_demo_json_behaves_as_designed(capsys):
    assert module.main(["--demo", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    failed = [a["id"] for a in report["accounts"] if a["error"]]
    assert failed == ["codex-frank@example.com.json"]


def test_main_demo_table_tells_the_story_on_stderr(capsys):
    assert module.main(["--demo"]) == 0
    captured = capsys.readouterr()
    assert "frank@example.com fails on purpose" in captured.err
    assert "alice@example.com" in captured.out


def test_main_sigterm_during_a_run_exits_143_after_closing_the_tracker(monkeypatch, auth_dir,
                                                                        capfd):
    from oauth_usage_tracker.tracker import OAuthUsageTracker
    closed = []
    original = OAuthUsageTracker.close

    def close(self):
        closed.append(self)
        original(self)

    def discover(directory):
        os.kill(os.getpid(), signal.SIGTERM)  # handled in this (the main) thread right away
        raise AssertionError("the signal did not interrupt the run")

    monkeypatch.setattr(OAuthUsageTracker, "close", close)
    monkeypatch.setattr(run_module, "discover_accounts", discover)
    assert module.main(["--auth-dir", str(auth_dir), "--no-state"]) == 128 + signal.SIGTERM
    assert closed
    assert "Terminated; in-flight token writes were finished first" in capfd.readouterr().err


def test_main_sigint_during_a_run_exits_130(monkeypatch, auth_dir, capfd):
    def discover(directory):
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the signal did not interrupt the run")

    monkeypatch.setattr(run_module, "discover_accounts", discover)
    assert module.main(["--auth-dir", str(auth_dir), "--no-state"]) == 130
    assert "Interrupted" in capfd.readouterr().err


def test_main_signal_whose_exception_the_interpreter_swallowed_still_exits_143(monkeypatch,
                                                                              auth_dir):
    import sys
    import weakref
    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", swallowed.append)
    discover_accounts = run_module.discover_accounts

    def discover(directory):
        class Thing:
            pass

        def callback(_ref):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs here, inside the callback
                pass

        thing = Thing()
        ref = weakref.ref(thing, callback)
        del thing  # the callback's exception is "ignored" by the interpreter
        assert ref() is None
        return discover_accounts(directory)

    monkeypatch.setattr(run_module, "discover_accounts", discover)
    assert module.main(["--auth-dir", str(auth_dir), "--no-state"]) == 128 + signal.SIGTERM
    assert [type(item.exc_value).__name__ for item in swallowed] == ["_Terminated"]


def test_main_watch_stops_with_0_on_sigterm_after_its_first_report(monkeypatch, auth_dir,
                                                                   capsys):
    auth_dir.claude()
    reports = []
    original = module.Run.finish

    def finish(self, report):
        status = original(self, report)
        reports.append(report)
        os.kill(os.getpid(), signal.SIGTERM)  # only noted: --watch ends its loop
        return status

    monkeypatch.setattr(module.Run, "finish", finish)
    monkeypatch.setenv("OAUTH_USAGE_TRACKER_CLAUDE_USAGE_URL", "http://127.0.0.1:9/usage")
    assert module.main(["--auth-dir", str(auth_dir), "--no-state", "--watch", "60",
                        "--json", "--timeout", "5"]) == 0
    assert len(reports) == 1
    assert [a.id for a in reports[0].accounts] == ["claude-alice@example.com.json"]
    assert json.loads(capsys.readouterr().out)["accounts"][0]["state"] == "error"


def test_execute_after_a_signal_refuses_new_token_refreshes(monkeypatch, auth_dir):
    args = module.build_parser().parse_args(["--auth-dir", str(auth_dir), "--no-state",
                                             "--json"])
    shutdown = module.Shutdown(raise_first=False)
    shutdown.signal = signal.SIGTERM
    run = module.Run(Options.from_args(args), module._settings(args, {}), args.auth_dir)
    assert run.execute(shutdown) == 0
    assert shutdown.raise_first is False
    with pytest.raises(CredentialError, match="no new token refresh"):
        with GUARD.critical():
            pass


def test_shutdown_first_signal_raises_later_ones_are_only_noted(capfd):
    shutdown = module.Shutdown(raise_first=True)
    assert not shutdown.requested
    with pytest.raises(KeyboardInterrupt) as raised:
        shutdown.handle(signal.SIGTERM, None)
    assert isinstance(raised.value, module._Terminated)
    assert shutdown.requested and shutdown.signal == signal.SIGTERM
    shutdown.handle(signal.SIGINT, None)  # noted, never raised
    assert shutdown.signal == signal.SIGTERM
    assert "still finishing token writes" in capfd.readouterr().err


def test_shutdown_sigint_raises_a_plain_keyboard_interrupt():
    shutdown = module.Shutdown(raise_first=True)
    with pytest.raises(KeyboardInterrupt) as raised:
        shutdown.handle(signal.SIGINT, None)
    assert not isinstance(raised.value, module._Terminated)


def test_shutdown_in_watch_mode_only_records_the_signal():
    shutdown = module.Shutdown(raise_first=False)
    shutdown.handle(signal.SIGTERM, None)
    assert shutdown.requested


def test_shutdown_installed_handles_both_signals_then_restores_them():
    shutdown = module.Shutdown(raise_first=False)
    with shutdown.installed():
        assert signal.getsignal(signal.SIGTERM) == shutdown.handle
        assert signal.getsignal(signal.SIGINT) == shutdown.handle
        os.kill(os.getpid(), signal.SIGTERM)
    assert shutdown.signal == signal.SIGTERM


def test_shutdown_installed_outside_the_main_thread_installs_nothing():
    shutdown = module.Shutdown(raise_first=False)
    seen = []

    def body():
        with shutdown.installed():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(10)
    assert seen and seen[0] != shutdown.handle


def test_configure_logging_levels_and_escapes_control_characters(capsys):
    module.configure_logging(0, quiet=True)
    root = logging.getLogger("oauth_usage_tracker")
    assert root.level == logging.ERROR
    module.configure_logging(1, quiet=False)
    assert root.level == logging.INFO
    module.configure_logging(2, quiet=False)
    assert root.level == logging.DEBUG
    root.error("name\x1b[31mred")
    assert "name\\x1b[31mred" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--workers", "0"), ("--timeout", "inf"),
                                         ("--max-stale", "-1"), ("--event-below", "0"),
                                         ("--on-event", "'unclosed")])
def test_build_parser_refuses_bad_values(flag, value, capsys):
    assert module.main([flag, value]) == 2
    assert "argument %s" % flag in capsys.readouterr().err


def test_demo_cast_names_the_accounts_that_fail_on_purpose(tmp_path):
    from datetime import datetime, timezone

    from oauth_usage_tracker import demo
    from oauth_usage_tracker.models import AccountUsage, Provider
    from oauth_usage_tracker.report import Report
    fake = demo.FakeProviders()  # not started: the cast only registers its accounts
    failing = demo.create_demo_accounts(fake, str(tmp_path))
    assert failing == {"codex-frank@example.com.json"}
    assert (tmp_path / "codex-frank@example.com.json").is_file()

    def report(*failed):
        accounts = tuple(AccountUsage(id=name, provider=Provider.CODEX,
                                      error="x" if name in failed else None)
                         for name in ("codex-frank@example.com.json", "codex-dave@example.com.json"))
        return Report(accounts=accounts, skipped=(), generated_at=datetime.now(timezone.utc))

    assert demo.behaved_as_designed(report("codex-frank@example.com.json"), failing)
    assert not demo.behaved_as_designed(report(), failing)
    assert not demo.behaved_as_designed(
        report("codex-frank@example.com.json", "codex-dave@example.com.json"), failing)


def test_options_from_args_are_frozen_and_read_every_flag_the_run_uses():
    args = module.build_parser().parse_args([
        "--provider", "codex", "--json", "--output", "r.json", "--prometheus", "m.prom",
        "--metrics-name", "n", "--layout", "lines", "--sort", "reset", "--fail-below", "5",
        "--max-stale", "60", "--usable-above", "20", "--max-age", "30", "--watch", "9",
        "--state-dir", "/s", "--no-state", "--on-event", "notify-send 'a b'",
        "--events-log", "e.log", "--event-below", "15", "--failing-after", "100"])
    options = Options.from_args(args)
    assert options == Options(
        providers=frozenset({module.Provider.CODEX}), json=True, output="r.json",
        prometheus="m.prom", metrics_name="n", layout="lines", sort="reset", fail_below=5.0,
        max_stale=60.0, usable_above=20.0, max_age=30.0, watch=9.0, state_dir="/s",
        keep_state=False, on_event=(("notify-send", "a b"),), events_log="e.log",
        event_below=15.0, failing_after=100.0)
    assert options.wants_events
    with pytest.raises(AttributeError):  # frozen
        options.json = False  # type: ignore[misc]
    defaults = Options.from_args(module.build_parser().parse_args([]))
    assert defaults == Options() and not defaults.wants_events
    assert defaults.providers == frozenset(module.Provider)


def test_demo_fake_is_quiet_about_a_client_that_hung_up_but_not_about_its_own_faults(capsys):
    from oauth_usage_tracker import demo
    with demo.FakeProviders() as fake:
        server = fake._server
        try:
            raise BrokenPipeError("the client hung up")
        except OSError:
            server.handle_error(None, ("127.0.0.1", 1))
        assert capsys.readouterr().err == ""
        try:
            raise ValueError("a fault of the fake")
        except ValueError:
            server.handle_error(None, ("127.0.0.1", 1))
        assert "ValueError" in capsys.readouterr().err


# --- a stopping signal never raised into the import machinery or logging ---------------------

def frames(*names):
    """A chain of stand-in frames, innermost first, running code from the files `names`."""
    frame = None
    for name in reversed(names):
        frame = types.SimpleNamespace(f_code=types.SimpleNamespace(co_filename=name),
                                      f_back=frame)
    return frame


@pytest.mark.parametrize("locked", ["<frozen importlib._bootstrap>",
                                    "<frozen importlib._bootstrap_external>",
                                    logging.__file__])
def test_a_signal_inside_the_import_machinery_or_logging_is_deferred_then_raised(locked):
    shutdown = module.Shutdown(raise_first=True)
    inside = frames("/x/oauth_usage_tracker/run.py", locked, "/x/oauth_usage_tracker/cli.py")
    try:
        shutdown.handle(signal.SIGTERM, inside)  # does not raise
        assert shutdown.signal is None and shutdown._deferred == signal.SIGTERM
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0  # the retry is armed
        shutdown.handle(signal.SIGINT, inside)  # a storm: still deferred, the first one kept
        assert shutdown._deferred == signal.SIGTERM
        shutdown._retry(signal.SIGALRM, inside)  # still inside: deferred again
        assert shutdown.signal is None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    with pytest.raises(module._Terminated):
        shutdown._retry(signal.SIGALRM, frames("/x/oauth_usage_tracker/run.py"))
    assert shutdown.signal == signal.SIGTERM and shutdown._deferred is None
    shutdown.handle(signal.SIGTERM, frames("/x/a.py"))  # later ones are only noted
    assert shutdown.signal == signal.SIGTERM


def test_watch_mode_never_defers_never_raises_and_leaves_sigalrm_alone():
    shutdown = module.Shutdown(raise_first=False)
    before = signal.getsignal(signal.SIGALRM)
    with shutdown.installed():
        assert signal.getsignal(signal.SIGALRM) is before
        shutdown.handle(signal.SIGINT, frames("<frozen importlib._bootstrap>"))
    assert shutdown.signal == signal.SIGINT and shutdown._deferred is None


def test_a_deferred_signal_still_counts_when_the_run_ends_first():
    shutdown = module.Shutdown(raise_first=True)
    with shutdown.installed():
        shutdown.handle(signal.SIGTERM, frames(logging.__file__))
        assert shutdown.signal is None
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0  # the retry is disarmed
    assert shutdown.signal == signal.SIGTERM


def test_a_real_sigterm_during_an_import_is_raised_after_it_and_leaves_no_lock(
        tmp_path, monkeypatch):
    import _imp
    import sys
    import time
    (tmp_path / "signals_itself.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.05)  # the handler runs here, inside the import\n"
        "DONE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    shutdown = module.Shutdown(raise_first=True)
    started = time.monotonic()
    try:
        with pytest.raises(module._Terminated):
            with shutdown.installed():
                import signals_itself  # noqa: F401
                time.sleep(5)  # the retry raises here, or just before, outside the import
        # Raised inside the import, the exception would have failed it: no module.
        assert sys.modules["signals_itself"].DONE is True
        assert time.monotonic() - started < 2  # acted on within a few retries
        assert shutdown.signal == signal.SIGTERM
        assert not _imp.lock_held()
    finally:
        sys.modules.pop("signals_itself", None)
