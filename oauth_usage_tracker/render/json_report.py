"""The JSON report, version 1: keys are added, never renamed; times are UTC with `Z`."""
import json
from typing import Any, Dict, Optional

from ..models import AccountUsage, Skipped, UsageWindow
from ..parsing import format_timestamp
from ..report import Report

VERSION = 1


def _time(moment) -> Optional[str]:
    return format_timestamp(moment) if moment is not None else None


def window_json(window: UsageWindow) -> Dict[str, Any]:
    """One window as JSON."""
    return {"key": window.key, "title": window.title, "used_percent": window.used_percent,
            "remaining_percent": window.remaining_percent, "reset_date": _time(window.reset_date),
            "reset_text": window.reset_text, "severity": window.severity,
            "is_active": window.is_active, "locked_reason": window.locked_reason}


def account_json(account: AccountUsage) -> Dict[str, Any]:
    """One account as JSON."""
    return {"id": account.id, "provider": account.provider.value, "email": account.email,
            "windows": [window_json(window) for window in account.windows],
            "error": account.error, "updated_at": _time(account.updated_at),
            "token_refreshed": account.token_refreshed, "stale": account.stale,
            "fetched_at": _time(account.fetched_at), "plan": account.plan,
            "credits": account.credits, "extra_usage": account.extra_usage,
            "state": account.state.value if account.state else None,
            "cooldown_until": _time(account.cooldown_until)}


def skipped_json(skipped: Skipped) -> Dict[str, Any]:
    """One skipped file or account as JSON; provider and email are null for non-accounts."""
    return {"id": skipped.id, "provider": skipped.provider.value if skipped.provider else None,
            "email": skipped.email, "reason": skipped.reason,
            "state": skipped.state.value if skipped.state else None}


def report_json(report: Report) -> Dict[str, Any]:
    """The whole report as a JSON-ready dict."""
    return {"version": VERSION, "generated_at": _time(report.generated_at),
            "accounts": [account_json(account) for account in report.accounts],
            "skipped": [skipped_json(skipped) for skipped in report.skipped]}


def render_json(report: Report) -> str:
    """Given a report, return the JSON document (indented, newline-terminated)."""
    return json.dumps(report_json(report), indent=2, ensure_ascii=False) + "\n"
