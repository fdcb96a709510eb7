"""Properties of the pure parsers (SPEC §2, §3, §5, §6, §7): for any JSON at all, they return and
never raise; every percentage is None or within 0–100; every reset moment is None or aware; a
credential object gives an account or a short skip reason, and never shows a token.

The values are arbitrary JSON built from the real key names, plus shaped payloads that put
arbitrary values where the parsers look first. Reset texts carry a local time, so the usage
parsers also run in time zones far from UTC (a moment at the edge of the datetime range is fine
in UTC and out of range in Kiritimati or Los Angeles).
"""
import logging
import math
import os
import time
from contextlib import contextmanager
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from oauth_usage_tracker import accounts, parsing
from oauth_usage_tracker.models import AccountUsage, AuthAccount, Provider, Skipped, UsageWindow
from oauth_usage_tracker.providers import claude, codex
from oauth_usage_tracker.render import render_json, render_prometheus, render_table
from oauth_usage_tracker.report import Report
from support import SECRETS

# When a generated example fails, Hypothesis's pytest plugin imports libcst to suggest a patch,
# and libcst's import warns (mypy_extensions.TypedDict); under filterwarnings=error that warning
# turned the failure report into an INTERNALERROR that hid it.
pytestmark = pytest.mark.filterwarnings(
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")

PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
UTC = timezone.utc
ZONES = ["UTC", "Pacific/Kiritimati", "America/Los_Angeles"]

CODEX_KEYS = ["rate_limit", "primary_window", "secondary_window", "used_percent",
              "limit_window_seconds", "reset_after_seconds", "reset_at", "allowed",
              "limit_reached", "plan_type", "credits", "balance", "additional_rate_limits",
              "limit_name", "metered_feature", "spend_control"]
CLAUDE_KEYS = [key for key, _ in claude.BUCKETS] + [
    "utilization", "resets_at", "extra_usage", "is_enabled", "monthly_limit", "used_credits",
    "limits", "kind", "percent", "scope", "model", "display_name", "severity", "group",
    "weekly_scoped", "session", "weekly_all", "limit_dollars", "used_dollars"]
GENERIC_KEYS = ["used_fraction", "usage_ratio", "percent_used", "window_minutes", "window_hours",
                "window_seconds", "name", "label", "title", "window", "type", "period", "id",
                "reset", "resets_in_seconds", "next_reset", "five_hour", "weekly", "session",
                "5h", "7d", "full", "total", "monthly"]
CREDENTIAL_KEYS = ["type", "email", "login", "expired", "disabled", "access_token",
                   "refresh_token", "id_token", "account_id", "last_refresh", "label", "priority",
                   "headers", "excluded_models", "note", "prefix", "proxy_url"]
ALL_KEYS = CODEX_KEYS + CLAUDE_KEYS + GENERIC_KEYS + CREDENTIAL_KEYS

INTERESTING_TEXT = [
    "", " ", "50", "50%", " 37.5 % ", "-1", "1e400", "-1e400", "NaN", "nan", "Infinity", "0x10",
    "1766948068", "1766948068000", "99999999999999999999999", "1" * 400,
    "2026-11-24T17:00:00.123456+00:00", "2026-08-22T14:39:03+02:00", "2026-08-22 14:39:03",
    "2026-08-22T14:39:03Z", "2026-08-22", "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+23:59",
    "9999-12-31T23:59:59Z", "9999-12-31T23:59:59-23:59", "2026-13-45T99:99:99Z",
    "2026-02-30T00:00:00Z", "2026-08-22T14:39:03+99:99", "claude", " Claude ", "CODEX",
    "gemini", "\x1b[31m", "\ud800", "five_hour", "weekly", "5-hour", "session", "true",
]

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10 ** 20), max_value=10 ** 20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 0.5, 100, 101, -5, 18000, 604800, 1766948068, 1766948068000, 10 ** 10,
                     -62135596800, 253402300799, 1e308, -1e308, 2 ** 63,
                     10 ** 400, -(10 ** 400)]),
    st.text(max_size=20), st.sampled_from(INTERESTING_TEXT))
keys = st.one_of(st.sampled_from(ALL_KEYS), st.text(max_size=12))
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(keys, children, max_size=4)),
    max_leaves=12)


def objects_with(names, value=json_values):
    """Objects holding some of `names` (with arbitrary values) and some other keys."""
    return st.builds(lambda known, other: {**other, **known},
                     st.dictionaries(st.sampled_from(names), value, max_size=len(names)),
                     st.dictionaries(keys, scalars, max_size=2))


codex_window = st.one_of(json_values, objects_with(
    ["used_percent", "limit_window_seconds", "reset_after_seconds", "reset_at"], scalars))
codex_payloads = st.one_of(
    json_values,
    st.builds(lambda rate_limit, top: {**top, "rate_limit": rate_limit},
              st.one_of(json_values, objects_with(["primary_window", "secondary_window"],
                                                  codex_window)),
              st.dictionaries(st.sampled_from(CODEX_KEYS), json_values, max_size=4)))
claude_bucket = st.one_of(json_values, objects_with(["utilization", "resets_at"], scalars))
claude_payloads = st.one_of(json_values, st.builds(
    lambda known, other: {**other, **known},
    st.dictionaries(st.sampled_from(CLAUDE_KEYS), claude_bucket, max_size=6),
    st.dictionaries(keys, scalars, max_size=2)))
moments = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1),
                       timezones=st.just(UTC))


@contextmanager
def local_zone(name):
    """Run the block with `name` as the local time zone (reset texts show local time)."""
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        os.environ["TZ"] = "UTC"  # what conftest set for every test
        time.tzset()


@contextmanager
def package_logs():
    """Every record of the package's loggers at DEBUG, formatted, while the block runs."""
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    logger = logging.getLogger("oauth_usage_tracker")
    handler = Collect(logging.DEBUG)
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


def assert_windows(windows):
    assert isinstance(windows, list)
    for window in windows:
        assert isinstance(window, UsageWindow)
        assert isinstance(window.key, str) and window.key
        assert isinstance(window.title, str) and window.title
        used = window.used_percent
        assert used is None or (isinstance(used, float) and 0.0 <= used <= 100.0), used
        remaining = window.remaining_percent
        assert remaining is None or 0.0 <= remaining <= 100.0, remaining
        if window.reset_date is not None:
            assert window.reset_date.tzinfo is not None
            assert window.reset_date.utcoffset() is not None
        assert window.reset_text is None or isinstance(window.reset_text, str)
        assert used is not None or window.reset_date is not None, "a window that tells nothing"


def render_all(windows, now):
    """The windows go through every renderer without error (JSON parses back)."""
    import json
    account = AccountUsage(id="claude-p@example.com.json", provider=Provider.CLAUDE,
                           email="p@example.com", windows=tuple(windows), updated_at=now)
    report = Report(accounts=(account,), skipped=(), generated_at=now)
    document = json.loads(render_json(report))
    for window in document["accounts"][0]["windows"]:
        assert window["reset_date"] is None or window["reset_date"].endswith("Z")
    assert isinstance(render_table(report), str)
    assert isinstance(render_prometheus(report), str)


@PROPERTY
@given(payload=codex_payloads, now=moments, zone=st.sampled_from(ZONES))
@example(payload={"rate_limit": {"primary_window": {"used_percent": 5,
                                                    "reset_at": "0001-01-01T00:00:00Z"}}},
         now=datetime(2026, 10, 1, tzinfo=UTC), zone="America/Los_Angeles")
@example(payload={"rate_limit": {"primary_window": {"used_percent": 5,
                                                    "reset_at": "9999-12-31T23:59:59Z"}}},
         now=datetime(2026, 10, 1, tzinfo=UTC), zone="Pacific/Kiritimati")
def test_codex_parse_usage_any_json_gives_sane_windows(payload, now, zone):
    with local_zone(zone):
        windows = codex.parse_usage(payload, now)
        assert_windows(windows)
        render_all(windows, now)


@PROPERTY
@given(payload=claude_payloads, now=moments, zone=st.sampled_from(ZONES))
@example(payload={"five_hour": {"utilization": 5, "resets_at": "0001-01-01T00:00:00Z"}},
         now=datetime(2026, 10, 1, tzinfo=UTC), zone="America/Los_Angeles")
@example(payload={"five_hour": {"utilization": 5, "resets_at": "9999-12-31T23:59:59Z"}},
         now=datetime(2026, 10, 1, tzinfo=UTC), zone="Pacific/Kiritimati")
def test_claude_parse_usage_any_json_gives_sane_windows(payload, now, zone):
    with local_zone(zone):
        windows = claude.parse_usage(payload, now)
        assert_windows(windows)
        render_all(windows, now)


@PROPERTY
@given(payload=st.one_of(json_values, codex_payloads, claude_payloads,
                         objects_with(GENERIC_KEYS, objects_with(GENERIC_KEYS, scalars))),
       now=moments, zone=st.sampled_from(ZONES))
@example(payload={"five_hour": {"used_fraction": 0.4, "reset": "0001-01-01T00:00:00Z"}},
         now=datetime(2026, 10, 1, tzinfo=UTC), zone="Pacific/Kiritimati")
def test_parse_generic_windows_any_json_gives_sane_windows_one_per_title(payload, now, zone):
    with local_zone(zone):
        windows = parsing.parse_generic_windows(payload, now)
        assert_windows(windows)
    titles = [window.title for window in windows]
    assert len(titles) == len(set(titles))
    assert titles == [title for title in parsing.GENERIC_ORDER if title in titles]


@PROPERTY
@given(value=json_values)
@example(value=10 ** 400)
@example(value="1e400")
@example(value=True)
def test_number_value_any_json_gives_none_or_a_finite_float(value):
    number = parsing.number_value(value)
    assert number is None or (isinstance(number, float) and math.isfinite(number))
    if isinstance(value, bool):
        assert number is None


@PROPERTY
@given(value=json_values)
@example(value="0001-01-01T00:00:00+23:59")
@example(value=-(10 ** 400))
@example(value=float("nan"))
def test_parse_timestamp_any_json_gives_none_or_an_aware_utc_moment(value):
    moment = parsing.parse_timestamp(value)
    assert moment is None or (isinstance(moment, datetime) and moment.utcoffset() is not None
                              and moment.utcoffset().total_seconds() == 0)


type_values = st.one_of(
    json_values,
    st.builds(lambda name, before, after, upper: before + (name.upper() if upper else name)
              + after,
              st.sampled_from(["claude", "codex", "gemini", "qwen", "antigravity", "kimi"]),
              st.sampled_from(["", " ", "\t", "\n"]), st.sampled_from(["", " ", "\n"]),
              st.booleans()))
TOKEN_KEYS = ["access_token", "refresh_token", "id_token"]
credentials_objects = st.builds(
    lambda known, tokens, type_, has_type: {**known, **tokens,
                                            **({"type": type_} if has_type else {})},
    st.dictionaries(st.sampled_from(CREDENTIAL_KEYS), json_values, max_size=8),
    st.dictionaries(st.sampled_from(TOKEN_KEYS), st.sampled_from(SECRETS), max_size=3),
    type_values, st.booleans())


@PROPERTY
@given(data=credentials_objects)
@example(data={"type": "claude", "expired": "0001-01-01T00:00:00+23:59", "disabled": "true",
               "access_token": SECRETS[0]})
@example(data={"type": "qwen", "access_token": SECRETS[0], "refresh_token": SECRETS[1]})
@example(data={"type": "\x1b[31m" + "x" * 500})
def test_account_from_json_any_object_gives_account_or_short_skip(data):
    with package_logs() as logs:
        result = accounts.account_from_json("x.json", "/auth/x.json", data)
    assert isinstance(result, (AuthAccount, Skipped))
    if isinstance(result, Skipped):
        assert result.reason.startswith(("unreadable: ", "unsupported type '"))
        assert len(result.reason) < 100
        assert result.reason.isprintable(), repr(result.reason)
        assert result.provider is None and result.email is None
    else:
        assert result.provider.value == data["type"].strip().lower()
        assert result.expired is None or result.expired.utcoffset() is not None
        assert isinstance(result.is_expired, bool)
        assert isinstance(result.display_name, str) and result.display_name
        assert result.is_disabled is (data.get("disabled") is True)
        assert result.email is None or (isinstance(result.email, str) and result.email)
    shown = [repr(result), str(result)] + logs
    if isinstance(result, Skipped):
        shown.append(result.reason)
    for secret in SECRETS:
        for text in shown:
            assert secret not in text and secret[12:36] not in text
