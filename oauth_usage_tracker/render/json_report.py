"""The JSON report, version 1: keys are added, never renamed; times are UTC with `Z`."""
import json
from datetime import datetime
from typing import Any, Dict, Optional

from .. import pool
from ..models import AccountUsage, Pace, Skipped, UsageWindow
from ..parsing import format_timestamp
from ..report import Report

VERSION = 1


def _time(moment: Optional[datetime]) -> Optional[str]:
    return format_timestamp(moment) if moment is not None else None


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 2)


def pace_json(pace: Optional[Pace]) -> Optional[Dict[str, Any]]:
    """A window's pace as JSON (null when it cannot be told); percentages to 2 decimals."""
    if pace is None:
        return None
    return {"expected_used_percent": _round(pace.expected_used_percent),
            "delta_percent": _round(pace.delta_percent),
            "projected_exhaustion": _time(pace.projected_exhaustion),
            "runs_out_before_reset": pace.runs_out_before_reset, "basis": pace.basis}


def window_json(window: UsageWindow) -> Dict[str, Any]:
    """One window as JSON."""
    return {"key": window.key, "title": window.title, "used_percent": window.used_percent,
            "remaining_percent": window.remaining_percent, "reset_date": _time(window.reset_date),
            "reset_text": window.reset_text, "severity": window.severity,
            "is_active": window.is_active, "locked_reason": window.locked_reason,
            "length_seconds": window.length_seconds, "pace": pace_json(window.pace)}


def account_json(account: AccountUsage) -> Dict[str, Any]:
    """One account as JSON."""
    return {"id": account.id, "provider": account.provider.value, "email": account.email,
            "windows": [window_json(window) for window in account.windows],
            "error": account.error, "updated_at": _time(account.updated_at),
            "token_refreshed": account.token_refreshed, "stale": account.stale,
            "fetched_at": _time(account.fetched_at), "plan": account.plan,
            "credits": account.credits, "extra_usage": account.extra_usage,
            "effective_remaining_percent": account.effective_remaining_percent,
            "state": account.state.value if account.state else None,
            "cooldown_until": _time(account.cooldown_until), "source": account.source}


def skipped_json(skipped: Skipped) -> Dict[str, Any]:
    """One skipped file or account as JSON; provider and email are null for non-accounts."""
    return {"id": skipped.id, "provider": skipped.provider.value if skipped.provider else None,
            "email": skipped.email, "reason": skipped.reason,
            "state": skipped.state.value if skipped.state else None, "source": skipped.source}


def summary_json(report: Report) -> Dict[str, Any]:
    """The pool summary as JSON: per provider, credential files by state, how many accounts are
    usable at `usable_above`, and the next reset that frees one."""
    providers = {}
    for item in pool.summarize(report):
        account = item.next_free_account
        providers[item.provider.value] = {
            "accounts": item.total, "states": {s.value: n for s, n in item.states.items()},
            "usable": item.usable, "next_usable_at": _time(item.next_free),
            "next_usable_account": account.id if account is not None else None}
    return {"usable_above": report.usable_above, "providers": providers,
            "unreadable_unknown_provider": pool.unattributed_unreadable(report)}


def report_json(report: Report) -> Dict[str, Any]:
    """The whole report as a JSON-ready dict."""
    return {"version": VERSION, "generated_at": _time(report.generated_at),
            "accounts": [account_json(account) for account in report.accounts],
            "skipped": [skipped_json(skipped) for skipped in report.skipped],
            "summary": summary_json(report)}


def render_json(report: Report) -> str:
    """Given a report, return the JSON document (indented, newline-terminated). It is ASCII:
    every other character is a `\\u` escape, so the values are exactly what the files and
    servers said (a lone surrogate included) and no escape sequence or bidi control reaches a
    terminal that shows it."""
    return json.dumps(report_json(report), indent=2, ensure_ascii=True) + "\n"
