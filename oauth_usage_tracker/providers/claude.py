"""Claude usage: `GET /api/oauth/usage`, and the token refresh it may need first.

One fetch sends at most one token refresh: an expired token is refreshed before the read; a 401 or
403 forces one refresh and one retry; a second rejection is the account's error.
"""
from __future__ import annotations

import logging
import re
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple
from urllib.parse import quote

import requests

from .. import http, models
from ..config import CLAUDE_CLIENT_ID, Settings
from ..credentials import read_json_object, token_field
from ..errors import CredentialError, ProviderError, TokenRefreshError, UsageTrackerError
from ..models import AuthAccount
from ..parsing import make_window, number_value, parse_timestamp, slug, title_length, unique_keys
from .answer import usage_from_answer

if TYPE_CHECKING:
    from ..grant import TokenGrant  # imported by the first refresh: most runs refresh no token
    from ..models import AccountDetails, AccountUsage, UsageWindow  # made once an answer arrives
    from ..refresh import RefreshResult

logger = logging.getLogger(__name__)

WHAT = "Claude usage"
WHAT_TOKEN = "Claude token refresh"
BETA = "oauth-2025-04-20"
SCOPE_MESSAGE = "Claude token lacks the user:profile scope that the usage endpoint needs"
INVALID_GRANT_MESSAGE = "Claude token was rejected (invalid_grant); log in again with CLIProxyAPI"

BUCKETS: Tuple[Tuple[str, str], ...] = (
    ("five_hour", "5-hour"),
    ("seven_day", "Weekly"),
    ("seven_day_opus", "Weekly (Opus)"),
    ("seven_day_sonnet", "Weekly (Sonnet)"),
    ("seven_day_oauth_apps", "Weekly (OAuth Apps)"),
    ("seven_day_cowork", "Weekly (Cowork)"),
    ("seven_day_omelette", "Weekly (Omelette)"),
)


_NOT_BUCKETS = frozenset({"extra_usage"})
#: The keys parse_usage does not read as codename buckets, and each known title's place.
_KNOWN_KEYS = frozenset(key for key, _ in BUCKETS) | _NOT_BUCKETS
_TITLE_ORDER = {title: place for place, (_, title) in enumerate(BUCKETS)}


def parse_bucket(key: str, title: str, raw: Any, now: datetime) -> Optional[UsageWindow]:
    """Given one bucket, return its window: it counts only as an object with a numeric
    `utilization`, which is already a percentage (1.0 is 1 %)."""
    if not isinstance(raw, dict):
        return None
    used = number_value(raw.get("utilization"))
    if used is None:
        return None
    locked = raw.get("locked_reason")
    return make_window(key, title, used, parse_timestamp(raw.get("resets_at")), now,
                       title_length(title),
                       locked_reason=locked.strip() if isinstance(locked, str) and locked.strip()
                       else None)


def codename_title(key: str) -> str:
    """Given an unknown bucket's key, return a readable title: `seven_day_tangelo` is
    "Weekly (Tangelo)", `nimbus_quill` is "Nimbus Quill"."""
    for prefix, title in (("seven_day_", "Weekly"), ("five_hour_", "5-hour")):
        if key.startswith(prefix) and len(key) > len(prefix):
            return "%s (%s)" % (title, _words(key[len(prefix):]))
    return _words(key)


def _words(key: str) -> str:
    return " ".join(word.capitalize() for word in re.split(r"[_\W]+", key) if word) or key


def _limit_window(entry: Dict[str, Any], key: str, title: str,
                  now: datetime) -> Optional[UsageWindow]:
    """One `limits[]` entry as a window; `percent` is already a percentage."""
    return make_window(key, title, number_value(entry.get("percent")),
                       parse_timestamp(entry.get("resets_at")), now, title_length(title),
                       **_limit_flags(entry))


def _limit_flags(entry: Dict[str, Any]) -> Dict[str, Any]:
    """A `limits[]` entry's severity and activity, as UsageWindow's fields (None: not said)."""
    severity = entry.get("severity")
    active = entry.get("is_active")
    return {"severity": severity if isinstance(severity, str) else None,
            "is_active": active if isinstance(active, bool) else None}


def _with_limit_flags(window: UsageWindow, entry: Dict[str, Any]) -> UsageWindow:
    return replace(window, **_limit_flags(entry))


def _scoped_name(entry: Dict[str, Any]) -> Optional[str]:
    scope = entry.get("scope")
    model = scope.get("model") if isinstance(scope, dict) else None
    if not isinstance(model, dict):
        return None
    for field_name in ("display_name", "id"):
        value = model.get(field_name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def parse_usage(payload: Any, now: datetime) -> List[UsageWindow]:
    """Given a decoded oauth/usage body and now, return its windows: the known buckets in order
    (null ones left out), where missing filled from `limits[]` (`session` is the 5-hour window,
    `weekly_all` the weekly one); then one window per model from `weekly_scoped` limits; then
    unknown codename buckets with a usable utilization; then "Extra usage" when enabled. No
    title appears twice: a limit that matches a bucket lends it its severity instead."""
    if not isinstance(payload, dict):
        return []
    windows: Dict[str, UsageWindow] = {}
    for key, title in BUCKETS:
        window = parse_bucket(key, title, payload.get(key), now)
        if window is not None:
            windows[title] = window
    limits = payload.get("limits")
    for entry in limits if isinstance(limits, list) else []:
        if not isinstance(entry, dict):
            continue
        kind = entry.get("kind")
        name = _scoped_name(entry) if kind == "weekly_scoped" else None
        if kind == "session":
            key, title = "five_hour", "5-hour"
        elif kind == "weekly_all":
            key, title = "seven_day", "Weekly"
        elif name:
            key, title = "weekly_scoped:" + slug(name), "Weekly (%s)" % name
        else:
            continue
        if title in windows:
            windows[title] = _with_limit_flags(windows[title], entry)
        else:
            window = _limit_window(entry, key, title, now)
            if window is not None:
                windows[title] = window
    for key, raw in payload.items():
        if isinstance(key, str) and key not in _KNOWN_KEYS:
            window = parse_bucket(key, codename_title(key), raw, now)
            if window is not None and window.title not in windows:
                windows[window.title] = window
    extra = payload.get("extra_usage")
    if isinstance(extra, dict) and extra.get("is_enabled") is True:
        window = make_window("extra_usage", "Extra usage", number_value(extra.get("utilization")),
                             None, now)
        if window is not None:
            windows[window.title] = window
    last = len(BUCKETS)
    return unique_keys(sorted(windows.values(), key=lambda w: _TITLE_ORDER.get(w.title, last)))


def parse_details(payload: Any) -> AccountDetails:
    """Given a decoded oauth/usage body, return the account details it carries: `extra_usage`
    (when enabled) with its amounts in major units (minor units / 10**decimal_places, default 2)."""
    extra = payload.get("extra_usage") if isinstance(payload, dict) else None
    if not isinstance(extra, dict) or extra.get("is_enabled") is not True:
        return models.AccountDetails()
    places = number_value(extra.get("decimal_places"))
    scale = 10 ** int(places) if places is not None and 0 <= places <= 8 else 100
    used, limit = number_value(extra.get("used_credits")), number_value(extra.get("monthly_limit"))
    currency = extra.get("currency")
    return models.AccountDetails(extra_usage=models.ExtraUsage(
        used=None if used is None else round(used / scale, 8),
        limit=None if limit is None else round(limit / scale, 8),
        currency=currency if isinstance(currency, str) else None,
        utilization=number_value(extra.get("utilization"))))


def exchange_refresh_token(session: requests.Session, settings: Settings,
                           refresh_token: str) -> "TokenGrant":
    """Given a refresh token, send it to the token endpoint once and return the TokenGrant.
    Raise TokenRefreshError (`invalid_grant=True` when the token is spent or revoked). Never
    retried: a refresh whose outcome is unknown may already have spent the token."""
    from ..grant import TokenGrant
    body = "grant_type=refresh_token&client_id=%s&refresh_token=%s" % (
        quote(CLAUDE_CLIENT_ID, safe=""), quote(refresh_token, safe=""))
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
               "User-Agent": settings.claude_token_user_agent}
    try:
        response = http.send(session, "POST", settings.claude_token_url, what=WHAT_TOKEN,
                             timeout=settings.timeout, max_body=settings.max_body_bytes,
                             headers=headers, data=body)
    except ProviderError as error:
        raise TokenRefreshError(str(error), outcome_unknown=not error.unsent) from None
    payload = http.try_json(response)
    if response.status == 200:
        access = payload.get("access_token") if isinstance(payload, dict) else None
        if not isinstance(access, str) or not access.strip():
            raise TokenRefreshError("Claude token refresh returned no access token (HTTP 200)",
                                    outcome_unknown=True)
        new_refresh = payload.get("refresh_token")
        expires_in = number_value(payload.get("expires_in"))
        return TokenGrant(
            access_token=access,
            refresh_token=new_refresh if isinstance(new_refresh, str) and new_refresh else None,
            expires_in=expires_in if expires_in and 0 < expires_in < 10 ** 8 else 3600.0)
    if isinstance(payload, dict) and payload.get("error") == "invalid_grant":
        raise TokenRefreshError(INVALID_GRANT_MESSAGE, invalid_grant=True, status=response.status)
    failure = http.status_error(response, WHAT_TOKEN)
    # A 5xx may come after the server spent the token; a 4xx is a clear "no".
    raise TokenRefreshError(str(failure), status=failure.status, retry_after=failure.retry_after,
                            outcome_unknown=response.status >= 500, blocked=failure.blocked)


def _lacks_scope(response: "http.HttpResponse") -> bool:
    return response.status == 403 and b"user:profile" in response.body


def _refresh(account: AuthAccount, seen: Dict[str, Any], session: requests.Session,
             settings: Settings) -> "RefreshResult":
    from .. import refresh

    def exchange(refresh_token: str) -> "TokenGrant":
        return exchange_refresh_token(session, settings, refresh_token)

    result = refresh.refresh_tokens(
        account.path, seen, exchange, lambda: datetime.now(timezone.utc), settings.lock_timeout,
        directory_id=account.directory_id)
    if result.rotated:
        logger.info("%s: Claude tokens refreshed and written back", account.id)
    return result


def usage_headers(settings: Settings) -> Dict[str, str]:
    """Given settings, return the usage request's headers, without Authorization."""
    return {"Accept": "application/json", "anthropic-beta": BETA,
            "User-Agent": settings.claude_user_agent}


def rejection(response: "http.HttpResponse", after_refresh: bool = False) -> ProviderError:
    """Given a 401/403 (not an HTML page) from the usage endpoint, return the login problem it
    reports: the missing user:profile scope, or a rejected token (after this tool's refresh
    retry, or as relayed by a proxy that refreshes its own tokens)."""
    if _lacks_scope(response):
        message = SCOPE_MESSAGE
    elif after_refresh:
        message = "Claude usage returned %d after refresh retry" % response.status
    else:
        message = ("Claude usage API returned %d (token rejected); CLIProxyAPI refreshes its "
                   "own Claude tokens: log in again with CLIProxyAPI" % response.status)
    return ProviderError(message, status=response.status, login_problem=True)


def usage_from_response(account: AuthAccount, response: "http.HttpResponse") -> AccountUsage:
    """Given an account and a usage answer that is not a token rejection, return its
    AccountUsage. Raise ProviderError for a failed status, an unusable body or no windows."""
    return usage_from_answer(account, response, WHAT, parse_usage, parse_details)


def _read_usage(session: requests.Session, settings: Settings, token: str) -> "http.HttpResponse":
    headers = usage_headers(settings)
    return http.send(session, "GET", settings.claude_usage_url, what=WHAT,
                     timeout=settings.timeout, max_body=settings.max_body_bytes, headers=headers,
                     auth=http.BearerAuth(token))


def fetch_usage(account: AuthAccount, session: requests.Session,
                settings: Settings) -> AccountUsage:
    """Given a Claude account, a session and settings, return its AccountUsage, refreshing the
    token first when it has expired, or once when the usage endpoint rejects it. Raise
    UsageTrackerError subclasses (with a sentence for people) on failure; `token_refreshed` on
    the error says whether the tokens had already been rotated."""
    seen = read_json_object(account.path, directory=account.directory_id)
    token = token_field(seen, "access_token")
    expired = parse_timestamp(seen.get("expired"))
    expired_now = expired is not None and expired <= datetime.now(timezone.utc)
    refreshed = rotated = False
    try:
        if token is None or expired_now:
            if not settings.allow_token_refresh:
                raise CredentialError(
                    "Claude access token %s and token refresh is disabled"
                    % ("is missing" if token is None else "has expired"),
                    login_problem=token is None, token_expired=token is not None)
            result = _refresh(account, seen, session, settings)
            token, refreshed, rotated = result.access_token, True, result.rotated
        response = _read_usage(session, settings, token)
        if response.status in (401, 403) and not response.is_html:
            if _lacks_scope(response):
                raise ProviderError(SCOPE_MESSAGE, status=response.status, login_problem=True)
            if not settings.allow_token_refresh:
                raise ProviderError("Claude usage API returned %d (token rejected) and token "
                                    "refresh is disabled" % response.status,
                                    status=response.status, login_problem=True)
            if not refreshed:
                result = _refresh(account, seen, session, settings)
                token, refreshed, rotated = result.access_token, True, result.rotated
                response = _read_usage(session, settings, token)
            if response.status in (401, 403) and not response.is_html:
                raise rejection(response, after_refresh=True)
        usage = usage_from_response(account, response)
    except UsageTrackerError as error:
        error.token_refreshed = rotated
        raise
    # usage_from_response made it with token_refreshed False: copied only when that changes.
    return replace(usage, token_refreshed=True) if rotated else usage
