"""Pace of a quota window (SPEC §14): arithmetic, the recent rate, and the awkward cases."""
from datetime import datetime, timedelta, timezone

import pytest
from freezegun import freeze_time

from oauth_usage_tracker import pace as module
from oauth_usage_tracker.models import AccountUsage, AuthAccount, Provider, UsageWindow
from oauth_usage_tracker.tracker import OAuthUsageTracker

NOW = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)
HOUR, DAY = 3600.0, 86400.0
LENGTHS = {"5-hour": 5 * HOUR, "weekly": 7 * DAY, "30-day": 30 * DAY}


def window(used, share, length, at=NOW, key="five_hour"):
    """A window of `length` seconds read at `at`, `share` of it elapsed."""
    reset = at + timedelta(seconds=(1 - share) * length)
    return UsageWindow(key, "w", used, reset, length_seconds=length)


@pytest.mark.parametrize("length", LENGTHS.values(), ids=list(LENGTHS))
def test_pace_at_window_start_is_unknown(length):
    with freeze_time(NOW):
        now = datetime.now(timezone.utc)
        assert module.pace(window(3.0, 0.0001, length), now) is None
        assert module.pace(window(3.0, 0.049, length), now) is None


@pytest.mark.parametrize("length", LENGTHS.values(), ids=list(LENGTHS))
def test_pace_in_middle_projects_at_rate_since_window_start(length):
    with freeze_time(NOW):
        now = datetime.now(timezone.utc)
        ahead = window(80.0, 0.5, length)
        result = module.pace(ahead, now)
        assert result.expected_used_percent == pytest.approx(50.0)
        assert result.delta_percent == pytest.approx(30.0)
        assert result.basis == "window"
        # 80 % in half the window: 100 % after 5/8 of it, i.e. 1/8 of the window from now.
        assert result.projected_exhaustion == now + timedelta(seconds=length / 8)
        assert result.runs_out_before_reset is True
        behind = module.pace(window(20.0, 0.5, length), now)
        assert behind.delta_percent == pytest.approx(-30.0)
        # 20 % in half: 100 % after 2.5 windows, long after the reset.
        assert behind.projected_exhaustion == now + timedelta(seconds=2 * length)
        assert behind.runs_out_before_reset is False


@pytest.mark.parametrize("length", LENGTHS.values(), ids=list(LENGTHS))
def test_pace_at_window_end(length):
    with freeze_time(NOW):
        now = datetime.now(timezone.utc)
        nearly = window(99.0, 0.999, length)
        result = module.pace(nearly, now)
        assert result.expected_used_percent == pytest.approx(99.9)
        assert result.runs_out_before_reset is False  # 100 % comes just after the reset
        full = module.pace(window(100.0, 0.999, length), now)
        assert full.projected_exhaustion == now and full.runs_out_before_reset is True


def test_pace_exactly_at_five_percent_is_known():
    result = module.pace(window(10.0, 0.05, 5 * HOUR), NOW)
    assert result is not None and result.expected_used_percent == pytest.approx(5.0)


def test_pace_usage_zero_has_no_projection():
    result = module.pace(window(0.0, 0.6, 7 * DAY), NOW)
    assert result.expected_used_percent == pytest.approx(60.0)
    assert result.delta_percent == pytest.approx(-60.0)
    assert result.projected_exhaustion is None and result.runs_out_before_reset is False


def test_pace_reset_in_past_or_now_is_unknown():
    past = UsageWindow("five_hour", "5-hour", 50.0, NOW - timedelta(minutes=1),
                       length_seconds=5 * HOUR)
    assert module.pace(past, NOW) is None
    assert module.pace(window(50.0, 1.0, 5 * HOUR), NOW) is None


@pytest.mark.parametrize("length", [None, 0.0, -5.0])
def test_pace_unknown_length_is_unknown(length):
    unknown = UsageWindow("extra", "Extra", 50.0, NOW + timedelta(hours=1), length_seconds=length)
    assert module.pace(unknown, NOW) is None


def test_pace_reset_further_than_one_length_is_unknown():
    wrong = UsageWindow("primary_window", "5-hour", 50.0, NOW + timedelta(hours=6),
                        length_seconds=5 * HOUR)
    assert module.pace(wrong, NOW) is None


def test_pace_no_reset_or_no_percent_is_unknown():
    assert module.pace(UsageWindow("k", "5-hour", 50.0, None, length_seconds=5 * HOUR), NOW) \
        is None
    assert module.pace(window(None, 0.5, 5 * HOUR), NOW) is None


def test_pace_rolled_over_window_is_unknown():
    rolled = UsageWindow("five_hour", "5-hour", 0.0, NOW + timedelta(hours=1),
                         length_seconds=5 * HOUR, rolled_over=True)
    assert module.pace(rolled, NOW) is None


def test_pace_tiny_usage_far_projection_is_no_projection():
    result = module.pace(window(1e-9, 0.5, 30 * DAY), NOW)
    assert result is not None and result.projected_exhaustion is None


# --- the recent rate -----------------------------------------------------------------------

def history_for(w, *points, previous=None):
    return module.WindowHistory(reset=w.reset_date, previous=previous, readings=tuple(
        module.Reading(NOW - timedelta(minutes=minutes), used) for minutes, used in points))


def test_pace_recent_rate_from_stored_readings():
    # 5-hour window, 60 % elapsed, 30 % used: at the window rate it never runs out, but it
    # went from 0 % to 30 % in the last 30 minutes (1 point a minute): 100 % in 70 minutes.
    w = window(30.0, 0.6, 5 * HOUR)
    result = module.pace(w, NOW, history_for(w, (30, 0.0), (15, 15.0)))
    assert result.basis == "recent"
    assert result.projected_exhaustion == NOW + timedelta(minutes=70)
    assert result.runs_out_before_reset is True  # resets in 120 minutes
    assert module.pace(w, NOW).runs_out_before_reset is False


def test_pace_recent_rate_idle_account_never_runs_out():
    w = window(70.0, 0.6, 5 * HOUR)
    result = module.pace(w, NOW, history_for(w, (60, 70.0), (30, 70.0)))
    assert result.basis == "recent" and result.projected_exhaustion is None
    assert result.runs_out_before_reset is False


def test_pace_recent_rate_needs_a_reading_one_spacing_older():
    w = window(30.0, 0.6, 5 * HOUR)  # spacing: 5 minutes
    assert module.pace(w, NOW, history_for(w, (4, 10.0))).basis == "window"
    assert module.pace(w, NOW, history_for(w, (5, 10.0))).basis == "recent"


def test_pace_readings_of_another_period_are_not_used():
    w = window(30.0, 0.6, 5 * HOUR)
    other = module.WindowHistory(reset=w.reset_date - timedelta(hours=5), readings=(
        module.Reading(NOW - timedelta(minutes=30), 90.0),))
    assert module.pace(w, NOW, other).basis == "window"


def test_same_period_tolerates_reset_jitter():
    w = window(30.0, 0.6, 5 * HOUR)
    assert module.same_period(module.WindowHistory(w.reset_date + timedelta(seconds=2)), w)
    assert not module.same_period(module.WindowHistory(w.reset_date + timedelta(hours=5)), w)


# --- remembering readings -----------------------------------------------------------------

def test_remember_keeps_readings_spaced_and_bounded():
    reset = NOW + timedelta(hours=4)
    history = None
    for minute in range(0, 240):  # a reading every minute, as --watch 60 would take
        at = NOW + timedelta(minutes=minute)
        w = UsageWindow("five_hour", "5-hour", minute / 4, reset, length_seconds=5 * HOUR)
        history = module.remember(history, w, at)
    assert len(history.readings) == module.MAX_READINGS
    assert history.readings[-1].at == NOW + timedelta(minutes=239)
    anchored = history.readings[:-1]
    gaps = [(b.at - a.at).total_seconds() for a, b in zip(anchored, anchored[1:])]
    assert gaps == [5 * 60.0] * (module.MAX_READINGS - 2)


def test_remember_new_period_keeps_last_reading_as_previous():
    old = window(85.0, 0.9, 5 * HOUR)
    history = module.remember(None, old, NOW)
    later = NOW + timedelta(hours=1)
    new = window(4.0, 0.5, 5 * HOUR, at=later)
    history = module.remember(history, new, later)
    assert history.reset == new.reset_date
    assert history.previous == module.Reading(NOW, 85.0)
    assert history.readings == (module.Reading(later, 4.0),)


def test_remember_ignores_older_or_same_time_reading():
    w = window(40.0, 0.5, 5 * HOUR)
    history = module.remember(None, w, NOW)
    assert module.remember(history, w, NOW) == history
    assert module.remember(history, w, NOW - timedelta(minutes=1)) == history


def test_remember_window_without_reset_keeps_nothing():
    assert module.remember(None, UsageWindow("k", "5-hour", 10.0), NOW) is None


def test_record_drops_keys_no_longer_reported():
    a, b = window(10.0, 0.5, 5 * HOUR), window(10.0, 0.5, 7 * DAY, key="seven_day")
    stored = module.record({}, [a, b], NOW)
    assert set(stored) == {"five_hour", "seven_day"}
    assert set(module.record(stored, [a], NOW + timedelta(minutes=10))) == {"five_hour"}


# --- the rollover artefact ------------------------------------------------------------------

def test_rollover_artefact_detected_not_stored_and_has_no_pace():
    # 14:00 a reading of 92 % just before the reset at 14:01; at 14:03 the endpoint answers the
    # new reset (19:01) with the old 92 %.
    before = UsageWindow("five_hour", "5-hour", 92.0, NOW + timedelta(minutes=1),
                         length_seconds=5 * HOUR)
    history = module.remember(None, before, NOW)
    at = NOW + timedelta(minutes=3)
    artefact = UsageWindow("five_hour", "5-hour", 92.0, NOW + timedelta(hours=5, minutes=1),
                           length_seconds=5 * HOUR)
    assert module.is_rollover_artefact(artefact, at, history)
    assert module.pace(artefact, at, history) is None
    stored = module.remember(history, artefact, at)
    assert stored.readings == () and stored.previous == module.Reading(NOW, 92.0)
    # Repeated a minute later, still the artefact; then the real figure is stored.
    again = at + timedelta(minutes=1)
    assert module.is_rollover_artefact(artefact, again, stored)
    real = UsageWindow("five_hour", "5-hour", 1.0, artefact.reset_date, length_seconds=5 * HOUR)
    stored = module.remember(stored, real, again + timedelta(minutes=1))
    assert [r.used_percent for r in stored.readings] == [1.0]
    # Later readings of the period are never taken for the artefact, nor skewed by it.
    late = at + timedelta(hours=2)
    busy = UsageWindow("five_hour", "5-hour", 95.0, artefact.reset_date, length_seconds=5 * HOUR)
    assert not module.is_rollover_artefact(busy, late, stored)
    assert module.pace(busy, late, stored).basis == "recent"


def test_low_reading_right_after_reset_is_no_artefact():
    before = UsageWindow("five_hour", "5-hour", 92.0, NOW + timedelta(minutes=1),
                         length_seconds=5 * HOUR)
    history = module.remember(None, before, NOW)
    at = NOW + timedelta(minutes=3)
    fresh = UsageWindow("five_hour", "5-hour", 2.0, NOW + timedelta(hours=5, minutes=1),
                        length_seconds=5 * HOUR)
    assert not module.is_rollover_artefact(fresh, at, history)
    assert module.remember(history, fresh, at).readings == (module.Reading(at, 2.0),)


# --- in the tracker, with frozen time ---------------------------------------------------------

class Readings:
    """A fetcher that answers the given 5-hour usage, one per call, with a fixed reset."""

    def __init__(self, reset, *used):
        self.reset, self.used = reset, list(used)

    def __call__(self, account, session, settings):
        now = datetime.now(timezone.utc)
        w = UsageWindow("five_hour", "5-hour", self.used.pop(0), self.reset,
                        length_seconds=5 * HOUR)
        return AccountUsage(id=account.id, provider=account.provider, email=account.email,
                            windows=(w,), updated_at=now)


def test_tracker_attaches_window_pace_then_recent_pace_from_the_state_store(tmp_path):
    account = AuthAccount("claude-a.json", Provider.CLAUDE, "a@example.com", "a@example.com",
                          str(tmp_path / "claude-a.json"))
    reset = NOW + timedelta(hours=2)  # the window started at 11:00; 60 % elapsed at 14:00
    fetcher = Readings(reset, 30.0, 40.0)
    with freeze_time(NOW) as frozen, OAuthUsageTracker(
            fetchers={Provider.CLAUDE: fetcher}, state_dir=str(tmp_path / "state")) as tracker:
        [first] = tracker.refresh_and_wait([], [account])
        assert first.windows[0].pace.basis == "window"
        assert first.windows[0].pace.runs_out_before_reset is False
        frozen.tick(timedelta(minutes=20))
        [second] = tracker.refresh_and_wait([], [account])
    recent = second.windows[0].pace
    # 10 points in 20 minutes: 60 points to go take 120 minutes, at 16:20, after the 16:00 reset.
    assert recent.basis == "recent"
    assert recent.projected_exhaustion == NOW + timedelta(minutes=140)
    assert recent.runs_out_before_reset is False
    assert "access" not in (tmp_path / "state" / "state.json").read_text()


# --- properties ------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PERCENT = st.floats(min_value=0, max_value=100, allow_nan=False)
MOMENT = st.integers(min_value=-40 * 86400, max_value=40 * 86400).map(
    lambda seconds: NOW + timedelta(seconds=seconds))


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(used=st.one_of(st.none(), PERCENT), reset=st.one_of(st.none(), MOMENT),
       length=st.one_of(st.none(), st.floats(min_value=-10, max_value=40 * 86400,
                                             allow_nan=False)),
       points=st.lists(st.tuples(MOMENT, PERCENT), max_size=20),
       previous=st.one_of(st.none(), st.tuples(MOMENT, PERCENT)),
       history_reset=st.one_of(st.none(), MOMENT))
def test_pace_and_remember_are_total_and_consistent(used, reset, length, points, previous,
                                                    history_reset):
    w = UsageWindow("five_hour", "5-hour", used, reset, length_seconds=length)
    history = None
    if history_reset is not None:
        history = module.WindowHistory(
            history_reset, tuple(module.Reading(at, u) for at, u in sorted(points)),
            module.Reading(*previous) if previous else None)
    result = module.pace(w, NOW, history)
    if result is not None:
        assert 5.0 - 1e-9 <= result.expected_used_percent <= 100.0
        assert result.basis in ("window", "recent")
        if result.runs_out_before_reset:
            assert result.projected_exhaustion is not None
            assert NOW <= result.projected_exhaustion < reset
    stored = module.remember(history, w, NOW)
    if stored is not None:
        assert len(stored.readings) <= module.MAX_READINGS
        assert [r.at for r in stored.readings] == sorted(r.at for r in stored.readings)


# --- the packed history ---------------------------------------------------------------------

def test_history_keeps_moments_to_the_microsecond_and_compares_by_value():
    at = NOW - timedelta(minutes=7, microseconds=123457)
    previous = module.Reading(NOW - timedelta(hours=6, microseconds=1), 91.25)
    history = module.WindowHistory(NOW + timedelta(hours=2), (module.Reading(at, 12.5),), previous)
    assert history.reset == NOW + timedelta(hours=2)
    assert history.readings == (module.Reading(at, 12.5),)
    assert history.previous == previous
    assert history == module.WindowHistory(history.reset, history.readings, history.previous)
    assert history != module.WindowHistory(history.reset, history.readings)
    assert module.WindowHistory(history.reset).previous is None
    assert "12.5" in repr(history)
    with pytest.raises(AttributeError):
        history.reset = NOW


def test_history_keeps_only_the_newest_readings():
    points = [module.Reading(NOW + timedelta(minutes=m), float(m)) for m in range(40)]
    history = module.WindowHistory(NOW + timedelta(hours=5), points)
    assert history.readings == tuple(points[-module.MAX_READINGS:])


def test_history_of_twelve_readings_takes_a_few_hundred_bytes():
    import tracemalloc
    points = tuple(module.Reading(NOW + timedelta(minutes=5 * m), float(m)) for m in range(12))
    reset = NOW + timedelta(hours=5)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [module.WindowHistory(reset, points, points[0]) for _ in range(100)]
        size = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert size < 400  # a Reading object and a datetime per reading took over 1 KiB


# --- the packed-float paths against the datetime arithmetic they replaced ------------------

def reference_recent_rate(window, at, used, length, history):
    """_recent_rate as it was written with Reading objects and datetimes (the oracle)."""
    if not module.same_period(history, window):
        return None
    spacing = length * module.READING_SPACING_SHARE
    earlier = [r for r in history.readings if (at - r.at).total_seconds() >= spacing]
    if not earlier:
        return None
    return (used - earlier[0].used_percent) / (at - earlier[0].at).total_seconds()


def reference_remember(history, window, at):
    """remember as it was written with Reading objects and datetimes (the oracle)."""
    if window.reset_date is None or window.used_percent is None or window.rolled_over:
        return None
    if history is not None and module.same_period(history, window):
        base = module.WindowHistory(history.reset, history.readings[-module.MAX_READINGS:],
                                    history.previous)
    else:
        base = module.WindowHistory(reset=window.reset_date,
                                    previous=module._last_of_previous_period(history, window))
    if module.is_rollover_artefact(window, at, history):
        return base
    readings = base.readings
    if readings and at <= readings[-1].at:
        return base
    spacing = (window.length_seconds or 0.0) * module.READING_SPACING_SHARE
    if len(readings) >= 2 and (readings[-1].at - readings[-2].at).total_seconds() < spacing:
        readings = readings[:-1]
    readings = (readings + (module.Reading(at, window.used_percent),))[-module.MAX_READINGS:]
    return module.WindowHistory(base.reset, readings, base.previous)


# Moments to the microsecond, from 1970 to 9999 (a parsed reset can be anywhere in that range),
# most of them near NOW, where readings are.
FINE_MOMENT = st.one_of(
    st.integers(min_value=-40 * 86400 * 10 ** 6, max_value=40 * 86400 * 10 ** 6).map(
        lambda micro: NOW + timedelta(microseconds=micro)),
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30),
                 timezones=st.just(timezone.utc)))


@settings(max_examples=1000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(used=st.one_of(st.none(), PERCENT), reset=st.one_of(st.none(), FINE_MOMENT),
       length=st.one_of(st.none(), st.floats(min_value=-10, max_value=40 * 86400,
                                             allow_nan=False)),
       points=st.lists(st.tuples(FINE_MOMENT, PERCENT), max_size=14),
       previous=st.one_of(st.none(), st.tuples(FINE_MOMENT, PERCENT)),
       history_reset=st.one_of(st.none(), FINE_MOMENT), at=FINE_MOMENT,
       jitter=st.integers(min_value=-400 * 10 ** 6, max_value=400 * 10 ** 6))
def test_remember_and_recent_rate_equal_the_datetime_arithmetic(
        used, reset, length, points, previous, history_reset, at, jitter):
    w = UsageWindow("five_hour", "5-hour", used, reset, length_seconds=length)
    if points and jitter % 3 == 0 and max(points)[0] < datetime(9999, 1, 1, tzinfo=timezone.utc):
        at = max(points)[0] + timedelta(microseconds=abs(jitter))  # after every reading
    history = None
    if history_reset is not None:
        if reset is not None and jitter % 2:  # often the window's own period
            history_reset = reset + timedelta(microseconds=jitter)
        history = module.WindowHistory(
            history_reset, tuple(module.Reading(t, u) for t, u in sorted(points)),
            module.Reading(*previous) if previous else None)
    stored, expected = module.remember(history, w, at), reference_remember(history, w, at)
    assert stored == expected
    if stored is not None:
        assert (stored.reset, stored.readings, stored.previous) == \
            (expected.reset, expected.readings, expected.previous)
    if used is not None and length is not None and length > 0:  # as pace() calls it
        assert module._recent_rate(w, at, used, length, history) == \
            reference_recent_rate(w, at, used, length, history)


def test_attach_carries_every_field_of_the_window_over():
    from dataclasses import fields, replace
    w = UsageWindow("five_hour", "5-hour", 30.0, NOW + timedelta(hours=2), reset_text="in 2 h",
                    severity="warning", is_active=True, locked_reason="locked",
                    length_seconds=5 * HOUR, rolled_over=False)
    defaults = UsageWindow("k", "t")
    # Every field is set here to something other than its default, so none can be dropped.
    assert all(getattr(w, f.name) != getattr(defaults, f.name) or f.name in ("pace", "rolled_over")
               for f in fields(UsageWindow))
    for rolled in (False, True):
        window = replace(w, rolled_over=rolled)
        (attached,) = module.attach([window], NOW, {})
        expected = replace(window, pace=module.pace(window, NOW))
        assert [getattr(attached, f.name) for f in fields(UsageWindow)] == \
            [getattr(expected, f.name) for f in fields(UsageWindow)]
