"""The pure edge function over sequences of runs, its memory, and the ledger."""
import json
from datetime import datetime, timedelta, timezone

import pytest

from oauth_usage_tracker import event_memory
from oauth_usage_tracker import events as module
from oauth_usage_tracker.events import EventType, Thresholds
from oauth_usage_tracker.models import (AccountState, AccountUsage, Pace, Provider, Skipped,
                                        UsageWindow)
from oauth_usage_tracker.state import StateStore

T0 = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)
RESET = T0 + timedelta(hours=3)
ID = "claude-alice@example.com.json"


def window(used, reset=RESET, key="five_hour", title="5-hour", runs_out=None):
    pace = None if runs_out is None else Pace(50.0, 10.0, None, runs_out)
    return UsageWindow(key, title, used, reset, pace=pace)


def usage(*windows, state=AccountState.OK, error=None, id=ID, email="alice@example.com",
          **extra):
    return AccountUsage(id=id, provider=Provider.CLAUDE, email=email,
                        windows=tuple(windows), error=error, state=state, **extra)


class Runs:
    """Consecutive runs against one memory, as cron would make them."""

    def __init__(self, thresholds=Thresholds()):
        self.memory = {}
        self.thresholds = thresholds

    def __call__(self, now, accounts=(), skipped=()):
        found, self.memory = module.decide(self.memory, list(accounts), list(skipped), now,
                                           self.thresholds)
        # The memory survives a round trip through its JSON (as it does between processes).
        self.memory = event_memory.memory_from_json(json.loads(json.dumps(
            event_memory.memory_to_json(self.memory))))
        return [event.type.value for event in found]


def test_decide_low_lower_reset_low_again_fires_each_change_once():
    runs = Runs()
    assert runs(T0, [usage(window(85.0))]) == []
    assert runs(T0 + timedelta(minutes=5), [usage(window(92.5))]) == ["quota_low"]
    assert runs(T0 + timedelta(minutes=10), [usage(window(97.0))]) == []  # lower: same period
    after = RESET + timedelta(minutes=1)
    assert runs(after, [usage(window(2.0, RESET + timedelta(hours=5)))]) == ["quota_reset"]
    assert runs(after + timedelta(minutes=5),
                [usage(window(3.0, RESET + timedelta(hours=5)))]) == []
    assert runs(after + timedelta(hours=4),
                [usage(window(95.0, RESET + timedelta(hours=5)))]) == ["quota_low"]


def test_decide_flapping_around_threshold_within_one_period_fires_once():
    runs = Runs()
    fired = [runs(T0 + timedelta(minutes=5 * i), [usage(window(used))])
             for i, used in enumerate([91.0, 89.0, 91.0, 88.0, 92.0, 95.0])]
    assert sum(fired, []) == ["quota_low"]


def test_decide_reset_moment_drifting_by_seconds_is_the_same_period():
    runs = Runs()
    assert runs(T0, [usage(window(95.0, RESET))]) == ["quota_low"]
    assert runs(T0 + timedelta(minutes=5),
                [usage(window(96.0, RESET + timedelta(seconds=7)))]) == []
    assert runs(T0 + timedelta(minutes=10),
                [usage(window(97.0, RESET - timedelta(seconds=3)))]) == []


def test_decide_server_resets_early_fires_reset_then_low_in_same_run():
    runs = Runs()
    runs(T0, [usage(window(95.0))])
    # Skipped a whole period between two runs: the new one is already low.
    later = RESET + timedelta(hours=4)
    assert runs(later, [usage(window(99.0, later + timedelta(hours=1)))]) == [
        "quota_reset", "quota_low"]


def test_decide_window_still_reporting_a_passed_reset_is_not_a_new_low():
    runs = Runs()
    runs(T0, [usage(window(95.0))])
    lagging = RESET + timedelta(seconds=30)
    assert runs(lagging, [usage(window(95.0, RESET))]) == ["quota_reset"]
    assert runs(lagging + timedelta(minutes=5), [usage(window(95.0, RESET))]) == []


def test_decide_stale_window_rolled_over_counts_as_reset():
    runs = Runs()
    runs(T0, [usage(window(95.0))])
    rolled = usage(window(0.0, RESET), state=AccountState.STALE, error="timed out", stale=True)
    assert runs(RESET + timedelta(minutes=2), [rolled]) == ["quota_reset"]


def test_decide_window_without_reset_moment_rearms_ten_points_above_threshold():
    runs = Runs()
    assert runs(T0, [usage(window(95.0, None))]) == ["quota_low"]
    assert runs(T0 + timedelta(minutes=5), [usage(window(85.0, None))]) == []  # 15 % left
    assert runs(T0 + timedelta(minutes=10), [usage(window(79.0, None))]) == ["quota_reset"]
    assert runs(T0 + timedelta(minutes=15), [usage(window(95.0, None))]) == ["quota_low"]


def test_decide_threshold_is_strictly_below_and_configurable():
    assert Runs()(T0, [usage(window(90.0))]) == []  # exactly 10 % left is not below 10
    assert Runs(Thresholds(below=25.0))(T0, [usage(window(80.0))]) == ["quota_low"]


def test_decide_windows_are_independent_and_carry_their_details():
    runs = Runs()
    week = window(96.0, T0 + timedelta(days=3), key="seven_day", title="Weekly")
    found, _ = module.decide({}, [usage(window(50.0), week)], [], T0)
    [event] = found
    assert event.to_json()["window"] == {"key": "seven_day", "title": "Weekly",
                                         "remaining_percent": 4.0,
                                         "reset_date": "2026-11-27T14:00:00Z"}
    assert runs(T0, [usage(window(95.0), week)]) == ["quota_low", "quota_low"]


def test_decide_login_fails_still_failing_recovers():
    runs = Runs(Thresholds(failing_after=1800))
    broken = dict(state=AccountState.LOGIN_FAILED,
                  error="Claude token was rejected (invalid_grant); log in again with CLIProxyAPI")
    assert runs(T0, [usage(window(20.0))]) == []
    assert runs(T0 + timedelta(minutes=5), [usage(**broken)]) == ["login_failed"]
    assert runs(T0 + timedelta(minutes=10), [usage(**broken)]) == []
    assert runs(T0 + timedelta(minutes=35), [usage(**broken)]) == ["account_failing"]
    assert runs(T0 + timedelta(minutes=40), [usage(**broken)]) == []
    assert runs(T0 + timedelta(minutes=45), [usage(window(20.0))]) == [
        "login_recovered", "account_recovered"]
    assert runs(T0 + timedelta(minutes=50), [usage(window(20.0))]) == []


def test_decide_login_event_json_names_states_and_error_never_a_token():
    memory = {}
    _, memory = module.decide(memory, [usage(window(20.0))], [], T0)
    found, _ = module.decide(memory, [usage(state=AccountState.LOGIN_FAILED,
                                            error="Claude usage returned 401 after refresh retry",
                                            login_problem=True)], [], T0 + timedelta(minutes=5))
    data = found[0].to_json()
    assert data["version"] == 1 and data["event"] == "login_failed"
    assert data["at"] == "2026-11-24T14:05:00Z"
    assert data["account"] == {"id": ID, "provider": "claude", "email": "alice@example.com",
                               "source": "local"}
    assert (data["state"], data["previous_state"]) == ("login_failed", "ok")
    assert data["window"] is None
    assert "401 after refresh retry" in data["error"] and "401" in data["message"]


@pytest.mark.parametrize("reason, state", [("expired", "expired"),
                                           ("unreadable: not JSON", "unreadable")])
def test_decide_skipped_expired_or_unreadable_is_a_login_problem(reason, state):
    runs = Runs()
    skipped = Skipped(ID, reason, Provider.CLAUDE if state == "expired" else None,
                      state=AccountState(state))
    assert runs(T0, skipped=[skipped]) == ["login_failed"]
    assert runs(T0 + timedelta(minutes=5), skipped=[skipped]) == []
    assert runs(T0 + timedelta(minutes=10), [usage(window(20.0))]) == ["login_recovered"]


def test_decide_moving_between_login_problems_does_not_fire_again():
    runs = Runs()
    assert runs(T0, skipped=[Skipped(ID, "expired", Provider.CLAUDE,
                                     state=AccountState.EXPIRED)]) == ["login_failed"]
    assert runs(T0 + timedelta(minutes=5), [usage(state=AccountState.LOGIN_FAILED,
                                                  error="rejected")]) == []


def test_decide_failing_needs_the_state_to_last_and_fires_once_per_episode():
    runs = Runs(Thresholds(failing_after=1800))
    down = usage(state=AccountState.ERROR, error="Claude usage request timed out after 15 s")
    limited = usage(state=AccountState.RATE_LIMITED, error="Claude usage API returned 429")
    assert runs(T0, [down]) == []
    assert runs(T0 + timedelta(minutes=20), [limited]) == []  # another failing state: same episode
    assert runs(T0 + timedelta(minutes=30), [down]) == ["account_failing"]
    assert runs(T0 + timedelta(minutes=35), [down]) == []
    assert runs(T0 + timedelta(minutes=40), [usage(window(20.0), state=AccountState.STALE,
                                                   error="timed out", stale=True)]) == [
        "account_recovered"]
    # A short failure after that is a new episode that has not lasted yet.
    assert runs(T0 + timedelta(minutes=45), [down]) == []


def test_decide_failing_event_carries_when_it_began():
    memory = {}
    down = usage(state=AccountState.BLOCKED, error="a Cloudflare challenge")
    _, memory = module.decide(memory, [down], [], T0, Thresholds(failing_after=600))
    found, _ = module.decide(memory, [down], [], T0 + timedelta(minutes=11),
                             Thresholds(failing_after=600))
    [event] = found
    assert event.to_json()["failing_since"] == "2026-11-24T14:00:00Z"
    assert event.to_json()["state"] == "blocked" and "Cloudflare" in event.message


def test_decide_failure_shorter_than_threshold_fires_nothing():
    runs = Runs(Thresholds(failing_after=1800))
    down = usage(state=AccountState.ERROR, error="Claude usage API returned 502")
    assert runs(T0, [down]) == []
    assert runs(T0 + timedelta(minutes=25), [down]) == []
    assert runs(T0 + timedelta(minutes=30), [usage(window(20.0))]) == []


def test_decide_disabling_closes_open_episodes_silently():
    runs = Runs(Thresholds(failing_after=0))
    broken = usage(state=AccountState.LOGIN_FAILED, error="rejected")
    assert runs(T0, [broken]) == ["login_failed", "account_failing"]
    disabled = Skipped(ID, "disabled", Provider.CLAUDE, "alice@example.com",
                       state=AccountState.DISABLED)
    assert runs(T0 + timedelta(minutes=5), skipped=[disabled]) == []
    assert runs(T0 + timedelta(minutes=10), [broken]) == ["login_failed", "account_failing"]


def test_decide_first_run_announces_problems_but_no_recoveries():
    runs = Runs(Thresholds(failing_after=1800))
    found = runs(T0, [usage(window(97.0)),
                      usage(state=AccountState.LOGIN_FAILED, error="x", id="b.json"),
                      usage(state=AccountState.ERROR, error="y", id="c.json")],
                 [Skipped("d.json", "disabled", Provider.CLAUDE)])
    assert found == ["quota_low", "login_failed"]


def test_decide_runs_out_before_reset_fires_when_projection_starts_saying_so():
    runs = Runs()
    assert runs(T0, [usage(window(40.0, runs_out=False))]) == []
    assert runs(T0 + timedelta(minutes=5), [usage(window(50.0, runs_out=True))]) == [
        "runs_out_before_reset"]
    assert runs(T0 + timedelta(minutes=10), [usage(window(55.0, runs_out=False))]) == []
    # Flapping projection within the same period: once.
    assert runs(T0 + timedelta(minutes=15), [usage(window(60.0, runs_out=True))]) == []
    nxt = RESET + timedelta(hours=5)
    assert runs(RESET + timedelta(minutes=30), [usage(window(30.0, nxt, runs_out=True))]) == [
        "runs_out_before_reset"]


def test_decide_window_without_pace_never_fires_runs_out():
    assert Runs()(T0, [usage(window(60.0))]) == []


def test_decide_loading_placeholders_and_non_accounts_are_ignored():
    runs = Runs()
    loading = AccountUsage(id=ID, provider=Provider.CLAUDE, is_loading=True)
    assert runs(T0, [loading], [Skipped("gemini-x.json", "unsupported type 'gemini'")]) == []
    assert runs.memory == {}


def test_decide_accounts_not_seen_keep_memory_until_forgotten():
    runs = Runs()
    runs(T0, [usage(window(95.0))])
    runs(T0 + timedelta(minutes=5), [usage(window(50.0), id="other.json")])  # --provider run
    assert ("local", ID) in runs.memory
    assert runs(T0 + timedelta(minutes=10), [usage(window(96.0))]) == []
    runs(T0 + timedelta(days=31), [usage(window(50.0), id="other.json")])
    assert ("local", ID) not in runs.memory


def test_decide_sources_keep_same_file_names_apart():
    runs = Runs()
    here = usage(window(95.0))
    there = AccountUsage(id=ID, provider=Provider.CLAUDE, windows=(window(95.0),),
                         state=AccountState.OK, source="proxy.example:8317")
    assert runs(T0, [here, there]) == ["quota_low", "quota_low"]
    assert len(runs.memory) == 2


def test_decide_reads_states_never_derives_them_from_errors_or_reasons():
    runs = Runs(Thresholds(failing_after=0))
    no_state = AccountUsage(id=ID, provider=Provider.CLAUDE, error="rejected",
                            login_problem=True, windows=(window(95.0),))
    assert runs(T0, [no_state], [Skipped("x.json", "unreadable: not JSON")]) == []
    assert runs(T0 + timedelta(minutes=5), [usage(state=AccountState.LOGIN_FAILED,
                                                  error="rejected")]) == [
        "login_failed", "account_failing"]


def test_memory_is_bounded_in_marks_and_accounts(monkeypatch):
    many = [window(99.0, RESET, key="k%d" % i, title="W%d" % i) for i in range(200)]
    _, memory = module.decide({}, [usage(*many)], [], T0)
    assert len(memory[("local", ID)].low) == event_memory.MAX_MARKS
    monkeypatch.setattr(module, "MAX_ACCOUNTS", 5)
    earlier = [usage(window(20.0), id="a%d.json" % i) for i in range(9)]
    _, memory = module.decide({}, earlier, [], T0)
    assert len(memory) == 9  # every account of the latest run is kept
    _, memory = module.decide(memory, earlier[:2], [], T0 + timedelta(minutes=5))
    assert len(memory) == 5  # of the others, only the most recent, up to the bound
    assert {("local", "a0.json"), ("local", "a1.json")} <= set(memory)


def test_a_run_bigger_than_the_memory_bound_announces_nothing_again(monkeypatch):
    """20 broken accounts and a bound of 5: the next run must not find 15 of them 'new'."""
    monkeypatch.setattr(module, "MAX_ACCOUNTS", 5)
    broken = [Skipped("b%d.json" % i, "unreadable: damaged", state=AccountState.UNREADABLE)
              for i in range(20)]
    events, memory = module.decide({}, [], broken, T0)
    assert len(events) == 20
    events, memory = module.decide(event_memory.memory_from_json(
        event_memory.memory_to_json(memory)), [], broken, T0 + timedelta(minutes=5))
    assert events == []


def test_memory_from_json_ignores_damage():
    good = event_memory.memory_to_json(module.decide({}, [usage(window(95.0))], [], T0)[1])
    damaged = {"version": 1, "accounts": good["accounts"] + [
        None, 3, {"source": "local"}, {"source": "local", "id": "x", "seen_at": "garbage"},
        {"source": "local", "id": "y", "seen_at": "2026-11-24T14:00:00Z", "state": "weird",
         "low": [[1, 2], "x", ["five_hour", "garbage"]], "runs_out": {}}]}
    memory = event_memory.memory_from_json(damaged)
    assert set(memory) == {("local", ID), ("local", "y")}
    assert memory[("local", "y")].state is None
    assert memory[("local", "y")].low == (("five_hour", None),)
    for junk in (None, [], {"accounts": {}}, "text"):
        assert event_memory.memory_from_json(junk) == {}


def test_ledger_in_memory_and_in_store_fire_each_change_once(tmp_path):
    stored = module.EventLedger(StateStore(str(tmp_path / "state")))
    again = module.EventLedger(StateStore(str(tmp_path / "state")))  # another process
    local = module.EventLedger()
    low = [usage(window(95.0))]
    assert [e.type for e in stored.record(low, [], T0)] == [EventType.QUOTA_LOW]
    assert again.record(low, [], T0 + timedelta(minutes=5)) == []
    assert [e.type for e in local.record(low, [], T0)] == [EventType.QUOTA_LOW]
    assert local.record(low, [], T0 + timedelta(minutes=5)) == []
    text = (tmp_path / "state" / "events.json").read_text()
    assert "five_hour" in text and (tmp_path / "state" / "events.json").stat().st_mode & 0o077 == 0


def test_ledger_corrupt_store_warns_and_starts_over(tmp_path, caplog):
    directory = tmp_path / "state"
    directory.mkdir()
    (directory / "events.json").write_text("{not json")
    ledger = module.EventLedger(StateStore(str(directory)))
    assert [e.type for e in ledger.record([usage(window(95.0))], [], T0)] == [EventType.QUOTA_LOW]
    assert "corrupt" in caplog.text
    assert json.loads((directory / "events.json").read_text())["version"] == 1


def test_ledger_unwritable_store_still_decides_from_what_it_can_read(tmp_path, caplog):
    directory = tmp_path / "state"
    ledger = module.EventLedger(StateStore(str(directory)))
    ledger.record([usage(window(95.0))], [], T0)
    (directory / "events.json.lock").unlink()
    (directory / "events.json.lock").mkdir()  # the lock cannot be taken
    assert ledger.record([usage(window(96.0))], [], T0 + timedelta(minutes=5)) == []
    assert "events may repeat" in caplog.text


def test_event_message_names_account_window_and_state():
    found, _ = module.decide({}, [usage(window(95.0))], [], T0)
    assert found[0].message.startswith("Claude alice@example.com: 5-hour window has 5% left")
    found, _ = module.decide({}, [], [Skipped("x.json", "unreadable: not JSON",
                                              state=AccountState.UNREADABLE)], T0)
    assert found[0].message == "File x.json: login needs attention (unreadable): unreadable: not JSON"


def test_event_message_is_printable_even_for_hostile_text():
    odd = usage(window(95.0), email="evil@example.com\r\nBcc: all@example.com\x1b[2J")
    [event] = module.decide({}, [odd], [], T0)[0]
    assert "\n" not in event.message and "\r" not in event.message
    assert "\x1b" not in event.message and event.to_json()["message"] == event.message


def test_ledger_two_processes_recording_at_once_announce_a_change_once(tmp_path):
    import threading
    ledgers = [module.EventLedger(StateStore(str(tmp_path / "state"))) for _ in range(4)]
    start = threading.Barrier(len(ledgers))
    found = []

    def record(ledger):
        start.wait(10)
        found.extend(ledger.record([usage(window(95.0))], [], T0))
    threads = [threading.Thread(target=record, args=(ledger,)) for ledger in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [event.type for event in found] == [EventType.QUOTA_LOW]
