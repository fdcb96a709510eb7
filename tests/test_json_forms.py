"""The JSON form of the models (one home for the state file and the JSON report): round trips,
the report's extra keys, and damaged stored values read as nothing rather than as garbage."""
import json
from datetime import datetime, timezone

import pytest

from oauth_usage_tracker import json_forms as module
from oauth_usage_tracker.models import (AccountDetails, AccountUsage, Credits, ExtraUsage, Pace,
                                        Provider, SpendLimit, UsageWindow)
from oauth_usage_tracker.render import render_table
from oauth_usage_tracker.report import Report

NOW = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)
RESET = datetime(2026, 11, 24, 16, 0, tzinfo=timezone.utc)
WINDOW = UsageWindow("five_hour", "5-hour", 40.0, RESET, reset_text="in 2h", severity="normal",
                     is_active=True, locked_reason=None, length_seconds=18000.0,
                     pace=Pace(60.0, -20.0, None, False))
DETAILS = AccountDetails(
    plan="team",
    credits=Credits(balance=31.84, unlimited=False, has_credits=True,
                    spend_limit=SpendLimit(3000.0, 462.04, 2537.96, 15.0, RESET)),
    extra_usage=ExtraUsage(12.4, 50.0, "USD", 24.8))


def test_window_round_trips_through_its_stored_form():
    stored = module.window_to_json(WINDOW)
    assert list(stored) == ["key", "title", "used_percent", "reset_date", "severity",
                            "is_active", "locked_reason", "length_seconds"]
    back = module.window_from_json(json.loads(json.dumps(stored)))
    assert (back.key, back.title, back.used_percent, back.reset_date, back.severity,
            back.is_active, back.length_seconds) == ("five_hour", "5-hour", 40.0, RESET,
                                                     "normal", True, 18000.0)
    assert back.pace is None and back.reset_text is None  # worked out again, never stored


def test_window_report_form_adds_what_is_worked_out_in_report_order():
    data = module.window_to_json(WINDOW, report=True)
    assert list(data) == ["key", "title", "used_percent", "remaining_percent", "reset_date",
                          "reset_text", "severity", "is_active", "locked_reason",
                          "length_seconds", "pace"]
    assert data["remaining_percent"] == 60.0 and data["reset_date"] == "2026-11-24T16:00:00Z"
    assert data["pace"]["delta_percent"] == -20.0


@pytest.mark.parametrize("raw", [None, [], {"key": "k"}, {"key": 1, "title": "t"}])
def test_window_from_json_without_key_and_title_is_none(raw):
    assert module.window_from_json(raw) is None


def test_window_from_json_wrong_types_read_as_none():
    window = module.window_from_json({"key": "k", "title": "t", "used_percent": "lots",
                                      "severity": 3, "is_active": "yes", "length_seconds": -5,
                                      "reset_date": "soon"})
    assert (window.used_percent, window.severity, window.is_active, window.length_seconds,
            window.reset_date) == (None, None, None, None, None)


def test_details_round_trip_through_json():
    data = json.loads(json.dumps(module.details_to_json(DETAILS)))
    assert data["credits"] == {"balance": 31.84, "unlimited": False, "has_credits": True,
                               "spend_limit": {"limit": 3000.0, "used": 462.04,
                                               "remaining": 2537.96, "used_percent": 15.0,
                                               "reset_date": "2026-11-24T16:00:00Z"}}
    assert module.details_from_json(data) == DETAILS


def test_details_to_json_leaves_out_what_is_unknown():
    assert module.details_to_json(AccountDetails()) == {}
    only_spend = Credits(spend_limit=SpendLimit(1.0), reported=False)
    assert module.credits_json(only_spend) == {"spend_limit": {
        "limit": 1.0, "used": None, "remaining": None, "used_percent": None, "reset_date": None}}
    assert module.details_from_json({"credits": module.credits_json(only_spend)}).credits \
        == only_spend


def test_damaged_stored_details_read_as_nothing_and_still_render():
    details = module.details_from_json({"plan": 7, "credits": {"balance": "much",
                                                               "unlimited": "no",
                                                               "spend_limit": [1]},
                                        "extra_usage": {"used": {}, "currency": 5}})
    assert details.plan is None
    assert details.credits == Credits(balance=None, reported=True)
    assert details.extra_usage == ExtraUsage()
    account = details.apply(AccountUsage(id="codex-a.json", provider=Provider.CODEX,
                                         windows=(WINDOW,)))
    text = render_table(Report(accounts=(account,), skipped=(), generated_at=NOW))
    assert "extra usage: ? of ? used" in text


@pytest.mark.parametrize("raw", [None, "x", [1]])
def test_details_from_json_not_an_object_is_empty(raw):
    assert module.details_from_json(raw) == AccountDetails()
