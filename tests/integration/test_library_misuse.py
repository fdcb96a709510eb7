"""The library under misuse (SPEC §12): a real `os.fork()` after the tracker ran (and while it
runs), and listeners that raise anything, `SystemExit` and `KeyboardInterrupt` included, against
the real loopback fake of both providers.
"""
import json
import os
import select
import signal
import threading
import time

import pytest

from oauth_usage_tracker import OAuthUsageTracker, demo, discover_accounts
from oauth_usage_tracker.errors import RefreshSuperseded

pytestmark = pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")


@pytest.fixture
def found(fake, auth_dir):
    demo.populate(fake, str(auth_dir), claude=2, codex=2)
    return discover_accounts(str(auth_dir))


def _tracker(fake, **kwargs):
    return OAuthUsageTracker(environ=fake.environ(), state_dir=None, workers=2, timeout=5,
                             **kwargs)


def _in_child(body, timeout=30.0):
    """Fork; run body() in the child (its JSON-able result comes back through a pipe, an alarm
    kills a child that hangs); return what the child sent, or fail on a hang or crash."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            signal.alarm(int(timeout))
            result = body()
            os.write(write_end, json.dumps(result).encode())
            status = 0
        except BaseException as error:  # reported to the parent, which fails the test
            os.write(write_end, json.dumps({"raised": repr(error)}).encode())
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + timeout + 5
    while time.monotonic() < deadline:
        ready, _, _ = select.select([read_end], [], [], 0.5)
        if ready:
            data = os.read(read_end, 65536)
            if not data:
                break
            chunks.append(data)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), "the child died by signal %s" % os.WTERMSIG(status)
    result = json.loads(b"".join(chunks) or b"null")
    assert os.WEXITSTATUS(status) == 0, result
    return result


def _summary(results):
    return sorted((usage.id, usage.error is None and bool(usage.windows)) for usage in results)


def test_child_refreshes_after_the_parent_did(fake, found):
    with _tracker(fake) as tracker:
        parent = tracker.refresh_and_wait(found.codex, found.claude)
        assert all(ok for _, ok in _summary(parent))

        def child():
            started = time.monotonic()
            results = tracker.refresh_and_wait(found.codex, found.claude)
            again = tracker.refresh_and_wait(found.codex, found.claude)
            tracker.close()
            return {"first": _summary(results), "again": _summary(again),
                    "seconds": time.monotonic() - started}
        result = _in_child(child)
        assert [ok for _, ok in result["first"]] == [True] * 4
        assert [ok for _, ok in result["again"]] == [True] * 4
        assert result["seconds"] < 20
        # The parent's tracker is untouched by the child.
        assert all(ok for _, ok in _summary(tracker.refresh_and_wait(found.codex, found.claude)))


def test_child_forked_during_a_refresh_supersedes_it_and_refreshes(fake, found):
    """A pool worker is inside the final publish (holding the publish lock) at the fork."""
    entered, gate = threading.Event(), threading.Event()

    def slow_listener(accounts, loading):
        if not loading:
            entered.set()
            gate.wait(10)

    with _tracker(fake) as tracker:
        tracker.subscribe(slow_listener)
        handle = tracker.refresh(found.codex, found.claude)
        assert entered.wait(20)

        def child():
            try:
                handle.result(timeout=5)
                inherited = "finished"
            except RefreshSuperseded:
                inherited = "superseded"
            results = tracker.refresh_and_wait(found.codex, found.claude)
            return {"inherited": inherited, "results": _summary(results)}
        try:
            result = _in_child(child)
        finally:
            gate.set()
        assert result["inherited"] in ("superseded", "finished")
        assert [ok for _, ok in result["results"]] == [True] * 4
        assert len(handle.result(timeout=20)) == 4


@pytest.mark.parametrize("raised", [SystemExit(3), KeyboardInterrupt(), GeneratorExit(),
                                    RuntimeError("boom")])
def test_listener_raising_anything_never_hurts_the_tracker(raised, fake, found, caplog):
    calls = []

    def listener(accounts, loading):
        calls.append(loading)
        raise raised

    with _tracker(fake) as tracker:
        tracker.subscribe(listener)
        for _ in range(5):  # more refreshes than workers: a killed worker would hang one
            started = time.monotonic()
            results = tracker.refresh_and_wait(found.codex, found.claude)
            assert time.monotonic() - started < 15
            assert [ok for _, ok in _summary(results)] == [True] * 4
        assert calls.count(False) == 5 and calls.count(True) == 5
    assert "A tracker listener raised %s; ignoring it" % type(raised).__name__ in caplog.text
