"""Codex (ChatGPT) usage: `GET /backend-api/wham/usage`. Codex tokens are never refreshed here:
CLIProxyAPI refreshes them days ahead."""
from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set

import requests

from .. import http, models
from ..config import Settings
from ..credentials import read_json_object, token_field
from ..errors import CredentialError, ProviderError
from ..models import AuthAccount
from ..parsing import (
    clamp_percent,
    make_window,
    number_value,
    parse_generic_windows,
    parse_timestamp,
    slug,
    title_length,
    unique_keys,
    window_title,
)
from .answer import usage_from_answer

if TYPE_CHECKING:  # made once an answer arrives (usage.py): looked up through models when made
    from ..models import AccountDetails, AccountUsage, UsageWindow

WHAT = "Codex usage"
_WINDOWS = (("primary_window", "5-hour"), ("secondary_window", "Weekly"))
_HEADER_SAFE = re.compile(r"[\x20-\x7e]+")


def parse_window(key: str, fallback_title: str, raw: Any, now: datetime,
                 title_prefix: str = "") -> Optional[UsageWindow]:
    """Given one `*_window` object of a rate limit, return its UsageWindow, or None when it is
    null or tells nothing. `used_percent` is already a percentage. Its title is `title_prefix`
    and the title its length gives (the length is still told from the latter)."""
    if not isinstance(raw, dict):
        return None
    seconds = number_value(raw.get("limit_window_seconds"))
    title = window_title(seconds, fallback_title)
    # The stated length wins; without one, the position's usual length (as the title says).
    length = seconds if seconds is not None and 0 < seconds < 10 ** 9 else title_length(title)
    reset = parse_timestamp(raw.get("reset_at"))
    if reset is None:
        after = number_value(raw.get("reset_after_seconds"))
        if after is not None and 0 <= after < 10 ** 9:
            reset = now + timedelta(seconds=after)
    return make_window(key, title_prefix + title, number_value(raw.get("used_percent")), reset,
                       now, length)


def _rate_limit_windows(rate_limit: Any, now: datetime, key_prefix: str = "",
                        title_prefix: str = "") -> List[UsageWindow]:
    if not isinstance(rate_limit, dict):
        return []
    windows = []
    for key, title in _WINDOWS:
        window = parse_window(key_prefix + key, title, rate_limit.get(key), now, title_prefix)
        if window is not None:
            windows.append(window)
    return windows


def parse_usage(payload: Any, now: datetime) -> List[UsageWindow]:
    """Given a decoded wham/usage body and now, return its windows: `rate_limit.primary_window`
    and `secondary_window`, titled by their length, then each `additional_rate_limits[]` entry's
    windows (`<limit_name> 5-hour`, key `<limit slug>:primary_window`); a body without
    `rate_limit` goes to the generic parser."""
    rate_limit = payload.get("rate_limit") if isinstance(payload, dict) else None
    if not isinstance(rate_limit, dict):
        return parse_generic_windows(payload, now)
    windows = _rate_limit_windows(rate_limit, now)
    extra = payload.get("additional_rate_limits")
    for entry in extra if isinstance(extra, list) else []:
        name = entry.get("limit_name") if isinstance(entry, dict) else None
        if isinstance(name, str) and slug(name):
            windows.extend(_rate_limit_windows(entry.get("rate_limit"), now,
                                               slug(name) + ":", name.strip() + " "))
    titles: Set[str] = set()
    kept = []
    for window in windows:
        if window.title not in titles:
            titles.add(window.title)
            kept.append(window)
    return unique_keys(kept)


def parse_details(payload: Any) -> AccountDetails:
    """Given a decoded wham/usage body, return the account details it carries: `plan` (from
    `plan_type`) and `credits` (`balance` as a number, `unlimited`, `has_credits`, and
    `spend_limit` from `spend_control.individual_limit`)."""
    if not isinstance(payload, dict):
        return models.AccountDetails()
    plan = payload.get("plan_type")
    raw = payload.get("credits")
    spend = payload.get("spend_control")
    limit = spend.get("individual_limit") if isinstance(spend, dict) else None
    spend_limit = models.SpendLimit(
        limit=number_value(limit.get("limit")), used=number_value(limit.get("used")),
        remaining=number_value(limit.get("remaining")),
        used_percent=clamp_percent(number_value(limit.get("used_percent"))),
        reset_date=parse_timestamp(limit.get("reset_at"))) if isinstance(limit, dict) else None
    credits = None
    if isinstance(raw, dict):
        unlimited, has_credits = raw.get("unlimited"), raw.get("has_credits")
        credits = models.Credits(balance=number_value(raw.get("balance")),
                                 unlimited=unlimited if isinstance(unlimited, bool) else None,
                                 has_credits=has_credits if isinstance(has_credits, bool) else None,
                                 spend_limit=spend_limit)
    elif spend_limit is not None:
        credits = models.Credits(spend_limit=spend_limit, reported=False)
    return models.AccountDetails(
        plan=plan.strip() if isinstance(plan, str) and plan.strip() else None, credits=credits)


def _rejected(response: "http.HttpResponse") -> ProviderError:
    body = http.try_json(response)
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    known = isinstance(code, str) and code.isidentifier()
    detail = "token %s" % code if known else "token rejected"
    return ProviderError(
        "Codex usage API returned %d (%s); CLIProxyAPI refreshes Codex tokens: check that it is "
        "running, or log in again" % (response.status, detail),
        status=response.status, login_problem=True)


def usage_headers(settings: Settings, account_id: Any) -> Dict[str, str]:
    """Given settings and the account's ChatGPT account id (anything: it comes from a file or a
    proxy's listing), return the usage request's headers, without Authorization. Raise
    CredentialError when the id holds characters a header cannot carry."""
    headers = {"Accept": "application/json", "User-Agent": settings.codex_user_agent}
    if isinstance(account_id, str) and account_id.strip():
        if not _HEADER_SAFE.fullmatch(account_id.strip()):
            raise CredentialError("The account_id holds characters a header cannot carry; log "
                                  "in again with CLIProxyAPI")
        headers["ChatGPT-Account-Id"] = account_id.strip()
    return headers


def usage_from_response(account: AuthAccount, response: "http.HttpResponse") -> AccountUsage:
    """Given an account and the usage endpoint's answer (direct, or relayed by a proxy), return
    its AccountUsage. Raise ProviderError for a rejected token (a login problem), any other
    failed status, an unusable body, or a body without windows."""
    if response.status in (401, 403) and not response.is_html:
        raise _rejected(response)
    return usage_from_answer(account, response, WHAT, parse_usage, parse_details)


def fetch_usage(account: AuthAccount, session: requests.Session,
                settings: Settings) -> AccountUsage:
    """Given a Codex account, a session and settings, return its AccountUsage. Raise
    CredentialError or ProviderError (with a sentence for people) on failure."""
    data = read_json_object(account.path, directory=account.directory_id)
    access_token = token_field(data, "access_token")
    if access_token is None:
        raise CredentialError("The credential file has no access_token; log in again with "
                              "CLIProxyAPI", login_problem=True)
    headers = usage_headers(settings, data.get("account_id"))
    response = http.send(session, "GET", settings.codex_usage_url, what=WHAT,
                         timeout=settings.timeout, max_body=settings.max_body_bytes,
                         headers=headers, auth=http.BearerAuth(access_token))
    return usage_from_response(account, response)
