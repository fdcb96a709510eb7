"""Claude usage: `GET /api/oauth/usage`, and the token refresh it may need first.

One fetch sends at most one token refresh: an expired token is refreshed before the read; a 401 or
403 forces one refresh and one retry; a second rejection is the account's error.
"""
import logging
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote

import requests

from .. import credentials, http
from ..config import CLAUDE_CLIENT_ID, Settings
from ..credentials import TokenGrant, read_json_object, token_field
from ..errors import CredentialError, ProviderError, TokenRefreshError, UsageTrackerError
from ..models import AccountUsage, AuthAccount, UsageWindow
from ..parsing import make_window, number_value, parse_timestamp

logger = logging.getLogger(__name__)

WHAT = "Claude usage"
WHAT_TOKEN = "Claude token refresh"
BETA = "oauth-2025-04-20"
NO_WINDOWS = "Usage response did not include quota windows"
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


def parse_bucket(key: str, title: str, raw: Any, now: datetime) -> Optional[UsageWindow]:
    """Given one bucket, return its window: it counts only as an object with a numeric
    `utilization`, which is already a percentage (1.0 is 1 %)."""
    if not isinstance(raw, dict):
        return None
    used = number_value(raw.get("utilization"))
    if used is None:
        return None
    return make_window(key, title, used, parse_timestamp(raw.get("resets_at")), now)


def parse_usage(payload: Any, now: datetime) -> List[UsageWindow]:
    """Given a decoded oauth/usage body and now, return its windows in the known bucket order;
    null buckets are left out."""
    if not isinstance(payload, dict):
        return []
    windows = []
    for key, title in BUCKETS:
        window = parse_bucket(key, title, payload.get(key), now)
        if window is not None:
            windows.append(window)
    return windows


def exchange_refresh_token(session: requests.Session, settings: Settings,
                           refresh_token: str) -> TokenGrant:
    """Given a refresh token, send it to the token endpoint once and return the TokenGrant.
    Raise TokenRefreshError (`invalid_grant=True` when the token is spent or revoked). Never
    retried: a refresh whose outcome is unknown may already have spent the token."""
    body = "grant_type=refresh_token&client_id=%s&refresh_token=%s" % (
        quote(CLAUDE_CLIENT_ID, safe=""), quote(refresh_token, safe=""))
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
               "User-Agent": settings.claude_token_user_agent}
    try:
        response = http.send(session, "POST", settings.claude_token_url, what=WHAT_TOKEN,
                             timeout=settings.timeout, max_body=settings.max_body_bytes,
                             headers=headers, data=body)
    except ProviderError as error:
        raise TokenRefreshError(str(error)) from None
    payload = http.try_json(response)
    if response.status == 200:
        access = payload.get("access_token") if isinstance(payload, dict) else None
        if not isinstance(access, str) or not access.strip():
            raise TokenRefreshError("Claude token refresh returned no access token (HTTP 200)")
        new_refresh = payload.get("refresh_token")
        expires_in = number_value(payload.get("expires_in"))
        return TokenGrant(
            access_token=access,
            refresh_token=new_refresh if isinstance(new_refresh, str) and new_refresh else None,
            expires_in=expires_in if expires_in and 0 < expires_in < 10 ** 8 else 3600.0)
    if isinstance(payload, dict) and payload.get("error") == "invalid_grant":
        raise TokenRefreshError(INVALID_GRANT_MESSAGE, invalid_grant=True, status=response.status)
    error = http.status_error(response, WHAT_TOKEN)
    raise TokenRefreshError(str(error), status=error.status, retry_after=error.retry_after)


def _lacks_scope(response: http.HttpResponse) -> bool:
    return response.status == 403 and b"user:profile" in response.body


def _refresh(account: AuthAccount, seen: Dict[str, Any], session: requests.Session,
             settings: Settings) -> credentials.RefreshResult:
    def exchange(refresh_token: str) -> TokenGrant:
        return exchange_refresh_token(session, settings, refresh_token)

    result = credentials.refresh_tokens(
        account.path, seen, exchange, lambda: datetime.now(timezone.utc), settings.lock_timeout)
    if result.rotated:
        logger.info("%s: Claude tokens refreshed and written back", account.id)
    return result


def _read_usage(session: requests.Session, settings: Settings, token: str) -> http.HttpResponse:
    headers = {"Accept": "application/json", "anthropic-beta": BETA,
               "User-Agent": settings.claude_user_agent}
    return http.send(session, "GET", settings.claude_usage_url, what=WHAT,
                     timeout=settings.timeout, max_body=settings.max_body_bytes, headers=headers,
                     auth=http.BearerAuth(token))


def fetch_usage(account: AuthAccount, session: requests.Session, settings: Settings) -> AccountUsage:
    """Given a Claude account, a session and settings, return its AccountUsage, refreshing the
    token first when it has expired, or once when the usage endpoint rejects it. Raise
    UsageTrackerError subclasses (with a sentence for people) on failure; `token_refreshed` on
    the error says whether the tokens had already been rotated."""
    seen = read_json_object(account.path)
    token = token_field(seen, "access_token")
    expired = parse_timestamp(seen.get("expired"))
    needs_refresh = token is None or (expired is not None
                                      and expired <= datetime.now(timezone.utc))
    refreshed = rotated = False
    try:
        if needs_refresh:
            if not settings.allow_token_refresh:
                raise CredentialError(
                    "Claude access token %s and token refresh is disabled"
                    % ("is missing" if token is None else "has expired"))
            result = _refresh(account, seen, session, settings)
            token, refreshed, rotated = result.access_token, True, result.rotated
        response = _read_usage(session, settings, token)
        if response.status in (401, 403):
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
            if response.status in (401, 403):
                message = (SCOPE_MESSAGE if _lacks_scope(response) else
                           "Claude usage returned %d after refresh retry" % response.status)
                raise ProviderError(message, status=response.status, login_problem=True)
        if response.status != 200:
            raise http.status_error(response, WHAT)
        now = datetime.now(timezone.utc)
        windows = parse_usage(http.decode_json(response, WHAT), now)
        if not windows:
            raise ProviderError(NO_WINDOWS)
    except UsageTrackerError as error:
        error.token_refreshed = rotated
        raise
    return AccountUsage(id=account.id, provider=account.provider, email=account.email,
                        windows=tuple(windows), updated_at=now, token_refreshed=rotated)
