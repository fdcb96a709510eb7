"""The JSON report, version 1: keys are added, never renamed; times are UTC with `Z`."""
from __future__ import annotations

import json
from typing import Any, Dict, Iterator

from .. import pool
from ..json_forms import credits_json, extra_usage_json, time_json, window_to_json
from ..models import AccountUsage, Skipped
from ..report import Report

VERSION = 1


def account_json(account: AccountUsage) -> Dict[str, Any]:
    """One account as JSON."""
    return {"id": account.id, "provider": account.provider.value, "email": account.email,
            "windows": [window_to_json(window, report=True) for window in account.windows],
            "error": account.error, "updated_at": time_json(account.updated_at),
            "token_refreshed": account.token_refreshed, "stale": account.stale,
            "fetched_at": time_json(account.fetched_at), "plan": account.plan,
            "credits": credits_json(account.credits),
            "extra_usage": extra_usage_json(account.extra_usage),
            "effective_remaining_percent": account.effective_remaining_percent,
            "state": account.state.value if account.state else None,
            "cooldown_until": time_json(account.cooldown_until), "source": account.source}


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
            "usable": item.usable, "next_usable_at": time_json(item.next_free),
            "next_usable_account": account.id if account is not None else None}
    return {"usable_above": report.usable_above, "providers": providers,
            "unreadable_unknown_provider": pool.unattributed_unreadable(report)}


def _document(report: Report) -> Dict[str, Any]:
    """The report's top-level keys in order, its two long arrays as `map` objects (made on use)."""
    return {"version": VERSION, "generated_at": time_json(report.generated_at),
            "accounts": map(account_json, report.accounts),
            "skipped": map(skipped_json, report.skipped),
            "summary": summary_json(report)}


def report_json(report: Report) -> Dict[str, Any]:
    """The whole report as a JSON-ready dict."""
    return {key: list(value) if isinstance(value, map) else value
            for key, value in _document(report).items()}


def iter_json(report: Report) -> Iterator[str]:
    """Given a report, yield the text of `render_json` in pieces, one account at a time, so that
    a report of thousands of accounts is never held whole, as a tree or as text. The pieces are
    what json.dumps(report_json(report), indent=2, ensure_ascii=True) writes: json escapes a
    newline inside a string, so every raw newline is indentation, shifted here by the depth."""
    yield "{"
    for position, (key, value) in enumerate(_document(report).items()):
        yield ("," if position else "") + "\n  " + json.dumps(key) + ": "
        if not isinstance(value, map):
            yield json.dumps(value, indent=2, ensure_ascii=True).replace("\n", "\n  ")
            continue
        opening = "["
        for item in value:
            yield opening + "\n    " + json.dumps(item, indent=2, ensure_ascii=True).replace(
                "\n", "\n    ")
            opening = ","
        yield "[]" if opening == "[" else "\n  ]"
    yield "\n}\n"


def render_json(report: Report) -> str:
    """Given a report, return the JSON document (indented, newline-terminated). It is ASCII:
    every other character is a `\\u` escape, so the values are exactly what the files and
    servers said (a lone surrogate included) and no escape sequence or bidi control reaches a
    terminal that shows it."""
    return "".join(iter_json(report))
