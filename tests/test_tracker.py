"""OAuthUsageTracker (SPEC §4, §4a): generations, published state, listeners, filtering, lifetime.

Most tests inject fetchers that wait on threading.Events, so every interleaving is forced, never
slept into. A few run the real fetchers against the loopback FakeProviders server.
"""
import logging
import threading
from datetime import datetime, timezone

import pytest
from freezegun import freeze_time
from support import wait_for

import oauth_usage_tracker.tracker as module
from oauth_usage_tracker import demo
from oauth_usage_tracker.accounts import discover_accounts
from oauth_usage_tracker.config import Settings
from oauth_usage_tracker.errors import ProviderError, RefreshSuperseded
from oauth_usage_tracker.models import (AccountState, AccountUsage, AuthAccount, Provider,
                                        UsageWindow)

WAIT = 10.0  # seconds; only reached when a test is about to fail
PAST = datetime(2001, 1, 1, tzinfo=timezone.utc)
FUTURE = datetime(2099, 1, 1, tzinfo=timezone.utc)
WINDOW = UsageWindow(key="five_hour", title="5-hour", used_percent=10.0)


def account(email, provider=Provider.CODEX, expired=FUTURE, disabled=False, name=None):
    name = name or "%s-%s.json" % (provider.value, email)
    return AuthAccount(id=name, provider=provider, email=email, display_name=email,
                       path="/nonexistent/" + name, expired=expired, is_disabled=disabled)


class GatedFetcher:
    """A fetcher that records each call, signals that it started and, for gated account ids,
    waits for the test to release it; `raises` maps an account id to what it raises."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = []
        self.started = {}
        self.gates = {}
        self.raises = {}

    def gate(self, acct):
        self.started[acct.id] = threading.Event()
        self.gates[acct.id] = threading.Event()
        return self.gates[acct.id]

    def __call__(self, acct, session, settings):
        with self.lock:
            self.calls.append(acct.id)
        if acct.id in self.started:
            self.started[acct.id].set()
        if acct.id in self.gates:
            assert self.gates[acct.id].wait(WAIT), "test never released %s" % acct.id
        if acct.id in self.raises:
            raise self.raises[acct.id]
        return AccountUsage(id=acct.id, provider=acct.provider, email=acct.email,
                            windows=(WINDOW,), updated_at=datetime.now(timezone.utc))


class Recorder:
    """A listener that keeps every published state."""

    def __init__(self):
        self.lock = threading.Lock()
        self.states = []

    def __call__(self, accounts, is_refreshing):
        with self.lock:
            self.states.append((list(accounts), is_refreshing))


def make_tracker(fetcher, workers=4, **kwargs):
    return module.OAuthUsageTracker(workers=workers, environ={},
                                    fetchers={Provider.CODEX: fetcher, Provider.CLAUDE: fetcher},
                                    **kwargs)


def tracker_threads():
    return [t for t in threading.enumerate() if t.name.startswith("oauth-usage") and t.is_alive()]


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Each test starts without tracker threads, so a leak is blamed on the test that made it."""
    assert tracker_threads() == []
    yield


# --- generations ------------------------------------------------------------------------------

def test_refresh_superseded_generation_never_publishes():
    fetcher = GatedFetcher()
    old = [account("a1@example.com"), account("a2@example.com")]
    new = [account("b1@example.com"), account("b2@example.com")]
    for acct in old:
        fetcher.gate(acct)
    recorder = Recorder()
    # Two workers, both busy with A: B's fetches run only after A's have returned and A's
    # completion callbacks have run in those same threads, so B publishing means A is done.
    with make_tracker(fetcher, workers=2) as tracker:
        tracker.subscribe(recorder)
        handle_a = tracker.refresh(old, [])
        for acct in old:
            assert fetcher.started[acct.id].wait(WAIT)
        handle_b = tracker.refresh(new, [])
        with pytest.raises(RefreshSuperseded):
            handle_a.result(timeout=0)
        for acct in old:
            fetcher.gates[acct.id].set()
        result_b = handle_b.result(timeout=WAIT)

        assert [u.id for u in result_b] == [a.id for a in new]
        assert all(not u.is_loading and u.windows == (WINDOW,) for u in result_b)
        assert tracker.accounts == result_b
        assert tracker.is_refreshing is False
        with pytest.raises(RefreshSuperseded):
            handle_a.result(timeout=0)
        assert handle_a.superseded and not handle_b.superseded
    old_ids = {a.id for a in old}
    assert sorted(fetcher.calls) == sorted(old_ids | {a.id for a in new})
    for accounts, _ in recorder.states:
        # A's placeholders were published before B started; A's results never are.
        assert not any(u.id in old_ids and not u.is_loading for u in accounts)
    assert recorder.states[-1] == (result_b, False)


def test_refresh_superseded_pending_fetches_are_cancelled():
    fetcher = GatedFetcher()
    old = [account("a1@example.com"), account("a2@example.com"), account("a3@example.com")]
    new = [account("b1@example.com")]
    first = fetcher.gate(old[0])
    with make_tracker(fetcher, workers=1) as tracker:
        handle_a = tracker.refresh(old, [])
        assert fetcher.started[old[0].id].wait(WAIT)
        handle_b = tracker.refresh(new, [])
        first.set()
        result = handle_b.result(timeout=WAIT)
        with pytest.raises(RefreshSuperseded):
            handle_a.result(timeout=0)
    assert [u.id for u in result] == [new[0].id]
    # The one that was running finished; the two queued behind it never ran.
    assert fetcher.calls == [old[0].id, new[0].id]


def test_refresh_submits_one_worker_per_pool_thread_not_one_future_per_account():
    fetcher = GatedFetcher()
    accounts = [account("a%03d@example.com" % i) for i in range(60)]
    first = fetcher.gate(accounts[0])
    with make_tracker(fetcher, workers=3) as tracker:
        handle = tracker.refresh(accounts, [])
        assert fetcher.started[accounts[0].id].wait(WAIT)
        # Memory stays flat in the number of accounts: three workers drain one iterator.
        assert len(tracker._futures) == 3
        first.set()
        result = handle.result(timeout=WAIT)
    assert sorted(u.id for u in result) == sorted(a.id for a in accounts)
    assert sorted(fetcher.calls) == sorted(a.id for a in accounts)  # each one fetched once


def test_refresh_superseded_workers_stop_taking_accounts():
    fetcher = GatedFetcher()
    old = [account("a%02d@example.com" % i) for i in range(20)]
    new = [account("b@example.com")]
    gates = [fetcher.gate(acct) for acct in old[:2]]
    with make_tracker(fetcher, workers=2) as tracker:
        handle_a = tracker.refresh(old, [])
        for acct in old[:2]:
            assert fetcher.started[acct.id].wait(WAIT)
        handle_b = tracker.refresh(new, [])
        for gate in gates:
            gate.set()
        assert [u.id for u in handle_b.result(timeout=WAIT)] == [new[0].id]
        assert handle_a.superseded
    # The two running fetches finished; the 18 accounts behind them were never fetched.
    assert sorted(fetcher.calls) == sorted([old[0].id, old[1].id, new[0].id])


def test_refresh_publishes_loading_placeholders_before_results():
    fetcher = GatedFetcher()
    accounts = [account("x@example.com"), account("y@example.com", Provider.CLAUDE)]
    gates = [fetcher.gate(a) for a in accounts]
    recorder = Recorder()
    with make_tracker(fetcher) as tracker:
        tracker.subscribe(recorder)
        handle = tracker.refresh([accounts[0]], [accounts[1]])
        assert tracker.is_refreshing is True
        placeholders = tracker.accounts
        assert [(u.id, u.is_loading, u.windows, u.error) for u in placeholders] == [
            (accounts[1].id, True, (), None), (accounts[0].id, True, (), None)]
        assert recorder.states == [(placeholders, True)]
        assert not handle.done()
        for gate in gates:
            gate.set()
        result = handle.result(timeout=WAIT)
    assert [u.is_loading for u in result] == [False, False]
    assert recorder.states == [(placeholders, True), (result, False)]


def test_refresh_result_times_out_while_fetches_run():
    fetcher = GatedFetcher()
    acct = account("slow@example.com")
    gate = fetcher.gate(acct)
    with make_tracker(fetcher) as tracker:
        handle = tracker.refresh([acct], [])
        with pytest.raises(module.FutureTimeout):
            handle.result(timeout=0.01)
        gate.set()
        assert [u.id for u in handle.result(timeout=WAIT)] == [acct.id]


# --- filtering --------------------------------------------------------------------------------

def test_refresh_disabled_and_expired_accounts_are_not_fetched():
    fetcher = GatedFetcher()
    kept = account("kept@example.com")
    disabled = account("off@example.com", disabled=True)
    expired = account("old@example.com", Provider.CLAUDE, expired=PAST)
    unknown_expiry = account("unknown@example.com", Provider.CLAUDE, expired=None)
    with make_tracker(fetcher) as tracker:
        result = tracker.refresh_and_wait([kept, disabled], [expired, unknown_expiry])
    assert sorted(fetcher.calls) == sorted([kept.id, unknown_expiry.id])
    assert [u.id for u in result] == [unknown_expiry.id, kept.id]


def test_refresh_include_expired_lets_expired_accounts_through_but_not_disabled():
    fetcher = GatedFetcher()
    expired = account("old@example.com", Provider.CLAUDE, expired=PAST)
    disabled_expired = account("gone@example.com", Provider.CLAUDE, expired=PAST, disabled=True)
    with make_tracker(fetcher, include_expired=True) as tracker:
        result = tracker.refresh_and_wait([], [expired, disabled_expired])
    assert fetcher.calls == [expired.id]
    assert [u.id for u in result] == [expired.id]


def test_refresh_expiry_is_evaluated_when_refresh_starts():
    fetcher = GatedFetcher()
    acct = account("edge@example.com", expired=datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc))
    with make_tracker(fetcher) as tracker:
        with freeze_time("2026-05-01T11:59:59Z"):
            handle = tracker.refresh([acct], [])
        assert [u.id for u in handle.result(timeout=WAIT)] == [acct.id]
        with freeze_time("2026-05-01T12:00:00Z"):  # expired <= now counts as expired
            handle = tracker.refresh([acct], [])
        assert handle.result(timeout=WAIT) == []
    assert fetcher.calls == [acct.id]


def test_refresh_nothing_left_publishes_empty_list_not_refreshing():
    fetcher = GatedFetcher()
    recorder = Recorder()
    with make_tracker(fetcher) as tracker:
        tracker.refresh_and_wait([account("a@example.com")], [])
        tracker.subscribe(recorder)
        handle = tracker.refresh([account("off@example.com", disabled=True)],
                                 [account("old@example.com", Provider.CLAUDE, expired=PAST)])
        assert handle.done()
        assert handle.result(timeout=0) == []
        assert tracker.accounts == []
        assert tracker.is_refreshing is False
        assert tracker.refresh_and_wait([], []) == []
    assert recorder.states == [([], False), ([], False)]
    assert fetcher.calls == ["codex-a@example.com.json"]


def test_refresh_nothing_left_supersedes_one_in_flight():
    fetcher = GatedFetcher()
    acct = account("a@example.com")
    gate = fetcher.gate(acct)
    recorder = Recorder()
    with make_tracker(fetcher) as tracker:
        tracker.subscribe(recorder)
        first = tracker.refresh([acct], [])
        assert tracker.is_refreshing is True
        second = tracker.refresh([], [])
        assert tracker.is_refreshing is False and tracker.accounts == []
        with pytest.raises(RefreshSuperseded):
            first.result(timeout=0)
        assert second.result(timeout=0) == []
        gate.set()
    # close() waited for the running fetch; its result was dropped.
    assert recorder.states[-1] == ([], False)
    assert tracker.accounts == []


# --- ordering ---------------------------------------------------------------------------------

def test_refresh_sorts_by_provider_then_email_case_insensitively():
    fetcher = GatedFetcher()
    claude = [account(e, Provider.CLAUDE) for e in ("bob@example.com", "Alice@example.com",
                                                     "carol@example.com")]
    codex = [account(e) for e in ("Zed@example.com", "adam@example.com")]
    with make_tracker(fetcher) as tracker:
        result = tracker.refresh_and_wait(codex, claude)
    assert [(u.provider, u.email) for u in result] == [
        (Provider.CLAUDE, "Alice@example.com"), (Provider.CLAUDE, "bob@example.com"),
        (Provider.CLAUDE, "carol@example.com"), (Provider.CODEX, "adam@example.com"),
        (Provider.CODEX, "Zed@example.com")]


# --- listeners --------------------------------------------------------------------------------

def test_subscribe_listener_that_raises_is_logged_and_others_still_called(caplog):
    fetcher = GatedFetcher()
    recorder = Recorder()

    def broken(accounts, is_refreshing):
        raise ValueError("listener bug")

    with make_tracker(fetcher) as tracker:
        tracker.subscribe(broken)
        tracker.subscribe(recorder)
        with caplog.at_level(logging.ERROR, logger="oauth_usage_tracker.tracker"):
            result = tracker.refresh_and_wait([account("a@example.com")], [])
        assert tracker.accounts == result
        assert tracker.is_refreshing is False
    assert [state[1] for state in recorder.states] == [True, False]
    assert recorder.states[-1] == (result, False)
    raised = [r for r in caplog.records if r.name == "oauth_usage_tracker.tracker"
              and r.levelno >= logging.ERROR]
    assert len(raised) == 2 and all(r.exc_info for r in raised)


def test_subscribe_unsubscribe_stops_calls():
    fetcher = GatedFetcher()
    kept, dropped = Recorder(), Recorder()
    with make_tracker(fetcher) as tracker:
        tracker.subscribe(kept)
        unsubscribe = tracker.subscribe(dropped)
        tracker.refresh_and_wait([account("a@example.com")], [])
        unsubscribe()
        unsubscribe()  # a second call is harmless
        tracker.refresh_and_wait([account("b@example.com")], [])
    assert len(dropped.states) == 2
    assert len(kept.states) == 4
    assert [u.email for u in kept.states[-1][0]] == ["b@example.com"]


def test_subscribe_listener_may_read_tracker_state():
    fetcher = GatedFetcher()
    seen = []
    with make_tracker(fetcher) as tracker:
        tracker.subscribe(lambda accounts, refreshing: seen.append(
            (tracker.accounts == accounts, tracker.is_refreshing == refreshing)))
        tracker.refresh_and_wait([account("a@example.com")], [])
    assert seen == [(True, True), (True, True)]


# --- blocking use from many threads -----------------------------------------------------------

def test_refresh_and_wait_from_several_threads_each_return_full_sorted_list():
    fetcher = GatedFetcher()
    codex = [account("c%d@example.com" % i) for i in range(5)]
    claude = [account("Claude%d@example.com" % i, Provider.CLAUDE) for i in range(3)]
    expected = sorted([a.id for a in claude]) + sorted([a.id for a in codex])
    threads_count, rounds = 6, 15
    with make_tracker(fetcher, workers=3) as tracker:
        for _ in range(rounds):
            barrier = threading.Barrier(threads_count)
            results, failures = [], []

            def run():
                try:
                    barrier.wait(WAIT)
                    results.append(tracker.refresh_and_wait(codex, claude))
                except BaseException as error:  # noqa: B902 - reported below
                    failures.append(error)

            threads = [threading.Thread(target=run) for _ in range(threads_count)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WAIT)
            assert not any(thread.is_alive() for thread in threads)
            assert failures == []
            assert len(results) == threads_count
            for result in results:
                assert [u.id for u in result] == expected
                assert all(not u.is_loading and u.windows == (WINDOW,) for u in result)
            assert tracker.is_refreshing is False
            assert [u.id for u in tracker.accounts] == expected


# --- errors inside a fetch --------------------------------------------------------------------

def test_refresh_unexpected_fetcher_exception_becomes_that_accounts_error(caplog):
    fetcher = GatedFetcher()
    bad, good = account("bad@example.com"), account("good@example.com", Provider.CLAUDE)
    known = account("known@example.com")
    fetcher.raises[bad.id] = ZeroDivisionError("secret-detail-abc123")
    fetcher.raises[known.id] = ProviderError("Codex usage API returned 502")
    with caplog.at_level(logging.DEBUG, logger="oauth_usage_tracker"):
        with make_tracker(fetcher) as tracker:
            result = tracker.refresh_and_wait([bad, known], [good])
    by_id = {u.id: u for u in result}
    assert len(result) == 3
    assert by_id[good.id].error is None and by_id[good.id].windows == (WINDOW,)
    assert by_id[known.id].error == "Codex usage API returned 502"
    assert by_id[known.id].windows == () and not by_id[known.id].is_loading
    error = by_id[bad.id].error
    assert error and "ZeroDivisionError" in error
    assert "secret-detail-abc123" not in error
    assert by_id[bad.id].windows == () and not by_id[bad.id].is_loading
    assert any(bad.id in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_refresh_every_result_and_left_out_account_carries_a_state(tmp_path):
    """The library path decides each state (outcome.py), whatever the fetcher returns: a
    fetcher's result without a state, a failure, a 429, an unexpected exception."""
    fetcher = GatedFetcher()
    fine, down, limited, odd = (account(name + "@example.com")
                                for name in ("fine", "down", "limited", "odd"))
    off = account("off@example.com", disabled=True)
    late = account("late@example.com", expired=PAST)
    fetcher.raises[down.id] = ProviderError("Codex usage API returned 502", status=502)
    fetcher.raises[limited.id] = ProviderError("Codex usage API returned 429", status=429)
    fetcher.raises[odd.id] = ZeroDivisionError()
    with make_tracker(fetcher, state_dir=tmp_path / "state") as tracker:
        handle = tracker.refresh([fine, down, limited, odd, off, late])
        states = {u.id: u.state for u in handle.result(WAIT)}
        again = {u.id: u.state for u in tracker.refresh_and_wait([limited])}
    assert states == {fine.id: AccountState.OK, down.id: AccountState.ERROR,
                      limited.id: AccountState.RATE_LIMITED, odd.id: AccountState.ERROR}
    assert {s.id: s.state for s in handle.skipped} == {off.id: AccountState.DISABLED,
                                                        late.id: AccountState.EXPIRED}
    assert again == {limited.id: AccountState.RATE_LIMITED}  # cooling down: not asked
    assert fetcher.calls.count(limited.id) == 1


def test_refresh_nobody_listens_to_makes_placeholders_only_for_a_reader(monkeypatch):
    fetcher = GatedFetcher()
    accounts = [account("x@example.com"), account("y@example.com", Provider.CLAUDE)]
    gates = [fetcher.gate(a) for a in accounts]
    made = []
    real = module.placeholders
    monkeypatch.setattr(module, "placeholders", lambda loading: made.append(1) or real(loading))
    with make_tracker(fetcher) as tracker:
        handle = tracker.refresh([accounts[0]], [accounts[1]])
        assert made == [] and tracker.is_refreshing is True
        # What a listener would have been given, made by the first reader, once.
        assert [(u.id, u.provider, u.email, u.is_loading, u.windows) for u in tracker.accounts] \
            == [(accounts[1].id, Provider.CLAUDE, "y@example.com", True, ()),
                (accounts[0].id, Provider.CODEX, "x@example.com", True, ())]
        assert tracker.accounts == tracker.accounts and made == [1]
        for gate in gates:
            gate.set()
        result = handle.result(timeout=WAIT)
        assert tracker.accounts == result and not tracker.is_refreshing
        # A refresh whose results come before anyone reads: no placeholder is ever made.
        assert [u.id for u in tracker.refresh_and_wait(accounts, [])] == [
            accounts[1].id, accounts[0].id]
    assert made == [1]


def test_placeholders_of_a_superseded_refresh_are_not_published():
    fetcher = GatedFetcher()
    tracker = make_tracker(fetcher)
    try:
        with tracker._lock:
            generation = tracker._generation
            tracker._generation += 1  # a newer refresh got in before the placeholders
        tracker._publish_loading(generation, [account("x@example.com")])
        assert tracker.accounts == [] and tracker.is_refreshing is False
    finally:
        tracker.close()

# --- lifetime ---------------------------------------------------------------------------------

def test_close_leaves_no_tracker_threads_and_refuses_refresh():
    fetcher = GatedFetcher()
    tracker = make_tracker(fetcher)
    tracker.refresh_and_wait([account("a%d@example.com" % i) for i in range(4)], [])
    assert tracker_threads() != []
    tracker.close()
    assert tracker_threads() == []
    tracker.close()  # idempotent
    with pytest.raises(RuntimeError):
        tracker.refresh([account("a@example.com")], [])
    with pytest.raises(RuntimeError):
        tracker.refresh_and_wait([account("a@example.com")], [])


def test_context_manager_leaves_no_tracker_threads():
    fetcher = GatedFetcher()
    with make_tracker(fetcher) as tracker:
        tracker.refresh_and_wait([account("a%d@example.com" % i) for i in range(3)], [])
        assert tracker_threads() != []
    assert tracker_threads() == []
    with pytest.raises(RuntimeError):
        tracker.refresh([], [])


def test_close_waits_for_running_fetch_and_supersedes_its_refresh():
    fetcher = GatedFetcher()
    running, queued = account("run@example.com"), account("queued@example.com")
    gate = fetcher.gate(running)
    tracker = make_tracker(fetcher, workers=1)
    handle = tracker.refresh([running, queued], [])
    assert fetcher.started[running.id].wait(WAIT)
    closer = threading.Thread(target=tracker.close)
    closer.start()
    with pytest.raises(RefreshSuperseded):
        handle.result(timeout=WAIT)
    assert closer.is_alive()  # still waiting for the running fetch
    gate.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert fetcher.calls == [running.id]
    assert tracker_threads() == []
    assert all(u.is_loading for u in tracker.accounts)  # nothing of the closed run published


def test_close_racing_a_starting_refresh_leaves_no_threads():
    """Timeline: thread R's refresh() has passed the closed check and is publishing its
    placeholders when thread C calls close(). R must not then start a pool nobody shuts down."""
    fetcher = GatedFetcher()
    tracker = make_tracker(fetcher)
    in_publish, closed = threading.Event(), threading.Event()

    def listener(accounts, is_refreshing):
        if is_refreshing:
            in_publish.set()
            assert closed.wait(WAIT)

    tracker.subscribe(listener)
    outcome = []

    def refresher():
        try:
            outcome.append(tracker.refresh([account("a@example.com")], []))
        except RuntimeError as error:
            outcome.append(error)

    thread = threading.Thread(target=refresher)
    thread.start()
    try:
        assert in_publish.wait(WAIT)
        tracker.close()
        closed.set()
        thread.join(WAIT)
        assert not thread.is_alive()
        if isinstance(outcome[0], module.RefreshHandle):
            with pytest.raises(RefreshSuperseded):
                outcome[0].result(timeout=WAIT)
        assert tracker_threads() == []
    finally:
        closed.set()
        thread.join(WAIT)
        # Clean up after a failure here so that later tests are not blamed for the leak.
        if tracker._pool is not None:
            tracker._pool.shutdown(wait=True)
        if tracker._session is not None:
            tracker._session.close()


# --- against the loopback fake ----------------------------------------------------------------

@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with demo.FakeProviders() as server:
        yield server


def test_refresh_and_wait_reuses_connections_against_fake(fake, tmp_path):
    directory = tmp_path / "auth"
    directory.mkdir()
    demo.populate(fake, str(directory), claude=0, codex=40)
    found = discover_accounts(str(directory))
    assert len(found.codex) == 40
    with module.OAuthUsageTracker(settings=Settings.from_environ(fake.environ(), workers=4)) \
            as tracker:
        result = tracker.refresh_and_wait(found.codex, found.claude)
    assert len(result) == 40
    assert [u.error for u in result] == [None] * 40
    assert all(len(u.windows) == 2 for u in result)
    assert fake.count(demo.CODEX_PATH) == 40
    print("connections for 40 accounts with 4 workers: %d" % fake.connections)
    assert 1 <= fake.connections <= 4


def test_refresh_and_wait_demo_cast_against_fake(fake, tmp_path):
    directory = tmp_path / "auth"
    directory.mkdir()
    demo.create_demo_accounts(fake, str(directory))
    found = discover_accounts(str(directory))
    settings = Settings.from_environ(fake.environ(), include_expired=True)
    with module.OAuthUsageTracker(settings=settings) as tracker:
        result = tracker.refresh_and_wait(found.codex, found.claude)
    assert [(u.provider.value, u.email) for u in result] == [
        ("claude", "alice@example.com"), ("claude", "Carol@example.com"),
        ("codex", "dave@example.com"), ("codex", "erin@example.com"),
        ("codex", "frank@example.com")]
    by_email = {u.email: u for u in result}
    assert by_email["Carol@example.com"].token_refreshed is True
    assert by_email["Carol@example.com"].windows and by_email["Carol@example.com"].error is None
    assert by_email["alice@example.com"].token_refreshed is False
    assert "Cloudflare" in by_email["frank@example.com"].error
    assert fake.count(demo.TOKEN_PATH) == 1


def test_refresh_default_filter_skips_expired_against_fake(fake, tmp_path):
    directory = tmp_path / "auth"
    directory.mkdir()
    demo.create_demo_accounts(fake, str(directory))
    found = discover_accounts(str(directory))
    with module.OAuthUsageTracker(settings=Settings.from_environ(fake.environ())) as tracker:
        result = tracker.refresh_and_wait(found.codex, found.claude)
    assert "Carol@example.com" not in [u.email for u in result]
    assert "old@example.com" not in [u.email for u in result]
    assert len(result) == 4
    assert fake.count(demo.TOKEN_PATH) == 0


def test_refresh_handle_wait_returns_false_until_published_or_superseded_then_true():
    published, superseded = module.RefreshHandle(1), module.RefreshHandle(2)
    assert published.wait(0) is False and superseded.wait(0.01) is False
    published._finish([])
    superseded._supersede()
    assert published.wait(0) is True and superseded.wait() is True
    assert published.result() == []


def test_sort_by_key_gives_sort_keys_order_ties_included():
    emails = ["B@x", "a@x", None, "b@x", "A@x"]
    usages = [AccountUsage(id="%s-%d.json" % (provider.value, index % 3), provider=provider,
                           email=emails[index % len(emails)], source=source)
              for index in range(30) for provider in Provider for source in ("local", "h:443")]
    usages = usages[::7] + usages[1::7] + usages[3::7] + usages[2::7] + usages[5::7] + \
        usages[4::7] + usages[6::7]
    expected = sorted(usages, key=module.sort_key)
    module.sort_by_key(usages)
    assert [id(usage) for usage in usages] == [id(usage) for usage in expected]


# --- starting the workers ---------------------------------------------------------------------

class HeldPool:
    """Wraps the tracker's pool: its second submit() waits for the test (as starting a thread
    under load may take a while), and with `shut` every submit from the second on raises as a
    pool that close() shut down does, once the first worker has ended (so the count of workers
    left has already gone down when the submitting thread counts the ones it never started)."""

    def __init__(self, pool, shut=False):
        self.pool = pool
        self.shut = shut
        self.submits = 0
        self.workers = None
        self.release = threading.Event()
        self.held = threading.Event()

    def submit(self, fn, batch):
        self.submits += 1
        if self.workers is None:
            self.workers = batch.workers
        if self.submits >= 2:
            if self.shut:
                assert wait_for(lambda: batch.workers < self.workers)  # the first one ended
                raise RuntimeError("cannot schedule new futures after shutdown")
            self.held.set()
            assert self.release.wait(WAIT), "test never released the second submit"
        return self.pool.submit(fn, batch)

    def __getattr__(self, name):
        return getattr(self.pool, name)


def hold_pool(tracker, monkeypatch, shut=False):
    real = tracker._ensure_pool_locked
    holder = {}

    def ensure():
        if "pool" not in holder:
            holder["pool"] = HeldPool(real(), shut)
        return holder["pool"]
    monkeypatch.setattr(tracker, "_ensure_pool_locked", ensure)
    return holder


def test_the_first_worker_fetches_while_later_workers_are_still_being_started(monkeypatch):
    fetcher = GatedFetcher()
    accounts = [account("w%d@example.com" % n) for n in range(3)]
    with make_tracker(fetcher, workers=3) as tracker:
        holder = hold_pool(tracker, monkeypatch)
        done = {}
        starter = threading.Thread(target=lambda: done.setdefault("handle",
                                                                  tracker.refresh(accounts)))
        starter.start()
        pool = None
        try:
            assert wait_for(lambda: "pool" in holder)
            pool = holder["pool"]
            assert pool.held.wait(WAIT)
            # The second submit is still held, and the first worker already fetched every
            # account: it never waited for the thread that starts the others.
            assert wait_for(lambda: len(fetcher.calls) == 3)
        finally:
            if pool is not None:
                pool.release.set()
            starter.join(WAIT)
        result = done["handle"].result(timeout=WAIT)
    assert sorted(u.id for u in result) == sorted(a.id for a in accounts)
    assert sorted(fetcher.calls) == sorted(a.id for a in accounts)  # each fetched once


def test_workers_that_cannot_be_submitted_count_as_finished_and_the_batch_ends_once(
        monkeypatch, caplog):
    fetcher = GatedFetcher()
    accounts = [account("s%d@example.com" % n) for n in range(4)]
    recorder = Recorder()
    with make_tracker(fetcher, workers=4) as tracker:
        tracker.subscribe(recorder)
        hold_pool(tracker, monkeypatch, shut=True)
        with caplog.at_level(logging.WARNING, logger="oauth_usage_tracker"):
            result = tracker.refresh(accounts).result(timeout=WAIT)
    # Not closed: a thread that would not start, said once.
    assert [r.getMessage() for r in caplog.records] == [
        "Fetching with 1 of 4 workers: cannot schedule new futures after shutdown"]
    assert sorted(u.id for u in result) == sorted(a.id for a in accounts)
    assert sorted(fetcher.calls) == sorted(a.id for a in accounts)
    finished = [accounts for accounts, refreshing in recorder.states if not refreshing]
    assert len(finished) == 1 and [u.id for u in finished[0]] == [u.id for u in result]


def test_close_while_workers_are_being_started_ends_the_batch_superseded(monkeypatch):
    fetcher = GatedFetcher()
    accounts = [account("c%d@example.com" % n) for n in range(3)]
    first = fetcher.gate(accounts[0])
    tracker = make_tracker(fetcher, workers=3)
    holder = hold_pool(tracker, monkeypatch)
    done = {}
    starter = threading.Thread(target=lambda: done.setdefault("handle", tracker.refresh(accounts)))
    starter.start()
    assert wait_for(lambda: "pool" in holder)
    assert holder["pool"].held.wait(WAIT) and fetcher.started[accounts[0].id].wait(WAIT)
    closer = threading.Thread(target=tracker.close)
    closer.start()
    assert wait_for(lambda: tracker._closed)
    holder["pool"].shut = True  # the held submit, and any after it, find the pool shut down
    holder["pool"].release.set()
    first.set()
    starter.join(WAIT)
    closer.join(WAIT)
    assert not starter.is_alive() and not closer.is_alive()
    with pytest.raises(RefreshSuperseded):
        done["handle"].result(timeout=WAIT)
    assert fetcher.calls == [accounts[0].id]  # nothing started after close()


def test_no_worker_at_all_is_an_error_of_the_refresh(monkeypatch):
    fetcher = GatedFetcher()
    with make_tracker(fetcher, workers=2) as tracker:
        real = tracker._ensure_pool_locked

        def ensure():
            pool = real()

            class NoThreads:
                def submit(self, fn, batch):
                    raise RuntimeError("can't start new thread")

                def __getattr__(self, name):
                    return getattr(pool, name)
            return NoThreads()
        monkeypatch.setattr(tracker, "_ensure_pool_locked", ensure)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            tracker.refresh([account("n1@example.com"), account("n2@example.com")])
    assert fetcher.calls == []


def test_a_new_state_entry_that_cannot_be_kept_costs_only_its_state(tmp_path, monkeypatch,
                                                                      caplog):
    from oauth_usage_tracker import state
    fetcher = GatedFetcher()
    accounts = [account("k%d@example.com" % n) for n in range(4)]
    real_add = state.Spool.add

    def add(self, key, entry):
        if key[1] == accounts[1].id:
            raise ValueError("year 10000 is out of range")
        real_add(self, key, entry)
    monkeypatch.setattr(state.Spool, "add", add)
    with caplog.at_level(logging.WARNING, logger="oauth_usage_tracker"):
        with make_tracker(fetcher, workers=1, state_dir=str(tmp_path / "state")) as tracker:
            result = tracker.refresh_and_wait(accounts)
    assert sorted(u.id for u in result) == sorted(a.id for a in accounts)  # none lost
    assert ["Cannot keep the state of %s (year 10000 is out of range)" % accounts[1].id] == [
        r.getMessage() for r in caplog.records]
    stored = state.StateStore(str(tmp_path / "state")).load()
    assert sorted(key[1] for key in stored) == sorted(a.id for n, a in enumerate(accounts)
                                                      if n != 1)
