"""The tracker's events API for legacy code (SPEC §15): the same decisions as the script."""
import queue
import threading
from datetime import datetime, timedelta, timezone

from oauth_usage_tracker.errors import ProviderError
from oauth_usage_tracker.events import EventType, Thresholds
from oauth_usage_tracker.models import AccountUsage, AuthAccount, Provider, UsageWindow
from oauth_usage_tracker.tracker import OAuthUsageTracker

FUTURE = datetime(2099, 1, 1, tzinfo=timezone.utc)
PAST = datetime(2001, 1, 1, tzinfo=timezone.utc)
RESET = datetime.now(timezone.utc) + timedelta(hours=3)


def account(email, expired=FUTURE):
    name = "codex-%s.json" % email
    return AuthAccount(id=name, provider=Provider.CODEX, email=email, display_name=email,
                       path="/nonexistent/" + name, expired=expired)


class ScriptedFetcher:
    """Answers each account from a list of outcomes, one per refresh (the last one repeats):
    a used percentage, or "login" for a rejected login."""

    def __init__(self, **outcomes):
        self.outcomes = {"codex-%s@example.com.json" % name: list(steps)
                         for name, steps in outcomes.items()}
        self.lock = threading.Lock()

    def __call__(self, acct, session, settings):
        with self.lock:
            steps = self.outcomes[acct.id]
            step = steps.pop(0) if len(steps) > 1 else steps[0]
        if step == "login":
            raise ProviderError("Codex token was rejected (401); log in again with CLIProxyAPI",
                                status=401, login_problem=True)
        return AccountUsage(id=acct.id, provider=acct.provider, email=acct.email,
                            windows=(UsageWindow("primary_window", "5-hour", step, RESET),),
                            updated_at=datetime.now(timezone.utc))


def drain(q):
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items


def test_subscribe_events_legacy_code_gets_each_change_once_when_refresh_and_wait_returns(
        tmp_path):
    fetcher = ScriptedFetcher(ann=[50.0, 95.0, 97.0, 97.0], bob=[20.0, "login", "login", 20.0])
    accounts = [account("ann@example.com"), account("bob@example.com")]
    received = queue.Queue()
    with OAuthUsageTracker(fetchers={Provider.CODEX: fetcher}, state_dir=str(tmp_path / "s"),
                           event_thresholds=Thresholds(failing_after=3600)) as tracker:
        tracker.subscribe_events(received.put)
        seen = []
        for _ in range(4):
            tracker.refresh_and_wait(accounts, [])
            seen.append([(e.type.value, e.account_id.split("-")[1][:3]) for e in drain(received)])
    assert seen == [[], [("quota_low", "ann"), ("login_failed", "bob")], [],
                    [("login_recovered", "bob")]]


def test_subscribe_events_memory_is_shared_through_the_state_directory(tmp_path):
    state = str(tmp_path / "s")
    accounts = [account("ann@example.com")]
    for expected in ([EventType.QUOTA_LOW], []):  # a second process: nothing new to say
        received = []
        with OAuthUsageTracker(fetchers={Provider.CODEX: ScriptedFetcher(ann=[95.0])},
                               state_dir=state) as tracker:
            tracker.subscribe_events(received.append)
            tracker.refresh_and_wait(accounts, [])
        assert [event.type for event in received] == expected


def test_subscribe_events_without_state_remembers_in_the_tracker(tmp_path):
    received = []
    with OAuthUsageTracker(fetchers={Provider.CODEX: ScriptedFetcher(ann=[95.0])},
                           state_dir=None) as tracker:
        tracker.subscribe_events(received.append)
        tracker.refresh_and_wait([account("ann@example.com")], [])
        tracker.refresh_and_wait([account("ann@example.com")], [])
    assert [event.type for event in received] == [EventType.QUOTA_LOW]


def test_subscribe_events_raising_callbacks_do_not_stop_others_and_unsubscribe_works(
        tmp_path, caplog):
    received = []

    def exits(event):
        raise SystemExit(3)

    def breaks(event):
        raise RuntimeError("callback bug")
    with OAuthUsageTracker(fetchers={Provider.CODEX: ScriptedFetcher(ann=[95.0, 50.0, 95.0])},
                           state_dir=None) as tracker:
        tracker.subscribe_events(exits)
        tracker.subscribe_events(breaks)
        unsubscribe = tracker.subscribe_events(received.append)
        results = tracker.refresh_and_wait([account("ann@example.com")], [])
        assert results[0].windows[0].used_percent == 95.0
        unsubscribe()
        tracker.refresh_and_wait([account("ann@example.com")], [])
    assert [event.type for event in received] == [EventType.QUOTA_LOW]
    assert caplog.text.count("An event callback raised") == 2


def test_subscribe_events_nothing_decided_without_subscribers(tmp_path):
    with OAuthUsageTracker(fetchers={Provider.CODEX: ScriptedFetcher(ann=[95.0])},
                           state_dir=str(tmp_path / "s")) as tracker:
        tracker.refresh_and_wait([account("ann@example.com")], [])
    assert not (tmp_path / "s" / "events.json").exists()


def test_subscribe_events_accounts_left_out_as_expired_are_announced(tmp_path):
    received = []
    with OAuthUsageTracker(fetchers={Provider.CODEX: ScriptedFetcher(ann=[10.0])},
                           state_dir=None) as tracker:
        tracker.subscribe_events(received.append)
        tracker.refresh_and_wait([account("ann@example.com", expired=PAST)], [])
    [event] = received
    assert (event.type, event.state.value, event.to_json()["error"]) == (
        EventType.LOGIN_FAILED, "expired", "expired")
