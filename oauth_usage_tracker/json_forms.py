"""The JSON form of the models, written and read in one place: the state file and the JSON report
share it. Pure.

Reading is defensive: a value of the wrong type reads as None (the state file is ours, but a
damaged one must never break a run or a renderer).
"""
from __future__ import annotations

import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any, Dict, Optional

from . import models
from .parsing import clamp_percent, format_timestamp, number_value, parse_timestamp

if TYPE_CHECKING:  # created when first used (usage.py): looked up through models when made
    from .models import AccountDetails, Credits, ExtraUsage, Pace, SpendLimit, UsageWindow

Json = Dict[str, Any]


def time_json(moment: Optional[datetime]) -> Optional[str]:
    """Given an aware moment or None, return its UTC `Z` form or None."""
    return format_timestamp(moment) if moment is not None else None


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 2)


def _text(raw: Json, name: str) -> Optional[str]:
    value = raw.get(name)
    return value if isinstance(value, str) else None


def _flag(raw: Json, name: str) -> Optional[bool]:
    value = raw.get(name)
    return value if isinstance(value, bool) else None


# --- windows ------------------------------------------------------------------------------------

def pace_json(pace: Optional[Pace]) -> Optional[Json]:
    """A window's pace as JSON (null when it cannot be told); percentages to 2 decimals."""
    if pace is None:
        return None
    return {"expected_used_percent": _round(pace.expected_used_percent),
            "delta_percent": _round(pace.delta_percent),
            "projected_exhaustion": time_json(pace.projected_exhaustion),
            "runs_out_before_reset": pace.runs_out_before_reset, "basis": pace.basis}


def window_to_json(window: UsageWindow, report: bool = False) -> Json:
    """Given a window, return its JSON form: what is stored (a reading), or with `report` also
    what is worked out from it for people and scripts (remaining percent, reset text, pace)."""
    data: Json = {"key": window.key, "title": window.title, "used_percent": window.used_percent}
    if report:
        data["remaining_percent"] = window.remaining_percent
    data["reset_date"] = time_json(window.reset_date)
    if report:
        data["reset_text"] = window.reset_text
    data.update(severity=window.severity, is_active=window.is_active,
                locked_reason=window.locked_reason, length_seconds=window.length_seconds)
    if report:
        data["pace"] = pace_json(window.pace)
    return data


def is_window_json(raw: Any) -> bool:
    """True when `raw` reads as a stored window (window_from_json gives one): an object with a
    string key and title. Tells whether windows are stored without making any."""
    return isinstance(raw, dict) and isinstance(raw.get("key"), str) \
        and isinstance(raw.get("title"), str)


def window_from_json(raw: Any) -> Optional[UsageWindow]:
    """Given a stored window's JSON form, return the window, or None when it has no string key
    and title."""
    if not is_window_json(raw):
        return None
    length = number_value(raw.get("length_seconds"))
    # Keys and titles repeat across accounts: one string object each.
    return models.UsageWindow(sys.intern(raw["key"]), sys.intern(raw["title"]),
                              clamp_percent(number_value(raw.get("used_percent"))),
                              parse_timestamp(raw.get("reset_date")),
                              is_active=_flag(raw, "is_active"),
                              length_seconds=length if length is not None and length > 0
                              else None, severity=_text(raw, "severity"),
                              locked_reason=_text(raw, "locked_reason"))


# --- account details ------------------------------------------------------------------------------

def credits_json(credits: Optional[Credits]) -> Optional[Json]:
    """Codex credits as JSON: `balance` (when the server sent credits), `unlimited` and
    `has_credits` when known, `spend_limit` when set."""
    if credits is None:
        return None
    data: Json = {}
    if credits.reported:
        data["balance"] = credits.balance
    if credits.unlimited is not None:
        data["unlimited"] = credits.unlimited
    if credits.has_credits is not None:
        data["has_credits"] = credits.has_credits
    spend = credits.spend_limit
    if spend is not None:
        data["spend_limit"] = {"limit": spend.limit, "used": spend.used,
                               "remaining": spend.remaining, "used_percent": spend.used_percent,
                               "reset_date": time_json(spend.reset_date)}
    return data


def extra_usage_json(extra: Optional[ExtraUsage]) -> Optional[Json]:
    """Claude extra usage as JSON: `used`, `limit` (major units), `currency`, `utilization`."""
    if extra is None:
        return None
    return {"used": extra.used, "limit": extra.limit, "currency": extra.currency,
            "utilization": extra.utilization}


def details_to_json(details: AccountDetails) -> Json:
    """Given account details, return their JSON form with the known ones only."""
    data: Json = {"plan": details.plan, "credits": credits_json(details.credits),
                  "extra_usage": extra_usage_json(details.extra_usage)}
    return {name: value for name, value in data.items() if value is not None}


def _spend_from_json(raw: Any) -> Optional[SpendLimit]:
    if not isinstance(raw, dict):
        return None
    return models.SpendLimit(limit=number_value(raw.get("limit")),
                             used=number_value(raw.get("used")),
                             remaining=number_value(raw.get("remaining")),
                             used_percent=clamp_percent(number_value(raw.get("used_percent"))),
                             reset_date=parse_timestamp(raw.get("reset_date")))


def details_from_json(raw: Any) -> AccountDetails:
    """Given the JSON form of account details (details_to_json), return them; parts of the
    wrong type are left out."""
    if not isinstance(raw, dict):
        return models.AccountDetails()
    credits = raw.get("credits")
    extra = raw.get("extra_usage")
    plan = _text(raw, "plan")
    return models.AccountDetails(
        plan=plan,
        credits=models.Credits(balance=number_value(credits.get("balance")),
                               unlimited=_flag(credits, "unlimited"),
                               has_credits=_flag(credits, "has_credits"),
                               spend_limit=_spend_from_json(credits.get("spend_limit")),
                               reported="balance" in credits)
        if isinstance(credits, dict) else None,
        extra_usage=models.ExtraUsage(used=number_value(extra.get("used")),
                                      limit=number_value(extra.get("limit")),
                                      currency=_text(extra, "currency"),
                                      utilization=number_value(extra.get("utilization")))
        if isinstance(extra, dict) else None)
