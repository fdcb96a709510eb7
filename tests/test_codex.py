"""providers.codex: GET wham/usage, its headers, every sample body, every failure (SPEC §5, §9)."""
import json
from datetime import datetime, timedelta, timezone

import pytest
import requests
from freezegun import freeze_time

from oauth_usage_tracker.accounts import discover_accounts
from oauth_usage_tracker.config import Settings
from oauth_usage_tracker.errors import CredentialError, ProviderError
from oauth_usage_tracker.models import Provider
from oauth_usage_tracker.providers import codex as module

from support import CODEX_ACCESS, codex_credentials, load_payload, payload_text, write_compact

URL = "https://chatgpt.com/backend-api/wham/usage"
NOW = datetime(2026, 10, 1, 12, 0, 0, tzinfo=timezone.utc)  # the payloads' assumed "now"
SETTINGS = Settings(timeout=1)


def make_account(auth_dir, **extra):
    auth_dir.codex(**extra)
    (account,) = discover_accounts(auth_dir).codex
    return account


def fetch(auth_dir, session, settings=SETTINGS, **extra):
    return module.fetch_usage(make_account(auth_dir, **extra), session, settings)


def fetch_error(auth_dir, session, settings=SETTINGS, **extra):
    with pytest.raises(ProviderError) as caught:
        fetch(auth_dir, session, settings, **extra)
    return caught.value


def utc(timestamp):
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


def summary(windows):
    return [(w.key, w.title, w.used_percent, w.reset_date) for w in windows]


# --- request ----------------------------------------------------------------------------------


def test_fetch_usage_sends_codex_headers_and_timeout(auth_dir, session, mocked_responses):
    mocked_responses.get(URL, json=load_payload("codex_plus"))
    fetch(auth_dir, session, account_id="7d3e2c1b-0000-4000-8000-000000000001")
    (call,) = mocked_responses.calls
    headers = call.request.headers
    assert call.request.method == "GET"
    assert call.request.url == URL
    assert headers["Authorization"] == "Bearer " + CODEX_ACCESS
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"] == "codex-cli"
    assert headers["ChatGPT-Account-Id"] == "7d3e2c1b-0000-4000-8000-000000000001"
    assert call.request.req_kwargs["timeout"] == 1


def test_fetch_usage_passes_the_configured_timeout(auth_dir, session, mocked_responses):
    mocked_responses.get(URL, json=load_payload("codex_plus"))
    fetch(auth_dir, session, Settings(timeout=2.5))
    assert mocked_responses.calls[0].request.req_kwargs["timeout"] == 2.5


@pytest.mark.parametrize("account_id", ["", "   ", None])
def test_fetch_usage_empty_account_id_sends_no_account_header(auth_dir, session, mocked_responses,
                                                              account_id):
    mocked_responses.get(URL, json=load_payload("codex_plus"))
    fetch(auth_dir, session, account_id=account_id)
    assert "ChatGPT-Account-Id" not in mocked_responses.calls[0].request.headers


def test_fetch_usage_missing_account_id_sends_no_account_header(auth_dir, session,
                                                                mocked_responses):
    data = codex_credentials()
    del data["account_id"]
    write_compact(auth_dir.path / "codex-bob@example.com.json", data)
    (account,) = discover_accounts(auth_dir).codex
    mocked_responses.get(URL, json=load_payload("codex_plus"))
    module.fetch_usage(account, session, SETTINGS)
    assert "ChatGPT-Account-Id" not in mocked_responses.calls[0].request.headers


def test_fetch_usage_honours_endpoint_setting(auth_dir, session, mocked_responses):
    mocked_responses.get("http://127.0.0.1:9/wham/usage", json=load_payload("codex_plus"))
    fetch(auth_dir, session, Settings(timeout=1, codex_usage_url="http://127.0.0.1:9/wham/usage"))
    assert len(mocked_responses.calls) == 1


@pytest.mark.parametrize("token", [None, "", "   "])
def test_fetch_usage_without_access_token_raises_and_sends_nothing(auth_dir, session,
                                                                   mocked_responses, token):
    with pytest.raises(CredentialError) as caught:
        fetch(auth_dir, session, access_token=token)
    assert "access_token" in str(caught.value)
    assert len(mocked_responses.calls) == 0


@pytest.mark.parametrize("token", ["abc\r\nX-Injected: 1", CODEX_ACCESS + "\n"])
def test_fetch_usage_token_with_control_characters_is_refused(auth_dir, session,
                                                              mocked_responses, token):
    with pytest.raises(CredentialError) as caught:
        fetch(auth_dir, session, access_token=token)
    assert "X-Injected" not in str(caught.value)
    assert CODEX_ACCESS not in str(caught.value)
    assert len(mocked_responses.calls) == 0


# --- every sample payload -------------------------------------------------------------------


@freeze_time(NOW)
def test_fetch_usage_plus_gives_five_hour_and_weekly(auth_dir, session, mocked_responses):
    mocked_responses.get(URL, json=load_payload("codex_plus"))
    usage = fetch(auth_dir, session)
    assert usage.id == "codex-bob@example.com.json"
    assert usage.provider is Provider.CODEX
    assert usage.email == "bob@example.com"
    assert usage.error is None
    assert usage.is_loading is False
    assert usage.updated_at == NOW
    assert usage.token_refreshed is False
    # Only the main rate limit is checked here: additional_rate_limits (issue: newer shapes) may
    # add windows of their own keys.
    main = [w for w in usage.windows if w.key in ("primary_window", "secondary_window")]
    assert summary(main) == [
        ("primary_window", "5-hour", 23.0, utc(1790864400)),
        ("secondary_window", "Weekly", 41.0, utc(1791190800)),
    ]
    assert main[0].remaining_percent == 77.0
    assert main[0].reset_text.startswith("in 2 hours")


@freeze_time(NOW)
def test_fetch_usage_free_weekly_only_primary_is_titled_weekly(auth_dir, session,
                                                               mocked_responses):
    mocked_responses.get(URL, json=load_payload("codex_free_no_secondary"))
    usage = fetch(auth_dir, session)
    assert summary(usage.windows) == [("primary_window", "Weekly", 37.0, utc(1791259199))]


@freeze_time(NOW)
def test_fetch_usage_free_monthly_primary_is_titled_30_day(auth_dir, session, mocked_responses):
    mocked_responses.get(URL, json=load_payload("codex_free_monthly"))
    usage = fetch(auth_dir, session)
    assert summary(usage.windows) == [("primary_window", "30-day", 12.0, utc(1793404800))]


@freeze_time(NOW)
def test_fetch_usage_limit_reached_is_still_windows(auth_dir, session, mocked_responses):
    mocked_responses.get(URL, json=load_payload("codex_limit_reached"))
    usage = fetch(auth_dir, session)
    assert summary(usage.windows) == [
        ("primary_window", "5-hour", 100.0, utc(1790860620)),
        ("secondary_window", "Weekly", 88.0, utc(1791190800)),
    ]
    assert usage.windows[0].remaining_percent == 0.0


@freeze_time(NOW)
def test_fetch_usage_team_spend_control_weekly_primary(auth_dir, session, mocked_responses):
    mocked_responses.get(URL, json=load_payload("codex_team_spend_control"))
    usage = fetch(auth_dir, session)
    assert summary(usage.windows) == [("primary_window", "Weekly", 52.0, utc(1791367907))]


@freeze_time(NOW)
def test_fetch_usage_odd_shape_uses_generic_fallback(auth_dir, session, mocked_responses):
    mocked_responses.get(URL, json=load_payload("codex_odd_shape"))
    usage = fetch(auth_dir, session)
    assert [(w.title, w.used_percent, w.reset_date) for w in usage.windows] == [
        ("5-hour", 17.5, NOW + timedelta(seconds=9120)),
        ("Weekly", 64.0, datetime(2026, 10, 5, 9, 0, tzinfo=timezone.utc)),
    ]


@freeze_time(NOW)
def test_fetch_usage_other_shape_uses_generic_fallback(auth_dir, session, mocked_responses):
    mocked_responses.get(URL, json=load_payload("codex_other_shape"))
    usage = fetch(auth_dir, session)
    assert [(w.title, w.used_percent, w.reset_date) for w in usage.windows] == [
        ("5-hour", 35.0, utc(1795551600)),
        ("Weekly", 40.0, datetime(2026, 11, 30, 0, 0, tzinfo=timezone.utc)),
    ]


# --- window rules -----------------------------------------------------------------------------


def rate_limit(primary, secondary=None):
    return {"plan_type": "plus", "rate_limit": {"allowed": True, "limit_reached": False,
                                                "primary_window": primary,
                                                "secondary_window": secondary}}


@pytest.mark.parametrize("seconds, title", [
    (18000, "5-hour"), (604800, "Weekly"), (2592000, "30-day"), (86400, "1-day"),
    (3600, "1-hour"), (7200, "2-hour"),
])
def test_parse_usage_title_comes_from_window_length(seconds, title):
    windows = module.parse_usage(rate_limit({"used_percent": 5, "limit_window_seconds": seconds,
                                             "reset_at": 1790864400}), NOW)
    assert [w.title for w in windows] == [title]


def test_parse_usage_without_length_uses_position_titles():
    windows = module.parse_usage(rate_limit({"used_percent": 5, "reset_at": 1790864400},
                                            {"used_percent": 6, "reset_at": 1791190800}), NOW)
    assert [(w.key, w.title) for w in windows] == [("primary_window", "5-hour"),
                                                   ("secondary_window", "Weekly")]


@pytest.mark.parametrize("secondary", [None, "missing"])
def test_parse_usage_null_or_missing_secondary_is_left_out(secondary):
    payload = rate_limit({"used_percent": 5, "limit_window_seconds": 18000,
                          "reset_at": 1790864400})
    if secondary == "missing":
        del payload["rate_limit"]["secondary_window"]
    assert [w.key for w in module.parse_usage(payload, NOW)] == ["primary_window"]


def test_parse_usage_reset_at_wins_over_reset_after_seconds():
    windows = module.parse_usage(rate_limit({"used_percent": 5, "limit_window_seconds": 18000,
                                             "reset_at": 1790864400,
                                             "reset_after_seconds": 60}), NOW)
    assert windows[0].reset_date == utc(1790864400)


@freeze_time(NOW)
def test_fetch_usage_without_reset_at_uses_now_plus_reset_after_seconds(auth_dir, session,
                                                                         mocked_responses):
    mocked_responses.get(URL, json=rate_limit(
        {"used_percent": 10, "limit_window_seconds": 18000, "reset_after_seconds": 9000},
        {"used_percent": 20, "limit_window_seconds": 604800, "reset_at": None,
         "reset_after_seconds": 334800}))
    usage = fetch(auth_dir, session)
    assert [w.reset_date for w in usage.windows] == [NOW + timedelta(seconds=9000),
                                                     NOW + timedelta(seconds=334800)]


@pytest.mark.parametrize("raw, used", [(150, 100.0), (100.5, 100.0), (-5, 0.0), (42.5, 42.5),
                                       (0.5, 0.5), ("37", 37.0)])
def test_parse_usage_used_percent_is_a_clamped_percentage(raw, used):
    windows = module.parse_usage(rate_limit({"used_percent": raw, "limit_window_seconds": 18000,
                                             "reset_at": 1790864400}), NOW)
    assert windows[0].used_percent == used


def test_parse_usage_window_without_percent_or_reset_is_dropped():
    windows = module.parse_usage(rate_limit({"limit_window_seconds": 18000},
                                            {"used_percent": 3, "limit_window_seconds": 604800,
                                             "reset_at": 1791190800}), NOW)
    assert [w.key for w in windows] == ["secondary_window"]


@pytest.mark.parametrize("body", [
    rate_limit(None, None),
    {"rate_limit": {}},
    {"plan_type": "free"},
    [],
    "just a string",
    rate_limit({"used_percent": None, "limit_window_seconds": 18000}),
])
def test_fetch_usage_without_windows_raises_no_windows(auth_dir, session, mocked_responses, body):
    mocked_responses.get(URL, body=json.dumps(body), content_type="application/json")
    error = fetch_error(auth_dir, session)
    assert str(error) == "Usage response did not include quota windows"


# --- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, code", [("codex_401_token_expired", "token_expired"),
                                        ("codex_401_token_invalidated", "token_invalidated")])
def test_fetch_usage_401_names_the_code_and_what_to_do(auth_dir, session, mocked_responses,
                                                       name, code):
    mocked_responses.get(URL, json=load_payload(name), status=401,
                         headers={"X-Openai-Ide-Error-Code": code})
    error = fetch_error(auth_dir, session)
    assert "401" in str(error)
    assert code in str(error)
    assert "log in again" in str(error)
    assert error.status == 401
    assert error.login_problem is True
    assert len(mocked_responses.calls) == 1


def test_fetch_usage_cloudflare_403_page_says_html_and_cloudflare(auth_dir, session,
                                                                  mocked_responses):
    mocked_responses.get(URL, body=payload_text("codex_403_cloudflare_challenge.html"),
                         status=403, content_type="text/html; charset=UTF-8",
                         headers={"cf-mitigated": "challenge", "Server": "cloudflare",
                                  "cf-ray": "8f00000000000000-FRA"})
    error = fetch_error(auth_dir, session)
    assert "403" in str(error)
    assert "HTML" in str(error)
    assert "Cloudflare" in str(error)
    # A CDN block is not a broken login: the user need not log in again.
    assert error.login_problem is False
    assert "<html" not in str(error).lower()


def test_fetch_usage_cloudflare_200_page_says_html_and_cloudflare(auth_dir, session,
                                                                  mocked_responses):
    mocked_responses.get(URL, body=payload_text("codex_403_cloudflare_challenge.html"),
                         status=200, content_type="text/html; charset=UTF-8",
                         headers={"cf-mitigated": "challenge", "Server": "cloudflare"})
    error = fetch_error(auth_dir, session)
    assert "HTML" in str(error)
    assert "Cloudflare" in str(error)
    assert "200" in str(error)


def test_fetch_usage_html_page_without_content_type_is_named_html(auth_dir, session,
                                                                   mocked_responses):
    mocked_responses.get(URL, body=payload_text("codex_403_cloudflare_challenge.html"),
                         status=200, content_type=None)
    error = fetch_error(auth_dir, session)
    assert "HTML" in str(error)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_fetch_usage_server_error_names_status(auth_dir, session, mocked_responses, status):
    mocked_responses.get(URL, json={"detail": "upstream"}, status=status)
    error = fetch_error(auth_dir, session)
    assert str(error) == "Codex usage API returned %d (server error; try again later)" % status
    assert error.status == status
    assert len(mocked_responses.calls) == 1


def test_fetch_usage_429_reports_retry_after(auth_dir, session, mocked_responses):
    mocked_responses.get(URL, json={"detail": "rate limited"}, status=429,
                         headers={"Retry-After": "120"})
    error = fetch_error(auth_dir, session)
    assert str(error) == "Codex usage API returned 429 (rate limited; retry after 120 s)"
    assert error.status == 429
    assert error.retry_after == 120
    assert len(mocked_responses.calls) == 1


def test_fetch_usage_429_without_retry_after(auth_dir, session, mocked_responses):
    mocked_responses.get(URL, json={"detail": "rate limited"}, status=429)
    error = fetch_error(auth_dir, session)
    assert str(error) == "Codex usage API returned 429 (rate limited)"
    assert error.retry_after is None


def test_fetch_usage_empty_body_raises(auth_dir, session, mocked_responses):
    mocked_responses.get(URL, body=b"", status=200, content_type="application/json")
    error = fetch_error(auth_dir, session)
    assert str(error) == "Codex usage returned an empty body (HTTP 200)"


def test_fetch_usage_non_json_body_raises(auth_dir, session, mocked_responses):
    mocked_responses.get(URL, body=b"upstream connect error or disconnect/reset before headers",
                         status=200, content_type="text/plain")
    error = fetch_error(auth_dir, session)
    assert str(error) == "Codex usage returned a body that is not valid JSON (HTTP 200)"


def test_fetch_usage_body_over_one_mib_raises(auth_dir, session, mocked_responses):
    body = json.dumps(load_payload("codex_plus")).encode()
    body = body + b" " * (1024 * 1024 + 1 - len(body))
    mocked_responses.get(URL, body=body, content_type="application/json")
    error = fetch_error(auth_dir, session)
    assert "larger than 1024 KiB" in str(error)


@freeze_time(NOW)
def test_fetch_usage_body_of_exactly_one_mib_is_read(auth_dir, session, mocked_responses):
    body = json.dumps(load_payload("codex_plus")).encode()
    body = body + b" " * (1024 * 1024 - len(body))
    mocked_responses.get(URL, body=body, content_type="application/json")
    assert fetch(auth_dir, session).windows


@pytest.mark.parametrize("status", [301, 302, 307])
def test_fetch_usage_redirect_is_not_followed_and_names_status(auth_dir, session,
                                                               mocked_responses, status):
    mocked_responses.get(URL, status=status, body=b"",
                         headers={"Location": "https://login.example.test/steal"})
    error = fetch_error(auth_dir, session)
    assert len(mocked_responses.calls) == 1
    assert str(status) in str(error)
    assert "redirect" in str(error)


def test_fetch_usage_timeout_says_timed_out(auth_dir, session, mocked_responses):
    mocked_responses.get(URL, body=requests.exceptions.ReadTimeout("read timed out"))
    error = fetch_error(auth_dir, session)
    assert str(error) == "Codex usage request timed out after 1 s"


def test_fetch_usage_connection_refused_says_so(auth_dir, session, mocked_responses):
    mocked_responses.get(URL, body=requests.exceptions.ConnectionError(
        "HTTPSConnectionPool: Max retries exceeded ([Errno 111] Connection refused)"))
    error = fetch_error(auth_dir, session)
    assert str(error) == "Codex usage request failed: connection refused"


def test_parse_window_length_from_limit_window_seconds_else_title():
    from oauth_usage_tracker.providers.codex import parse_window
    now = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)
    monthly = parse_window("primary_window", "5-hour",
                           {"used_percent": 5, "limit_window_seconds": 2592000,
                            "reset_after_seconds": 600}, now)
    assert (monthly.title, monthly.length_seconds) == ("30-day", 2592000)
    unstated = parse_window("secondary_window", "Weekly", {"used_percent": 5,
                                                           "reset_after_seconds": 600}, now)
    assert unstated.length_seconds == 604800
