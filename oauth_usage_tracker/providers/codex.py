"""Codex (ChatGPT) usage: `GET /backend-api/wham/usage`. Codex tokens are never refreshed here:
CLIProxyAPI refreshes them days ahead."""
from datetime import datetime, timedelta, timezone
from typing import Any, List, Optional

import requests

from .. import http
from ..config import Settings
from ..credentials import read_json_object, token_field
from ..errors import CredentialError, ProviderError
from ..models import AccountUsage, AuthAccount, UsageWindow
from ..parsing import make_window, number_value, parse_generic_windows, parse_timestamp

WHAT = "Codex usage"
NO_WINDOWS = "Usage response did not include quota windows"
_WINDOWS = (("primary_window", "5-hour"), ("secondary_window", "Weekly"))


def window_title(seconds: Optional[float], fallback: str) -> str:
    """Given a window's `limit_window_seconds`, return its title: 18000 is "5-hour", 604800
    "Weekly", whole days "N-day", else "N-hour"; no usable length gives `fallback`."""
    if seconds is None or seconds <= 0:
        return fallback
    if abs(seconds - 18000) < 60:
        return "5-hour"
    if abs(seconds - 604800) < 3600:
        return "Weekly"
    if seconds >= 86400 and seconds % 86400 == 0:
        return "%d-day" % (seconds // 86400)
    return "%d-hour" % max(1, round(seconds / 3600))


def parse_window(key: str, fallback_title: str, raw: Any, now: datetime) -> Optional[UsageWindow]:
    """Given one `*_window` object of a rate limit, return its UsageWindow, or None when it is
    null or tells nothing. `used_percent` is already a percentage."""
    if not isinstance(raw, dict):
        return None
    title = window_title(number_value(raw.get("limit_window_seconds")), fallback_title)
    reset = parse_timestamp(raw.get("reset_at"))
    if reset is None:
        after = number_value(raw.get("reset_after_seconds"))
        if after is not None and 0 <= after < 10 ** 9:
            reset = now + timedelta(seconds=after)
    return make_window(key, title, number_value(raw.get("used_percent")), reset, now)


def parse_usage(payload: Any, now: datetime) -> List[UsageWindow]:
    """Given a decoded wham/usage body and now, return its windows: `rate_limit.primary_window`
    and `secondary_window`, titled by their length; a body without `rate_limit` goes to the
    generic parser."""
    rate_limit = payload.get("rate_limit") if isinstance(payload, dict) else None
    if not isinstance(rate_limit, dict):
        return parse_generic_windows(payload, now)
    windows = []
    for key, title in _WINDOWS:
        window = parse_window(key, title, rate_limit.get(key), now)
        if window is not None:
            windows.append(window)
    return windows


def _rejected(response: http.HttpResponse) -> ProviderError:
    body = http.try_json(response)
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    detail = "token %s" % code if isinstance(code, str) and code.isidentifier() else "token rejected"
    return ProviderError(
        "Codex usage API returned %d (%s); CLIProxyAPI refreshes Codex tokens: check that it is "
        "running, or log in again" % (response.status, detail),
        status=response.status, login_problem=True)


def fetch_usage(account: AuthAccount, session: requests.Session, settings: Settings) -> AccountUsage:
    """Given a Codex account, a session and settings, return its AccountUsage. Raise
    CredentialError or ProviderError (with a sentence for people) on failure."""
    data = read_json_object(account.path)
    access_token = token_field(data, "access_token")
    if access_token is None:
        raise CredentialError("The credential file has no access_token; log in again with "
                              "CLIProxyAPI")
    headers = {"Accept": "application/json", "User-Agent": settings.codex_user_agent}
    account_id = data.get("account_id")
    if isinstance(account_id, str) and account_id.strip():
        headers["ChatGPT-Account-Id"] = account_id.strip()
    response = http.send(session, "GET", settings.codex_usage_url, what=WHAT,
                         timeout=settings.timeout, max_body=settings.max_body_bytes,
                         headers=headers, auth=http.BearerAuth(access_token))
    if response.status in (401, 403) and not response.is_html:
        raise _rejected(response)
    if response.status != 200:
        detail = ""
        if response.is_html:
            detail = "an HTML page: a Cloudflare challenge blocked the request; try again later"
        raise http.status_error(response, WHAT, detail)
    now = datetime.now(timezone.utc)
    windows = parse_usage(http.decode_json(response, WHAT), now)
    if not windows:
        raise ProviderError(NO_WINDOWS)
    return AccountUsage(id=account.id, provider=account.provider, email=account.email,
                        windows=tuple(windows), updated_at=now)
