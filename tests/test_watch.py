"""`--watch`, in process: the directory fingerprint, and the loop driven by a fake clock and a
script of steps (each `should_stop()` call is one turn of the loop)."""
import logging
import os

import oauth_usage_tracker.watch as module
from oauth_usage_tracker.tracker import RefreshHandle


class Clock:
    """Stands in for the `time` module the loop reads: sleeping moves the clock on."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


class Loop:
    """A Watcher on `auth_dir` whose refreshes are handles the test finishes; `steps` are
    called one per turn (before the turn) and the loop stops after the last."""

    def __init__(self, monkeypatch, auth_dir, interval=60.0, enabled=None):
        self.clock = Clock()
        monkeypatch.setattr(module, "time", self.clock)
        self.handles = []
        self.started_with = []
        self.reports = []
        self.watcher = module.Watcher(
            str(auth_dir), interval,
            enabled or (lambda discovery: frozenset(a.id for a in discovery.accounts)),
            self.start, lambda *finished: self.reports.append(finished), poll=1.0)

    def start(self, discovery):
        handle = RefreshHandle(len(self.handles) + 1)
        self.handles.append(handle)
        self.started_with.append(discovery)
        return handle

    def run(self, *steps):
        turns = iter(steps)

        def should_stop():
            step = next(turns, None)
            if step is None:
                return True
            step()
            return False
        self.watcher.run(should_stop)


def nothing():
    pass


def test_directory_fingerprint_lists_json_files_with_mtime_and_size_and_the_directory(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.txt").write_text("ignored")
    os.utime(tmp_path / "a.json", ns=(1, 5_000_000_000))
    info = os.stat(tmp_path)
    assert module.directory_fingerprint(str(tmp_path)) == frozenset(
        {("a.json", 5_000_000_000, 2), (".", info.st_dev, info.st_ino)})


def test_directory_fingerprint_of_a_missing_directory_is_none(tmp_path):
    assert module.directory_fingerprint(str(tmp_path / "missing")) is None


def test_run_refreshes_at_once_and_reports_the_finished_refresh(monkeypatch, auth_dir):
    auth_dir.claude("alice@example.com")
    loop = Loop(monkeypatch, auth_dir)
    loop.run(nothing, lambda: loop.handles[0]._finish([]), nothing)
    assert len(loop.handles) == 1
    assert [a.id for a in loop.started_with[0].accounts] == ["claude-alice@example.com.json"]
    assert len(loop.reports) == 1
    discovery, handle, started = loop.reports[0]
    assert handle is loop.handles[0] and discovery is loop.started_with[0]
    assert started == 1000.0


def test_run_polls_fast_while_a_refresh_runs_and_slowly_when_idle(monkeypatch, auth_dir):
    auth_dir.claude()
    loop = Loop(monkeypatch, auth_dir)
    loop.run(nothing, nothing, lambda: loop.handles[0]._finish([]))
    assert loop.clock.sleeps == [0.05, 0.05, 1.0]


def test_run_refreshes_again_only_when_the_interval_has_passed(monkeypatch, auth_dir):
    auth_dir.claude()
    loop = Loop(monkeypatch, auth_dir, interval=3.0)
    steps = [nothing, lambda: loop.handles[0]._finish([])] + [nothing] * 3
    loop.run(*steps)
    # Started at 1000; finished and reported on the second turn; due again at 1003.
    assert len(loop.handles) == 2
    assert loop.clock.now >= 1003.0
    assert len(loop.reports) == 1


def test_run_waits_for_a_slow_refresh_past_its_interval(monkeypatch, auth_dir):
    auth_dir.claude()
    loop = Loop(monkeypatch, auth_dir, interval=0.01)
    loop.run(*[nothing] * 5)
    assert len(loop.handles) == 1  # never superseded by the interval alone
    assert loop.reports == []


def test_run_refreshes_at_once_when_the_enabled_set_changes(monkeypatch, auth_dir):
    auth_dir.claude("alice@example.com")
    loop = Loop(monkeypatch, auth_dir)

    def add_account():
        auth_dir.codex("bob@example.com")

    loop.run(nothing, add_account, nothing)
    assert len(loop.handles) == 2
    assert len(loop.started_with[1].accounts) == 2


def test_run_does_not_report_a_superseded_refresh(monkeypatch, auth_dir):
    auth_dir.claude()
    loop = Loop(monkeypatch, auth_dir)
    loop.run(nothing, lambda: loop.handles[0]._supersede(), nothing)
    assert loop.reports == []
    assert len(loop.handles) == 1


def test_run_ignores_a_changed_file_that_keeps_the_enabled_set(monkeypatch, auth_dir):
    path = auth_dir.claude()
    loop = Loop(monkeypatch, auth_dir)

    def touch():
        os.utime(path, ns=(1, 1))

    loop.run(nothing, touch, nothing)
    assert len(loop.handles) == 1


def test_run_logs_a_missing_directory_and_starts_nothing(monkeypatch, tmp_path, caplog):
    loop = Loop(monkeypatch, tmp_path / "missing")
    with caplog.at_level(logging.ERROR, logger="oauth_usage_tracker"):
        loop.run(nothing, nothing)
    assert loop.handles == []
    assert any("missing" in record.getMessage() for record in caplog.records)
    assert loop.clock.sleeps == [1.0, 1.0]


def test_run_starts_once_the_directory_appears(monkeypatch, tmp_path):
    directory = tmp_path / "auth"
    loop = Loop(monkeypatch, directory)

    def create():
        directory.mkdir()

    loop.run(nothing, create, nothing)
    assert len(loop.handles) == 1
    assert loop.started_with[0].accounts == ()
