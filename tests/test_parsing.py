"""Shared parsing helpers (SPEC §7): numbers, timestamps, reset texts, windows, generic parser."""
import math
import time
from datetime import datetime, timedelta, timezone

import pytest

from oauth_usage_tracker import parsing as module
from oauth_usage_tracker.models import UsageWindow
from support import load_payload

UTC = timezone.utc
NOW = datetime(2026, 11, 24, 14, 0, tzinfo=UTC)
# The "now" assumed by every sample payload (tests/payloads/README.md).
PAYLOAD_NOW = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def new_york_tz(monkeypatch):
    """Local time is America/New_York (EST -5, EDT -4) for the test."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def assert_utc(moment):
    assert moment.tzinfo is not None
    assert moment.utcoffset() == timedelta(0)
    assert moment.tzinfo == UTC


# --- number_value --------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (37, 37.0), (0, 0.0), (-3, -3.0), (37.5, 37.5), (0.4, 0.4), (10 ** 20, 1e20),
    ("37", 37.0), ("37.5", 37.5), ("37.5%", 37.5), ("35%", 35.0), (" 37 ", 37.0), ("-3", -3.0),
    ("+4", 4.0), ("1e3", 1000.0), (".5", 0.5), ("5.", 5.0), ("0", 0.0),
])
def test_number_value_numeric_gives_float(value, expected):
    result = module.number_value(value)
    assert type(result) is float
    assert result == expected


@pytest.mark.parametrize("value", [
    True, False, float("nan"), float("inf"), float("-inf"), "nan", "NaN", "inf", "Infinity",
    "-inf", "abc", "", "   ", "%", "37%%", "37 percent", "3 7", "0x10", "1,5", "1e400", "-1e400",
    "1" * 400, 10 ** 400, -(10 ** 400), None, [], [37], {}, {"value": 37}, b"37",
])
def test_number_value_not_a_finite_number_gives_none(value):
    assert module.number_value(value) is None


# --- parse_timestamp -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("2026-08-22T14:39:03Z", datetime(2026, 8, 22, 14, 39, 3, tzinfo=UTC)),
    ("2026-08-22T14:39:03z", datetime(2026, 8, 22, 14, 39, 3, tzinfo=UTC)),
    ("2026-08-22T14:39:03+00:00", datetime(2026, 8, 22, 14, 39, 3, tzinfo=UTC)),
    ("2026-08-22T14:39:03+02:00", datetime(2026, 8, 22, 12, 39, 3, tzinfo=UTC)),
    ("2026-08-22T14:39:03+0200", datetime(2026, 8, 22, 12, 39, 3, tzinfo=UTC)),
    ("2026-08-22T14:39:03-05:30", datetime(2026, 8, 22, 20, 9, 3, tzinfo=UTC)),
    ("2026-08-22T00:30:00+02:00", datetime(2026, 8, 21, 22, 30, 0, tzinfo=UTC)),
    ("2026-08-22T14:39:03", datetime(2026, 8, 22, 14, 39, 3, tzinfo=UTC)),
    ("2026-08-22 14:39:03", datetime(2026, 8, 22, 14, 39, 3, tzinfo=UTC)),
    (" 2026-08-22T14:39:03Z ", datetime(2026, 8, 22, 14, 39, 3, tzinfo=UTC)),
])
def test_parse_timestamp_rfc3339_gives_utc(text, expected):
    result = module.parse_timestamp(text)
    assert result == expected
    assert_utc(result)


@pytest.mark.parametrize("fraction, micro", [
    ("1", 100000), ("12", 120000), ("123", 123000), ("1234", 123400), ("12345", 123450),
    ("123456", 123456), ("1234567", 123456), ("12345678", 123456), ("123456789", 123456),
])
def test_parse_timestamp_fractional_seconds_any_digits_give_microseconds(fraction, micro):
    for zone, hour in (("Z", 17), ("+00:00", 17), ("+02:00", 15)):
        result = module.parse_timestamp("2026-11-24T17:00:00.%s%s" % (fraction, zone))
        assert result == datetime(2026, 11, 24, hour, 0, 0, micro, tzinfo=UTC)
        assert_utc(result)


def test_parse_timestamp_claude_resets_at_with_microseconds_and_offset_gives_utc():
    result = module.parse_timestamp("2026-11-24T17:00:00.123456+00:00")
    assert result == datetime(2026, 11, 24, 17, 0, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize("value", [1790856000, 1790856000.0, "1790856000", " 1790856000 ",
                                   1790856000000, "1790856000000", 1790856000000.0])
def test_parse_timestamp_unix_seconds_or_milliseconds_give_utc(value):
    result = module.parse_timestamp(value)
    assert result == PAYLOAD_NOW
    assert_utc(result)


def test_parse_timestamp_milliseconds_keep_the_fraction():
    result = module.parse_timestamp(1790856000250)
    assert abs((result - PAYLOAD_NOW).total_seconds() - 0.25) < 0.001


def test_parse_timestamp_seconds_up_to_ten_to_the_tenth_stay_seconds():
    # 10**10 s is the year 2286: still seconds; only numbers above it are milliseconds.
    assert module.parse_timestamp(10 ** 10).year == 2286
    assert module.parse_timestamp(10 ** 10 + 1).year == 1970


@pytest.mark.parametrize("value", [
    "", "   ", "soon", "tomorrow", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z",
    "2026-08-22T25:00:00Z", "2026-08-22T14:61:00Z", "2026-08-22T14:39:03+25:00",
    "2026-08-22T14:39:03 Europe/Paris", "22/08/2026", "37%", "1790856000%", "0000-01-01T00:00:00Z",
    None, True, False, [], {}, [1790856000], {"at": 1790856000}, float("nan"), float("inf"),
    "nan", "inf",
])
def test_parse_timestamp_garbage_gives_none(value):
    assert module.parse_timestamp(value) is None


@pytest.mark.parametrize("value", [
    "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", 1e20, -1e20, 10 ** 30, 1e308,
    "99999999999999999999", 10 ** 400,
])
def test_parse_timestamp_out_of_range_gives_none(value):
    assert module.parse_timestamp(value) is None


# --- format_timestamp ----------------------------------------------------------------------------

def test_format_timestamp_offset_gives_utc_z_whole_seconds():
    moment = datetime(2026, 8, 22, 14, 39, 3, 987654, tzinfo=timezone(timedelta(hours=2)))
    assert module.format_timestamp(moment) == "2026-08-22T12:39:03Z"


def test_format_timestamp_utc_gives_z():
    assert module.format_timestamp(NOW) == "2026-11-24T14:00:00Z"


def test_format_timestamp_round_trips_through_parse_timestamp():
    moment = datetime(2026, 8, 22, 12, 39, 3, tzinfo=UTC)
    assert module.parse_timestamp(module.format_timestamp(moment)) == moment


def test_format_timestamp_ignores_local_time_zone(new_york_tz):
    assert module.format_timestamp(NOW) == "2026-11-24T14:00:00Z"


def test_format_timestamp_before_the_year_1000_as_strftime_writes_it():
    assert module.format_timestamp(datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == \
        datetime(999, 12, 31, 23, 59, 59).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert module.format_timestamp(datetime(1000, 1, 1, tzinfo=UTC)) == "1000-01-01T00:00:00Z"


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=500, deadline=None, database=None)
@given(moment=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
       minutes=st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59))
def test_format_timestamp_is_strftime_of_the_utc_moment(moment, minutes):
    aware = moment.replace(tzinfo=timezone(timedelta(minutes=minutes)))
    assert module.format_timestamp(aware) == \
        aware.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- reset_text ----------------------------------------------------------------------------------

def test_reset_text_future_gives_relative_and_absolute():
    date = datetime(2026, 11, 24, 17, 0, tzinfo=UTC)
    assert module.reset_text(date, NOW) == "in 3 hours (Nov 24, 2026, 5:00 PM)"


def test_reset_text_past_gives_ago():
    date = NOW - timedelta(minutes=3)
    assert module.reset_text(date, NOW) == "3 minutes ago (Nov 24, 2026, 1:57 PM)"


@pytest.mark.parametrize("delta, relative", [
    (timedelta(seconds=1), "in 1 second"),
    (timedelta(seconds=45), "in 45 seconds"),
    (timedelta(minutes=1), "in 1 minute"),
    (timedelta(minutes=59), "in 59 minutes"),
    (timedelta(hours=1), "in 1 hour"),
    (timedelta(hours=5), "in 5 hours"),
    (timedelta(days=1), "in 1 day"),
    (timedelta(days=6), "in 6 days"),
    (timedelta(seconds=-1), "1 second ago"),
    (timedelta(seconds=-30), "30 seconds ago"),
    (timedelta(minutes=-1), "1 minute ago"),
    (timedelta(hours=-1), "1 hour ago"),
    (timedelta(hours=-2), "2 hours ago"),
    (timedelta(days=-1), "1 day ago"),
    (timedelta(days=-3), "3 days ago"),
])
def test_reset_text_each_unit_gives_singular_or_plural(delta, relative):
    text = module.reset_text(NOW + delta, NOW)
    assert text.startswith(relative + " (")


@pytest.mark.parametrize("delta, relative", [
    (timedelta(seconds=89), "in 1 minute"),
    (timedelta(seconds=90), "in 2 minutes"),
    (timedelta(hours=2, minutes=29), "in 2 hours"),
    (timedelta(hours=2, minutes=30), "in 3 hours"),
    (timedelta(hours=35, minutes=59), "in 1 day"),
    (timedelta(hours=36), "in 2 days"),
    (timedelta(days=6, hours=23), "in 7 days"),
    (timedelta(hours=-2, minutes=-31), "3 hours ago"),
    (timedelta(minutes=-1, seconds=-29), "1 minute ago"),
])
def test_reset_text_fractional_amount_rounds_to_nearest(delta, relative):
    assert module.reset_text(NOW + delta, NOW).startswith(relative + " (")


@pytest.mark.parametrize("delta", [timedelta(0), timedelta(milliseconds=400),
                                   timedelta(milliseconds=-400)])
def test_reset_text_under_one_second_gives_now(delta):
    assert module.reset_text(NOW + delta, NOW).startswith("now (Nov 24, 2026, ")


@pytest.mark.parametrize("date, absolute", [
    (datetime(2026, 11, 25, 0, 5, tzinfo=UTC), "Nov 25, 2026, 12:05 AM"),
    (datetime(2026, 11, 25, 12, 0, tzinfo=UTC), "Nov 25, 2026, 12:00 PM"),
    (datetime(2026, 11, 25, 11, 59, tzinfo=UTC), "Nov 25, 2026, 11:59 AM"),
    (datetime(2026, 12, 31, 23, 9, tzinfo=UTC), "Dec 31, 2026, 11:09 PM"),
    (datetime(2027, 1, 1, 9, 0, tzinfo=UTC), "Jan 1, 2027, 9:00 AM"),
])
def test_reset_text_absolute_part_gives_month_day_year_12_hour_clock(date, absolute):
    assert module.reset_text(date, NOW).endswith("(%s)" % absolute)


def test_reset_text_offset_date_gives_absolute_in_local_zone():
    date = datetime(2026, 11, 24, 19, 0, tzinfo=timezone(timedelta(hours=2)))  # 17:00 UTC
    assert module.reset_text(date, NOW) == "in 3 hours (Nov 24, 2026, 5:00 PM)"


def test_reset_text_tz_env_gives_absolute_in_that_zone(new_york_tz):
    date = datetime(2026, 11, 24, 17, 0, tzinfo=UTC)  # 12:00 EST
    assert module.reset_text(date, NOW) == "in 3 hours (Nov 24, 2026, 12:00 PM)"


def test_reset_text_tz_env_summer_time_gives_daylight_offset(new_york_tz):
    now = datetime(2026, 7, 4, 13, 0, tzinfo=UTC)
    date = datetime(2026, 7, 4, 16, 0, tzinfo=UTC)  # 12:00 EDT
    assert module.reset_text(date, now) == "in 3 hours (Jul 4, 2026, 12:00 PM)"


def test_reset_text_tz_env_crossing_midnight_gives_local_date(new_york_tz):
    date = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)  # 22:00 EST on the 24th
    assert module.reset_text(date, NOW) == "in 13 hours (Nov 24, 2026, 10:00 PM)"


# --- make_window ---------------------------------------------------------------------------------

def test_make_window_percent_and_reset_gives_window_with_text():
    reset = NOW + timedelta(hours=3)
    window = module.make_window("five_hour", "5-hour", 37.0, reset, NOW)
    assert window == UsageWindow(key="five_hour", title="5-hour", used_percent=37.0,
                                 reset_date=reset,
                                 reset_text="in 3 hours (Nov 24, 2026, 5:00 PM)")
    assert window.remaining_percent == 63.0


@pytest.mark.parametrize("used, expected", [
    (-5.0, 0.0), (0.0, 0.0), (0.5, 0.5), (100.0, 100.0), (101.0, 100.0), (1e9, 100.0),
])
def test_make_window_percent_out_of_range_is_clamped(used, expected):
    window = module.make_window("seven_day", "Weekly", used, None, NOW)
    assert window.used_percent == expected
    assert 0.0 <= window.remaining_percent <= 100.0


def test_make_window_percent_only_gives_window_without_reset():
    window = module.make_window("seven_day", "Weekly", 12.0, None, NOW)
    assert window.used_percent == 12.0
    assert window.reset_date is None
    assert window.reset_text is None


def test_make_window_reset_only_gives_window_without_percent():
    reset = NOW + timedelta(days=2)
    window = module.make_window("seven_day", "Weekly", None, reset, NOW)
    assert window.used_percent is None
    assert window.remaining_percent is None
    assert window.reset_date == reset
    assert window.reset_text.startswith("in 2 days (")


def test_make_window_neither_percent_nor_reset_gives_none():
    assert module.make_window("five_hour", "5-hour", None, None, NOW) is None


# --- roll_over -----------------------------------------------------------------------------------

def test_roll_over_reset_passed_gives_zero_used_and_past_tense():
    reset = NOW - timedelta(minutes=3)
    stored = UsageWindow("five_hour", "5-hour", 80.0, reset, "in 2 hours (…)")
    window = module.roll_over(stored, NOW)
    assert window.used_percent == 0.0
    assert window.remaining_percent == 100.0
    assert window.reset_date == reset
    assert (window.key, window.title) == ("five_hour", "5-hour")
    assert "ago" in window.reset_text
    assert "in " not in window.reset_text
    assert "3 minutes ago" in window.reset_text
    assert "(Nov 24, 2026, 1:57 PM)" in window.reset_text
    assert stored.used_percent == 80.0


def test_roll_over_reset_in_future_returns_window_untouched():
    stored = UsageWindow("seven_day", "Weekly", 64.0, NOW + timedelta(seconds=1), "in 1 second")
    assert module.roll_over(stored, NOW) == stored


def test_roll_over_no_reset_returns_window_untouched():
    stored = UsageWindow("seven_day", "Weekly", 64.0)
    assert module.roll_over(stored, NOW) == stored


def test_roll_over_unknown_percent_reset_passed_gives_zero_used():
    stored = UsageWindow("seven_day", "Weekly", None, NOW - timedelta(days=1), "in 1 day")
    assert module.roll_over(stored, NOW).used_percent == 0.0


# --- parse_generic_windows -----------------------------------------------------------------------

def by_title(windows):
    return {window.title: window for window in windows}


def test_parse_generic_windows_other_shape_gives_five_hour_35_and_weekly_40():
    windows = module.parse_generic_windows(load_payload("codex_other_shape"), PAYLOAD_NOW)
    assert [w.title for w in windows] == ["5-hour", "Weekly"]
    five, weekly = windows
    assert five.used_percent == pytest.approx(35.0)
    assert five.remaining_percent == pytest.approx(65.0)
    assert five.reset_date == datetime.fromtimestamp(1795551600, UTC)
    assert five.key == "five_hour"
    assert weekly.used_percent == pytest.approx(40.0)
    assert weekly.reset_date == datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
    assert weekly.key == "weekly"
    for window in windows:
        assert_utc(window.reset_date)
        assert window.reset_text.startswith("in ")


def test_parse_generic_windows_odd_shape_gives_windows_from_length_and_camel_case():
    windows = module.parse_generic_windows(load_payload("codex_odd_shape"), PAYLOAD_NOW)
    assert [w.title for w in windows] == ["5-hour", "Weekly"]
    five, weekly = windows
    # Labelled "session", but 300 window minutes make it the 5-hour window.
    assert five.used_percent == pytest.approx(17.5)
    assert five.reset_date == PAYLOAD_NOW + timedelta(seconds=9120)
    assert weekly.used_percent == pytest.approx(64.0)
    assert weekly.reset_date == datetime(2026, 10, 5, 9, 0, tzinfo=UTC)


def test_parse_generic_windows_any_key_order_gives_five_hour_session_weekly_full():
    payload = {
        "full": {"used_percent": 10},
        "weekly": {"used_percent": 20},
        "session": {"used_percent": 30},
        "five_hour": {"used_percent": 40},
    }
    windows = module.parse_generic_windows(payload, NOW)
    assert [(w.title, w.used_percent) for w in windows] == [
        ("5-hour", 40.0), ("Session", 30.0), ("Weekly", 20.0), ("Full", 10.0)]


def test_parse_generic_windows_repeated_title_keeps_one_window():
    payload = {"windows": [{"name": "5h", "used_percent": 10},
                           {"name": "5-hour", "used_percent": 90},
                           {"name": "five hour", "used_percent": 50}]}
    windows = module.parse_generic_windows(payload, NOW)
    assert len(windows) == 1
    assert windows[0].title == "5-hour"
    assert windows[0].used_percent == 10.0


@pytest.mark.parametrize("window, expected", [
    ({"used_fraction": 0.25}, 25.0),
    ({"usage_ratio": 0.5}, 50.0),
    ({"usedFraction": "0.75"}, 75.0),
    ({"utilization": 0.3}, 30.0),
    ({"used_percent": 0.4}, 40.0),
    ({"used_percent": 1}, 100.0),
    ({"used_percent": 0}, 0.0),
    ({"used_percent": 37}, 37.0),
    ({"used_percent": "35%"}, 35.0),
    ({"used_percent": 250}, 100.0),
])
def test_parse_generic_windows_fraction_or_small_value_is_scaled_to_percent(window, expected):
    windows = module.parse_generic_windows({"weekly": window}, NOW)
    assert [(w.title, w.used_percent) for w in windows] == [("Weekly", pytest.approx(expected))]


def test_parse_generic_windows_reset_after_seconds_counts_from_now():
    payload = {"weekly": {"used_percent": 20, "reset_after_seconds": 3600}}
    (window,) = module.parse_generic_windows(payload, NOW)
    assert window.reset_date == NOW + timedelta(hours=1)
    assert window.reset_text == "in 1 hour (Nov 24, 2026, 3:00 PM)"


def test_parse_generic_windows_primary_and_secondary_give_five_hour_and_weekly():
    payload = {"limits": {"secondary": {"used_percent": 20}, "primary": {"used_percent": 10}}}
    windows = module.parse_generic_windows(payload, NOW)
    assert [(w.title, w.used_percent) for w in windows] == [("5-hour", 10.0), ("Weekly", 20.0)]


def test_parse_generic_windows_window_length_beats_label():
    payload = {"session": {"used_percent": 20, "limit_window_seconds": 18000},
               "other": {"used_percent": 30, "limit_window_seconds": 604800}}
    windows = module.parse_generic_windows(payload, NOW)
    assert [(w.title, w.used_percent) for w in windows] == [("5-hour", 20.0), ("Weekly", 30.0)]


def test_parse_generic_windows_monthly_gives_full():
    windows = module.parse_generic_windows({"monthly": {"used_percent": 12}}, NOW)
    assert [(w.title, w.key, w.used_percent) for w in windows] == [("Full", "full", 12.0)]


def test_parse_generic_windows_window_without_percent_or_reset_is_dropped():
    payload = {"five_hour": {"name": "5h", "limit": 100},
               "weekly": {"used_percent": "n/a", "reset_at": "soon"}}
    assert module.parse_generic_windows(payload, NOW) == []


def test_parse_generic_windows_unlabelled_figure_is_dropped():
    assert module.parse_generic_windows({"foo": {"used_percent": 50}}, NOW) == []


def test_parse_generic_windows_nan_and_out_of_range_reset_are_unusable():
    payload = {"five_hour": {"used_percent": float("nan"), "reset_at": 1e300},
               "weekly": {"used_percent": float("inf"), "reset_at": "9999-12-31T23:59:59-01:00"}}
    assert module.parse_generic_windows(payload, NOW) == []


def _deep(levels, leaf):
    value = leaf
    for index in range(levels):
        value = {"level%d" % index: value} if index % 2 else [value]
    return value


@pytest.mark.parametrize("payload", [
    None, 42, 3.5, True, "text", "", b"bytes", [], {}, [1, "a", None, True],
    [[[]]], [[{"x": [None, {}]}]], {"a": [1, 2, {"b": None}]},
    {"five_hour": None}, {"five_hour": [None, 3, "x"]}, {"five_hour": "37%"},
    {"five_hour": {"used_percent": True, "reset_at": False}},
    {"five_hour": {"used_percent": [37], "reset_at": {"at": 1790856000}}},
    {"weekly": {"reset_in_seconds": -5}}, {"weekly": {"reset_in_seconds": 1e12}},
    {"weekly": {"reset_in_seconds": float("nan")}},
    {1: {2: {"x": 3}}}, {None: {"used": "abc"}},
    _deep(5000, {"five_hour": {"used_percent": 50}}),
    _deep(5000, None),
])
def test_parse_generic_windows_junk_gives_empty_list_without_exception(payload):
    assert module.parse_generic_windows(payload, NOW) == []


def test_parse_generic_windows_self_referencing_structure_does_not_loop():
    looped = {"a": {}}
    looped["a"]["a"] = looped
    assert module.parse_generic_windows(looped, NOW) == []


def test_parse_generic_windows_result_windows_are_all_finite_and_clamped():
    payload = {"windows": [{"name": "5h", "used_percent": 1e30},
                           {"name": "weekly", "used_percent": -1e30}]}
    for window in module.parse_generic_windows(payload, NOW):
        assert math.isfinite(window.used_percent)
        assert 0.0 <= window.used_percent <= 100.0


# --- unique_keys --------------------------------------------------------------------------------

def test_unique_keys_suffixes_later_duplicates_in_order():
    windows = [UsageWindow(key=key, title=title, used_percent=1.0) for key, title in
               (("a", "A"), ("b", "B"), ("a", "A again"), ("a~2", "literal"), ("a", "third"))]
    keys = [window.key for window in module.unique_keys(windows)]
    assert keys == ["a", "b", "a~2", "a~2~2", "a~3"]
    assert len(set(keys)) == len(keys)
    assert [w.title for w in module.unique_keys(windows)] == [w.title for w in windows]


def test_unique_keys_leaves_unique_windows_as_they_are():
    windows = [UsageWindow(key="x", title="X"), UsageWindow(key="y", title="Y")]
    assert module.unique_keys(windows) == windows


@settings(max_examples=1000, deadline=None, database=None)
@given(fields=st.tuples(*(st.integers(min_value=0, max_value=bound)
                          for bound in (9999, 19, 39, 29, 69, 69))),
       zone=st.sampled_from(["Z", "z", "+00:00", ""]))
def test_parse_timestamp_canonical_form_equals_the_general_pattern(fields, zone):
    text = "%04d-%02d-%02dT%02d:%02d:%02d" % fields + zone
    general = module._from_iso_match(module._ISO_RE.match(text))
    parsed = module.parse_timestamp(text)
    assert parsed == general
    if parsed is not None:
        assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)
        if parsed.year >= 1000:  # strftime writes earlier years unpadded
            assert module.format_timestamp(parsed) == text[:19] + "Z"


def test_shared_length_gives_one_object_per_named_length_and_keeps_others():
    five, week = float(5 * 3600), float(7 * 86400)
    assert module.shared_length(five) is module.shared_length(float(18000)) == 18000.0
    assert module.shared_length(week) is module.title_length("Weekly (Opus)") == 604800.0
    odd = float(7200)
    assert module.shared_length(odd) is odd
    assert module.shared_length(None) is None
    assert module.shared_length(18000) == 18000 and type(module.shared_length(18000)) is int
    window = module.make_window("five_hour", "5-hour", 10.0, None, datetime.now(timezone.utc),
                                float(18000))
    assert window.length_seconds is module.shared_length(18000.0)


def test_make_window_windows_with_one_reset_moment_share_it_and_its_text():
    now = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)
    week = now + timedelta(days=3)
    first = module.make_window("seven_day", "Weekly", 10.0, week, now)
    same = module.make_window("seven_day_opus", "Weekly (Opus)", 5.0,
                              module.parse_timestamp(module.format_timestamp(week)), now)
    assert same.reset_date is first.reset_date and same.reset_text is first.reset_text
    # Another moment, another `now`, or the same moment in another zone: its own objects.
    other = module.make_window("five_hour", "5-hour", 1.0, now + timedelta(hours=2), now)
    assert other.reset_date != week and other.reset_text != first.reset_text
    later = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)
    again = module.make_window("seven_day", "Weekly", 10.0, week, later)
    assert again.reset_text == first.reset_text and again.reset_text is not first.reset_text
    zoned = week.astimezone(timezone(timedelta(hours=2)))
    shifted = module.make_window("seven_day", "Weekly", 10.0, zoned, later)
    assert shifted.reset_date is zoned and shifted.reset_date.tzinfo is zoned.tzinfo


@settings(max_examples=1500, deadline=None, database=None)
@given(fields=st.tuples(*(st.integers(min_value=0, max_value=bound)
                          for bound in (9999, 19, 39, 29, 69, 69))),
       fraction=st.sampled_from(["", ".0", ".000", ".123", ".5000", ".999999", ".1234567",
                                 ".221094", ",123"]),
       zone=st.one_of(st.sampled_from(["Z", "z", "+00:00", "-00:00", "+23:59", "-23:59",
                                       "+24:00", "+05:75", "+0530", "+05", "UTC", "", " Z",
                                       "Z\n"]),
                      st.tuples(st.sampled_from("+-"), st.integers(0, 29),
                                st.integers(0, 69)).map(lambda z: "%s%02d:%02d" % z)))
def test_parse_timestamp_offset_form_equals_the_general_pattern(fields, fraction, zone):
    text = "%04d-%02d-%02dT%02d:%02d:%02d" % fields + fraction + zone
    match = module._ISO_RE.match(text)
    general = module._from_iso_match(match) if match else None
    parsed = module.parse_timestamp(text)
    assert parsed == general
    assert repr(parsed) == repr(general)  # the same zone object (UTC) too


@settings(max_examples=500, deadline=None, database=None)
@given(text=st.from_regex(module._FAST_ISO_RE, fullmatch=True))
def test_parse_timestamp_any_offset_form_text_equals_the_general_pattern(text):
    general = module._from_iso_match(module._ISO_RE.match(text))
    assert repr(module.parse_timestamp(text)) == repr(general)
