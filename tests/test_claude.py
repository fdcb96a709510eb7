"""providers.claude: GET oauth/usage, its buckets, and the token refresh it may need (SPEC §6)."""
import functools
import json
import os
from datetime import datetime, timezone
from urllib.parse import parse_qs

import pytest
import requests
from freezegun import freeze_time

from oauth_usage_tracker import refresh as refresh_module
from oauth_usage_tracker.accounts import discover_accounts
from oauth_usage_tracker.config import Settings
from oauth_usage_tracker.errors import (CredentialError, ProviderError, TokenRefreshError,
                                        UsageTrackerError)
from oauth_usage_tracker.models import Provider
from oauth_usage_tracker.providers import claude as module

from support import CLAUDE_ACCESS, CLAUDE_REFRESH, load_payload

USAGE_URL = "https://api.anthropic.com/api/oauth/usage"
TOKEN_URL = "https://platform.claude.com/v1/oauth/token"
CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
NOW = datetime(2026, 10, 1, 12, 0, 0, tzinfo=timezone.utc)
PAST = "2000-01-01T00:00:00Z"  # expired whatever the clock says, for tests that do not freeze it
SETTINGS = Settings(timeout=1)

GRANT = load_payload("claude_token_refresh_ok")
NEW_ACCESS = GRANT["access_token"]
NEW_REFRESH = GRANT["refresh_token"]
ONLY_ACCESS = load_payload("claude_token_no_refresh")["access_token"]

INVALID_GRANT = "Claude token was rejected (invalid_grant); log in again with CLIProxyAPI"
SCOPE = "Claude token lacks the user:profile scope that the usage endpoint needs"


@pytest.fixture
def short_invalid_grant_poll(monkeypatch):
    """The invalid_grant re-read poll lasts 2 s by default; 0.2 s is enough for these tests."""
    monkeypatch.setattr(refresh_module, "refresh_tokens",
                        functools.partial(refresh_module.refresh_tokens, invalid_grant_wait=0.2))


def make_account(auth_dir, **extra):
    path = auth_dir.claude(**extra)
    (account,) = discover_accounts(auth_dir).claude
    return account, path


def fetch(account, session, settings=SETTINGS):
    return module.fetch_usage(account, session, settings)


def fetch_error(account, session, settings=SETTINGS, kind=UsageTrackerError):
    with pytest.raises(kind) as caught:
        fetch(account, session, settings)
    return caught.value


def calls(mocked):
    return [(call.request.method, call.request.url) for call in mocked.calls]


def bearer(call):
    return call.request.headers.get("Authorization")


def body_text(call):
    body = call.request.body
    return body.decode("utf-8") if isinstance(body, bytes) else body


def listing(path):
    return sorted(os.listdir(os.path.dirname(path)))


GET = ("GET", USAGE_URL)
POST = ("POST", TOKEN_URL)


# --- the usage request ------------------------------------------------------------------------


def test_fetch_usage_sends_claude_headers_and_timeout(auth_dir, session, mocked_responses):
    account, _ = make_account(auth_dir)
    mocked_responses.get(USAGE_URL, json=load_payload("claude_max"))
    fetch(account, session)
    (call,) = mocked_responses.calls
    headers = call.request.headers
    assert headers["Authorization"] == "Bearer " + CLAUDE_ACCESS
    assert headers["anthropic-beta"] == "oauth-2025-04-20"
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"] == "claude-code/2.1.0"
    assert call.request.req_kwargs["timeout"] == 1


def test_fetch_usage_user_agent_env_override(auth_dir, session, mocked_responses):
    account, _ = make_account(auth_dir)
    settings = Settings.from_environ({"OAUTH_USAGE_TRACKER_CLAUDE_USER_AGENT": "claude-code/9.9.9"},
                                     timeout=1)
    mocked_responses.get(USAGE_URL, json=load_payload("claude_max"))
    fetch(account, session, settings)
    assert mocked_responses.calls[0].request.headers["User-Agent"] == "claude-code/9.9.9"


def test_fetch_usage_honours_endpoint_settings(auth_dir, session, mocked_responses):
    account, _ = make_account(auth_dir, expired=PAST)
    settings = Settings.from_environ({
        "OAUTH_USAGE_TRACKER_CLAUDE_USAGE_URL": "http://127.0.0.1:9/api/oauth/usage",
        "OAUTH_USAGE_TRACKER_CLAUDE_TOKEN_URL": "http://localhost:9/v1/oauth/token",
    }, timeout=1)
    mocked_responses.post("http://localhost:9/v1/oauth/token", json=GRANT)
    mocked_responses.get("http://127.0.0.1:9/api/oauth/usage", json=load_payload("claude_max"))
    assert fetch(account, session, settings).token_refreshed is True


@freeze_time(NOW)
def test_fetch_usage_max_gives_known_buckets(auth_dir, session, mocked_responses):
    account, _ = make_account(auth_dir)
    mocked_responses.get(USAGE_URL, json=load_payload("claude_max"))
    usage = fetch(account, session)
    assert usage.id == "claude-alice@example.com.json"
    assert usage.provider is Provider.CLAUDE
    assert usage.email == "alice@example.com"
    assert usage.error is None
    assert usage.updated_at == NOW
    assert usage.token_refreshed is False
    known = [w for w in usage.windows if w.key in dict(module.BUCKETS)]
    assert [(w.key, w.title, w.used_percent) for w in known] == [
        ("five_hour", "5-hour", 34.0), ("seven_day", "Weekly", 57.0),
        ("seven_day_cowork", "Weekly (Cowork)", 2.0)]
    assert known[0].reset_date == datetime(2026, 10, 1, 14, 20, 0, 412893, tzinfo=timezone.utc)
    assert known[0].reset_text.startswith("in 2 hours")


# --- parsing the buckets ------------------------------------------------------------------------


def bucket(utilization, resets_at="2026-10-05T09:00:00.123456+00:00"):
    return {"utilization": utilization, "resets_at": resets_at}


def test_parse_usage_buckets_come_in_spec_order():
    payload = {
        "seven_day_omelette": bucket(7), "seven_day_cowork": bucket(6),
        "seven_day_oauth_apps": bucket(5), "seven_day_sonnet": bucket(4),
        "seven_day_opus": bucket(3), "seven_day": bucket(2), "five_hour": bucket(1),
        "nimbus_quill": bucket(9),
    }
    windows = module.parse_usage(payload, NOW)
    assert [(w.key, w.title, w.used_percent) for w in windows] == [
        ("five_hour", "5-hour", 1.0),
        ("seven_day", "Weekly", 2.0),
        ("seven_day_opus", "Weekly (Opus)", 3.0),
        ("seven_day_sonnet", "Weekly (Sonnet)", 4.0),
        ("seven_day_oauth_apps", "Weekly (OAuth Apps)", 5.0),
        ("seven_day_cowork", "Weekly (Cowork)", 6.0),
        ("seven_day_omelette", "Weekly (Omelette)", 7.0),
        ("nimbus_quill", "Nimbus Quill", 9.0),  # unknown codenames come after the known ones
    ]


@pytest.mark.parametrize("utilization, used, left", [
    (1.0, 1.0, 99.0), (0.5, 0.5, 99.5), (0.0, 0.0, 100.0), (37, 37.0, 63.0),
    (101.0, 100.0, 0.0), (104.0, 100.0, 0.0), (-3, 0.0, 100.0),
])
def test_parse_usage_utilization_is_a_clamped_percentage(utilization, used, left):
    (window,) = module.parse_usage({"five_hour": bucket(utilization)}, NOW)
    assert window.used_percent == used
    assert window.remaining_percent == left


@pytest.mark.parametrize("raw", [None, {}, {"utilization": None}, {"utilization": True},
                                 {"utilization": "lots"}, {"utilization": float("nan")}, 42,
                                 [bucket(5)]])
def test_parse_usage_bucket_without_numeric_utilization_is_left_out(raw):
    windows = module.parse_usage({"five_hour": raw, "seven_day": bucket(2)}, NOW)
    assert [w.key for w in windows] == ["seven_day"]


def test_parse_usage_resets_at_with_microseconds_and_offset():
    (window,) = module.parse_usage(
        {"five_hour": bucket(5, "2026-10-01T16:20:00.412893+02:00")}, NOW)
    assert window.reset_date == datetime(2026, 10, 1, 14, 20, 0, 412893, tzinfo=timezone.utc)


def test_parse_usage_over_limit_is_clamped():
    windows = module.parse_usage(load_payload("claude_over_limit"), NOW)
    assert [(w.key, w.used_percent, w.remaining_percent) for w in windows] == [
        ("five_hour", 100.0, 0.0), ("seven_day", 99.5, 0.5), ("seven_day_sonnet", 55.0, 45.0),
        ("extra_usage", 24.68, 75.32)]
    assert windows[1].reset_date == datetime(2026, 11, 25, 9, 0, tzinfo=timezone.utc)


def test_parse_usage_overage_is_clamped():
    windows = [w for w in module.parse_usage(load_payload("claude_overage"), NOW)
               if w.key in dict(module.BUCKETS)]
    assert [(w.key, w.used_percent) for w in windows] == [("five_hour", 100.0),
                                                         ("seven_day", 83.0)]


def test_parse_usage_nulls_are_left_out():
    windows = [w for w in module.parse_usage(load_payload("claude_nulls"), NOW)
               if w.key in dict(module.BUCKETS)]
    assert [(w.key, w.used_percent, w.reset_date) for w in windows] == [
        ("five_hour", 0.0, None),
        ("seven_day", 3.0, datetime(2026, 10, 6, 3, 59, 59, 771204, tzinfo=timezone.utc)),
        ("seven_day_sonnet", 0.0, None)]


def test_parse_usage_legacy_pro():
    windows = [w for w in module.parse_usage(load_payload("claude_legacy_pro"), NOW)
               if w.key in dict(module.BUCKETS)]
    assert [(w.key, w.title, w.used_percent, w.reset_date) for w in windows] == [
        ("five_hour", "5-hour", 6.0,
         datetime(2025, 11, 4, 4, 59, 59, 943648, tzinfo=timezone.utc)),
        ("seven_day", "Weekly", 35.0,
         datetime(2025, 11, 6, 3, 59, 59, 943679, tzinfo=timezone.utc)),
        ("seven_day_opus", "Weekly (Opus)", 0.0, None),
        ("seven_day_sonnet", "Weekly (Sonnet)", 1.0,
         datetime(2025, 11, 6, 3, 59, 59, 943702, tzinfo=timezone.utc)),
    ]


def test_parse_usage_limits_array_flat_buckets():
    windows = [w for w in module.parse_usage(load_payload("claude_limits_array"), NOW)
               if w.key in dict(module.BUCKETS)]
    assert [(w.key, w.used_percent) for w in windows] == [("five_hour", 96.0),
                                                         ("seven_day", 71.0)]


@pytest.mark.parametrize("body", [load_payload("claude_all_null"), {}, [], "text"])
def test_fetch_usage_without_buckets_raises_no_windows(auth_dir, session, mocked_responses, body):
    account, _ = make_account(auth_dir)
    mocked_responses.get(USAGE_URL, body=json.dumps(body), content_type="application/json")
    error = fetch_error(account, session, kind=ProviderError)
    assert str(error) == "Usage response did not include quota windows"


# --- expiry and the refresh before the read --------------------------------------------------------


@freeze_time(NOW)
@pytest.mark.parametrize("expired", ["2026-10-01T11:59:59Z", "2026-10-01T12:00:00Z",
                                     "2026-10-01T13:59:00+02:00", 1790855000])
def test_fetch_usage_expired_token_is_refreshed_first(auth_dir, session, mocked_responses,
                                                      expired):
    account, path = make_account(auth_dir, expired=expired)
    seen_on_disk = []

    def usage(request):
        # The new tokens must be on disk before the usage read (the old refresh token is spent).
        seen_on_disk.append(json.loads(path.read_text())["access_token"])
        return 200, {}, json.dumps(load_payload("claude_max"))

    mocked_responses.post(TOKEN_URL, json=GRANT)
    mocked_responses.add_callback("GET", USAGE_URL, callback=usage,
                                  content_type="application/json")
    usage_result = fetch(account, session)
    assert calls(mocked_responses) == [POST, GET]
    assert bearer(mocked_responses.calls[1]) == "Bearer " + NEW_ACCESS
    assert seen_on_disk == [NEW_ACCESS]
    assert usage_result.token_refreshed is True
    assert usage_result.windows
    on_disk = json.loads(path.read_text())
    assert on_disk["access_token"] == NEW_ACCESS
    assert on_disk["refresh_token"] == NEW_REFRESH
    assert on_disk["expired"] == "2026-10-01T20:00:00Z"  # now + 28800 s
    assert on_disk["last_refresh"] == "2026-10-01T12:00:00Z"


@freeze_time(NOW)
@pytest.mark.parametrize("expired", ["2026-10-01T12:00:01Z", "2026-10-01T14:30:00+02:00",
                                     "not a date", None])
def test_fetch_usage_unexpired_or_unknown_expiry_is_not_refreshed(auth_dir, session,
                                                                  mocked_responses, expired):
    account, path = make_account(auth_dir, expired=expired)
    before = path.read_bytes()
    mocked_responses.get(USAGE_URL, json=load_payload("claude_max"))
    usage = fetch(account, session)
    assert calls(mocked_responses) == [GET]
    assert bearer(mocked_responses.calls[0]) == "Bearer " + CLAUDE_ACCESS
    assert usage.token_refreshed is False
    assert path.read_bytes() == before


def test_fetch_usage_missing_access_token_is_refreshed_first(auth_dir, session,
                                                             mocked_responses):
    account, _ = make_account(auth_dir, access_token="")
    mocked_responses.post(TOKEN_URL, json=GRANT)
    mocked_responses.get(USAGE_URL, json=load_payload("claude_max"))
    assert fetch(account, session).token_refreshed is True
    assert calls(mocked_responses) == [POST, GET]
    assert bearer(mocked_responses.calls[1]) == "Bearer " + NEW_ACCESS


def test_fetch_usage_expired_without_refresh_token_raises_and_sends_nothing(
        auth_dir, session, mocked_responses):
    account, path = make_account(auth_dir, expired=PAST, refresh_token="")
    before = path.read_bytes()
    error = fetch_error(account, session, kind=CredentialError)
    assert "refresh_token" in str(error)
    assert len(mocked_responses.calls) == 0
    assert path.read_bytes() == before


# --- the token request --------------------------------------------------------------------------


def test_token_request_is_form_encoded_with_exact_body(auth_dir, session, mocked_responses):
    odd_token = "sk-ant-ort01-a+b/c=d~e_f.g-h"
    account, _ = make_account(auth_dir, expired=PAST, refresh_token=odd_token)
    mocked_responses.post(TOKEN_URL, json=GRANT)
    mocked_responses.get(USAGE_URL, json=load_payload("claude_max"))
    fetch(account, session)
    post = mocked_responses.calls[0]
    assert post.request.method == "POST"
    assert body_text(post) == (
        "grant_type=refresh_token&client_id=9d1c250a-e61b-44d9-88ed-5944d1962f5e"
        "&refresh_token=sk-ant-ort01-a%2Bb%2Fc%3Dd~e_f.g-h")
    assert parse_qs(body_text(post)) == {"grant_type": ["refresh_token"],
                                         "client_id": [CLIENT_ID],
                                         "refresh_token": [odd_token]}
    assert post.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert post.request.headers["User-Agent"] == "axios/1.15.2"
    assert post.request.req_kwargs["timeout"] == 1


def test_token_request_sends_the_file_refresh_token(auth_dir, session, mocked_responses):
    account, _ = make_account(auth_dir, expired=PAST)
    mocked_responses.post(TOKEN_URL, json=GRANT)
    mocked_responses.get(USAGE_URL, json=load_payload("claude_max"))
    fetch(account, session)
    assert parse_qs(body_text(mocked_responses.calls[0]))["refresh_token"] == [CLAUDE_REFRESH]


def test_token_user_agent_env_override_and_agents_never_mixed(auth_dir, session,
                                                              mocked_responses):
    account, _ = make_account(auth_dir, expired=PAST)
    settings = Settings.from_environ({
        "OAUTH_USAGE_TRACKER_CLAUDE_TOKEN_USER_AGENT": "axios/9.0.0",
        "OAUTH_USAGE_TRACKER_CLAUDE_USER_AGENT": "claude-code/3.0.0",
    }, timeout=1)
    mocked_responses.post(TOKEN_URL, json=GRANT)
    mocked_responses.get(USAGE_URL, json=load_payload("claude_max"))
    fetch(account, session, settings)
    post, get = mocked_responses.calls
    assert post.request.headers["User-Agent"] == "axios/9.0.0"
    assert get.request.headers["User-Agent"] == "claude-code/3.0.0"


def test_default_agents_never_mixed(auth_dir, session, mocked_responses):
    account, _ = make_account(auth_dir, expired=PAST)
    mocked_responses.post(TOKEN_URL, json=GRANT)
    mocked_responses.get(USAGE_URL, json=load_payload("claude_max"))
    fetch(account, session)
    post, get = mocked_responses.calls
    assert post.request.headers["User-Agent"] == "axios/1.15.2"
    assert get.request.headers["User-Agent"] == "claude-code/2.1.0"
    assert "python-requests" not in post.request.headers["User-Agent"]


def test_refresh_response_without_refresh_token_keeps_the_old_one(auth_dir, session,
                                                                  mocked_responses):
    account, path = make_account(auth_dir, expired=PAST)
    mocked_responses.post(TOKEN_URL, json=load_payload("claude_token_no_refresh"))
    mocked_responses.get(USAGE_URL, json=load_payload("claude_max"))
    assert fetch(account, session).token_refreshed is True
    assert bearer(mocked_responses.calls[1]) == "Bearer " + ONLY_ACCESS
    on_disk = json.loads(path.read_text())
    assert on_disk["access_token"] == ONLY_ACCESS
    assert on_disk["refresh_token"] == CLAUDE_REFRESH


@freeze_time(NOW)
@pytest.mark.parametrize("expires_in", ["missing", None, "soon", 0, -60, True])
def test_refresh_response_without_usable_expires_in_means_one_hour(auth_dir, session,
                                                                   mocked_responses, expires_in):
    account, path = make_account(auth_dir, expired="2026-10-01T11:00:00Z")
    grant = {"token_type": "Bearer", "access_token": NEW_ACCESS, "refresh_token": NEW_REFRESH}
    if expires_in != "missing":
        grant["expires_in"] = expires_in
    mocked_responses.post(TOKEN_URL, json=grant)
    mocked_responses.get(USAGE_URL, json=load_payload("claude_max"))
    fetch(account, session)
    on_disk = json.loads(path.read_text())
    assert on_disk["expired"] == "2026-10-01T13:00:00Z"
    assert on_disk["last_refresh"] == "2026-10-01T12:00:00Z"


@pytest.mark.parametrize("reply", [
    dict(status=500, json={"error": "server_error"}),
    dict(status=503, body=b"<html>Service Unavailable</html>", content_type="text/html"),
    dict(status=200, body=b"this is not json", content_type="application/json"),
    dict(status=200, json={"token_type": "Bearer", "expires_in": 28800}),
    dict(status=200, json={"access_token": ""}),
    dict(status=200, body=b"", content_type="application/json"),
    dict(status=400, json=load_payload("claude_token_invalid_request")),
    dict(status=429, json=load_payload("claude_token_429"), headers={"Retry-After": "60"}),
    dict(status=403, json={"error": "forbidden"}),
    dict(body=requests.exceptions.ReadTimeout("read timed out")),
    dict(body=requests.exceptions.ConnectionError("Connection reset by peer")),
])
def test_failed_refresh_is_reported_not_resent_and_leaves_file_alone(
        auth_dir, session, mocked_responses, reply):
    account, path = make_account(auth_dir, expired=PAST)
    before = path.read_bytes()
    mocked_responses.post(TOKEN_URL, **reply)
    error = fetch_error(account, session, kind=TokenRefreshError)
    assert calls(mocked_responses) == [POST]
    assert path.read_bytes() == before
    assert error.token_refreshed is False
    assert str(error).startswith("Claude token refresh")
    assert not [name for name in listing(path) if name.endswith(".tmp")]


def test_refresh_timeout_message_names_the_timeout(auth_dir, session, mocked_responses):
    account, _ = make_account(auth_dir, expired=PAST)
    mocked_responses.post(TOKEN_URL, body=requests.exceptions.ReadTimeout("read timed out"))
    error = fetch_error(account, session, kind=TokenRefreshError)
    assert str(error) == "Claude token refresh request timed out after 1 s"


def test_refresh_429_message_names_status_and_retry_after(auth_dir, session, mocked_responses):
    account, _ = make_account(auth_dir, expired=PAST)
    mocked_responses.post(TOKEN_URL, json=load_payload("claude_token_429"), status=429,
                          headers={"Retry-After": "60"})
    error = fetch_error(account, session, kind=TokenRefreshError)
    assert str(error) == "Claude token refresh API returned 429 (rate limited; retry after 60 s)"
    assert error.retry_after == 60


def test_refresh_5xx_message_names_status(auth_dir, session, mocked_responses):
    account, _ = make_account(auth_dir, expired=PAST)
    mocked_responses.post(TOKEN_URL, json={"error": "x"}, status=502)
    error = fetch_error(account, session, kind=TokenRefreshError)
    assert str(error) == "Claude token refresh API returned 502 (server error; try again later)"


@pytest.mark.usefixtures("short_invalid_grant_poll")
def test_invalid_grant_tells_to_log_in_again(auth_dir, session, mocked_responses):
    account, path = make_account(auth_dir, expired=PAST)
    before = path.read_bytes()
    mocked_responses.post(TOKEN_URL, json=load_payload("claude_token_invalid_grant"), status=400)
    error = fetch_error(account, session, kind=TokenRefreshError)
    assert str(error) == INVALID_GRANT
    assert error.invalid_grant is True
    assert error.login_problem is True
    assert error.token_refreshed is False
    assert calls(mocked_responses) == [POST]
    assert path.read_bytes() == before


# --- 401 / 403 / 429 on the usage read ------------------------------------------------------------


@pytest.mark.parametrize("status, name", [(401, "claude_401_token_expired"),
                                          (401, "claude_401_invalid_bearer"),
                                          (403, "claude_403_revoked")])
def test_rejected_token_is_refreshed_once_and_read_retried_once(auth_dir, session,
                                                                mocked_responses, status, name):
    account, path = make_account(auth_dir)
    mocked_responses.get(USAGE_URL, json=load_payload(name), status=status)
    mocked_responses.post(TOKEN_URL, json=GRANT)
    mocked_responses.get(USAGE_URL, json=load_payload("claude_max"))
    usage = fetch(account, session)
    assert calls(mocked_responses) == [GET, POST, GET]
    assert bearer(mocked_responses.calls[0]) == "Bearer " + CLAUDE_ACCESS
    assert bearer(mocked_responses.calls[2]) == "Bearer " + NEW_ACCESS
    assert usage.token_refreshed is True
    assert usage.windows
    assert json.loads(path.read_text())["refresh_token"] == NEW_REFRESH


@pytest.mark.parametrize("status", [401, 403])
def test_second_rejection_is_the_error_and_no_second_refresh(auth_dir, session,
                                                             mocked_responses, status):
    account, path = make_account(auth_dir)
    rejection = load_payload("claude_401_token_expired" if status == 401 else "claude_403_revoked")
    mocked_responses.get(USAGE_URL, json=rejection, status=status)
    mocked_responses.post(TOKEN_URL, json=GRANT)
    mocked_responses.get(USAGE_URL, json=rejection, status=status)
    error = fetch_error(account, session, kind=ProviderError)
    assert str(error) == "Claude usage returned %d after refresh retry" % status
    assert calls(mocked_responses) == [GET, POST, GET]
    assert error.token_refreshed is True
    assert error.login_problem is True
    # The rotation itself succeeded and must have been kept.
    assert json.loads(path.read_text())["access_token"] == NEW_ACCESS


def test_rejection_after_refreshing_an_expired_token_does_not_refresh_again(
        auth_dir, session, mocked_responses):
    account, _ = make_account(auth_dir, expired=PAST)
    mocked_responses.post(TOKEN_URL, json=GRANT)
    mocked_responses.get(USAGE_URL, json=load_payload("claude_401_token_expired"), status=401)
    error = fetch_error(account, session, kind=ProviderError)
    assert str(error) == "Claude usage returned 401 after refresh retry"
    assert calls(mocked_responses) == [POST, GET]
    assert error.token_refreshed is True


def test_scope_403_is_reported_without_refresh(auth_dir, session, mocked_responses):
    account, path = make_account(auth_dir)
    before = path.read_bytes()
    mocked_responses.get(USAGE_URL, json=load_payload("claude_403_scope"), status=403)
    error = fetch_error(account, session, kind=ProviderError)
    assert str(error) == SCOPE
    assert calls(mocked_responses) == [GET]
    assert error.token_refreshed is False
    assert path.read_bytes() == before


@pytest.mark.parametrize("retry_after, message", [
    ("300", "Claude usage API returned 429 (rate limited; retry after 300 s)"),
    (None, "Claude usage API returned 429 (rate limited)"),
])
def test_429_is_reported_without_refresh_or_retry(auth_dir, session, mocked_responses,
                                                  retry_after, message):
    account, path = make_account(auth_dir)
    before = path.read_bytes()
    headers = {"Retry-After": retry_after} if retry_after else {}
    mocked_responses.get(USAGE_URL, json=load_payload("claude_429"), status=429, headers=headers)
    error = fetch_error(account, session, kind=ProviderError)
    assert str(error) == message
    assert error.status == 429
    assert calls(mocked_responses) == [GET]
    assert path.read_bytes() == before


@pytest.mark.parametrize("status", [500, 502, 503])
def test_usage_5xx_is_reported_without_refresh(auth_dir, session, mocked_responses, status):
    account, path = make_account(auth_dir)
    before = path.read_bytes()
    mocked_responses.get(USAGE_URL, json={"type": "error"}, status=status)
    error = fetch_error(account, session, kind=ProviderError)
    assert str(error) == "Claude usage API returned %d (server error; try again later)" % status
    assert calls(mocked_responses) == [GET]
    assert path.read_bytes() == before


def test_usage_timeout_is_reported_without_refresh(auth_dir, session, mocked_responses):
    account, _ = make_account(auth_dir)
    mocked_responses.get(USAGE_URL, body=requests.exceptions.ReadTimeout("read timed out"))
    error = fetch_error(account, session, kind=ProviderError)
    assert str(error) == "Claude usage request timed out after 1 s"
    assert calls(mocked_responses) == [GET]


@pytest.mark.usefixtures("short_invalid_grant_poll")
def test_invalid_grant_after_401_is_the_error(auth_dir, session, mocked_responses):
    account, path = make_account(auth_dir)
    before = path.read_bytes()
    mocked_responses.get(USAGE_URL, json=load_payload("claude_401_token_expired"), status=401)
    mocked_responses.post(TOKEN_URL, json=load_payload("claude_token_invalid_grant"), status=400)
    error = fetch_error(account, session, kind=TokenRefreshError)
    assert str(error) == INVALID_GRANT
    assert calls(mocked_responses) == [GET, POST]
    assert path.read_bytes() == before


def test_failed_refresh_after_401_is_not_resent(auth_dir, session, mocked_responses):
    account, path = make_account(auth_dir)
    before = path.read_bytes()
    mocked_responses.get(USAGE_URL, json=load_payload("claude_401_token_expired"), status=401)
    mocked_responses.post(TOKEN_URL, json={"error": "x"}, status=500)
    fetch_error(account, session, kind=TokenRefreshError)
    assert calls(mocked_responses) == [GET, POST]
    assert path.read_bytes() == before


def test_401_when_another_writer_rotated_uses_its_tokens_without_refresh(
        auth_dir, session, mocked_responses):
    account, path = make_account(auth_dir)

    def rejected_while_proxy_refreshes(request):
        # CLIProxyAPI refreshed the account between our read and our retry.
        data = json.loads(path.read_text())
        data.update(access_token="sk-ant-oat01-PROXYnewACCESS", refresh_token="sk-ant-ort01-PROXY",
                    expired="2099-06-01T00:00:00Z")
        path.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True))
        return 401, {}, json.dumps(load_payload("claude_401_token_expired"))

    mocked_responses.add_callback("GET", USAGE_URL, callback=rejected_while_proxy_refreshes,
                                  content_type="application/json")
    mocked_responses.get(USAGE_URL, json=load_payload("claude_max"))
    usage = fetch(account, session)
    assert calls(mocked_responses) == [GET, GET]
    assert bearer(mocked_responses.calls[1]) == "Bearer sk-ant-oat01-PROXYnewACCESS"
    assert usage.token_refreshed is False


# --- allow_token_refresh=False ----------------------------------------------------------------------


def test_no_refresh_expired_token_is_an_error_and_nothing_is_sent_or_written(
        auth_dir, session, mocked_responses):
    account, path = make_account(auth_dir, expired=PAST)
    before, files_before = path.read_bytes(), listing(path)
    error = fetch_error(account, session, SETTINGS.with_(allow_token_refresh=False))
    assert "expired" in str(error)
    assert len(mocked_responses.calls) == 0
    assert path.read_bytes() == before
    assert listing(path) == files_before


@pytest.mark.parametrize("status", [401, 403])
def test_no_refresh_rejected_token_is_an_error_and_nothing_is_written(
        auth_dir, session, mocked_responses, status):
    account, path = make_account(auth_dir)
    before, files_before = path.read_bytes(), listing(path)
    mocked_responses.get(USAGE_URL, json=load_payload("claude_401_token_expired"), status=status)
    error = fetch_error(account, session, SETTINGS.with_(allow_token_refresh=False),
                        kind=ProviderError)
    assert str(status) in str(error)
    assert calls(mocked_responses) == [GET]
    assert path.read_bytes() == before
    assert listing(path) == files_before
    assert error.token_refreshed is False


def test_no_refresh_valid_token_still_reads_usage(auth_dir, session, mocked_responses):
    account, _ = make_account(auth_dir)
    mocked_responses.get(USAGE_URL, json=load_payload("claude_max"))
    usage = fetch(account, session, SETTINGS.with_(allow_token_refresh=False))
    assert usage.windows and usage.token_refreshed is False


# --- the written file ---------------------------------------------------------------------------------


def test_refresh_keeps_every_other_key_of_the_file(auth_dir, session, mocked_responses):
    extra = dict(label="work", priority=3, headers={"X-Team": "a"}, excluded_models=["m1"],
                 disable_cooling=True, weight=1.0)
    account, path = make_account(auth_dir, expired=PAST, **extra)
    original = json.loads(path.read_text())
    mocked_responses.post(TOKEN_URL, json=GRANT)
    mocked_responses.get(USAGE_URL, json=load_payload("claude_max"))
    fetch(account, session)
    on_disk = json.loads(path.read_text())
    for key in ("access_token", "refresh_token", "expired", "last_refresh"):
        original.pop(key)
        on_disk.pop(key)
    assert on_disk == original
    assert type(on_disk["weight"]) is float and type(on_disk["priority"]) is int
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_parse_usage_sets_window_lengths_from_titles():
    from oauth_usage_tracker.providers.claude import parse_usage
    now = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)
    windows = parse_usage({"five_hour": {"utilization": 1, "resets_at": None},
                           "seven_day_opus": {"utilization": 2, "resets_at": None},
                           "nimbus_quill": {"utilization": 3, "resets_at": None},
                           "extra_usage": {"is_enabled": True, "utilization": 4}}, now)
    assert {w.key: w.length_seconds for w in windows} == {
        "five_hour": 18000, "seven_day_opus": 604800, "nimbus_quill": None, "extra_usage": None}
