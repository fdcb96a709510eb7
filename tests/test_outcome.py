"""Account states (SPEC §13): decided from values, the same word in JSON, table and logs."""
import logging
from datetime import datetime, timedelta, timezone

import pytest
import responses

from oauth_usage_tracker import http
from oauth_usage_tracker import outcome as module
from oauth_usage_tracker.accounts import discover_accounts
from oauth_usage_tracker.errors import CredentialError, ProviderError, TokenRefreshError
from oauth_usage_tracker.models import AccountState, AccountUsage, Provider, UsageWindow
from oauth_usage_tracker.state import AccountState as StoredState
from oauth_usage_tracker.state import StateStore
from oauth_usage_tracker.tracker import OAuthUsageTracker

FUTURE = "2099-01-01T00:00:00Z"
CODEX_URL = "https://chatgpt.com/backend-api/wham/usage"


@pytest.mark.parametrize("error, has_values, expected", [
    (ProviderError("x", status=401, login_problem=True), False, "login_failed"),
    (ProviderError("x", status=401, login_problem=True), True, "login_failed"),
    (TokenRefreshError("x", invalid_grant=True, status=400), True, "login_failed"),
    (CredentialError("x", login_problem=True), False, "login_failed"),
    (CredentialError("x", token_expired=True), False, "expired"),
    (ProviderError("x", status=429), False, "rate_limited"),
    (ProviderError("x", status=429), True, "stale"),
    (TokenRefreshError("x", status=429), False, "rate_limited"),
    (ProviderError("x", status=403, blocked=True), False, "blocked"),
    (ProviderError("x", status=403, blocked=True), True, "stale"),
    (TokenRefreshError("x", status=403, blocked=True), False, "blocked"),
    (ProviderError("x", status=502), False, "error"),
    (ProviderError("timed out"), False, "error"),
    (ProviderError("timed out"), True, "stale"),
    (CredentialError("Cannot lock"), False, "error"),
    (CredentialError("not valid JSON", unreadable=True), True, "unreadable"),
])
def test_failure_state_from_values(error, has_values, expected):
    assert module.failure_state(error, has_values).value == expected


def test_failure_state_ignores_the_message_text():
    assert module.failure_state(ProviderError("invalid_grant 429 Cloudflare"), False) \
        is AccountState.ERROR


def test_cooldown_state_stale_with_values_else_rate_limited():
    assert module.cooldown_state(True) is AccountState.STALE
    assert module.cooldown_state(False) is AccountState.RATE_LIMITED


@pytest.mark.parametrize("state, level", [
    ("login_failed", logging.ERROR), ("expired", logging.ERROR), ("unreadable", logging.ERROR),
    ("stale", logging.WARNING), ("rate_limited", logging.WARNING), ("blocked", logging.WARNING),
    ("error", logging.WARNING), ("ok", logging.INFO), ("disabled", logging.INFO),
])
def test_log_level_errors_exactly_for_states_that_need_a_human(state, level):
    assert module.log_level(AccountState(state)) == level
    assert (level == logging.ERROR) == AccountState(state).needs_human


def test_log_state_line_names_file_and_state_and_advises_for_expired(caplog):
    with caplog.at_level(logging.INFO, logger="oauth_usage_tracker"):
        module.log_state("claude-a.json", AccountState.EXPIRED)
        module.log_state("codex-b.json", AccountState.BLOCKED, "HTML page")
    first, second = caplog.records
    assert first.levelno == logging.ERROR
    assert first.getMessage().startswith("claude-a.json: expired: not queried")
    assert "--refresh-expired" in first.getMessage()
    assert (second.levelno, second.getMessage()) == (logging.WARNING,
                                                     "codex-b.json: blocked: HTML page")


def test_http_html_page_is_blocked_by_value():
    page = http.HttpResponse(403, {"Content-Type": "text/html", "cf-mitigated": "challenge"},
                             b"<!DOCTYPE html><html>Just a moment</html>")
    assert http.status_error(page, "Codex usage").blocked is True
    with pytest.raises(ProviderError) as caught:
        http.decode_json(http.HttpResponse(200, {}, b"<html>hi</html>"), "Codex usage")
    assert caught.value.blocked is True
    assert http.status_error(http.HttpResponse(502, {}, b"{}"), "Codex usage").blocked is False


# --- the tracker decides each account's state --------------------------------------------------

def fetcher_from(outcomes):
    """A fetcher that raises or returns per account id, as the real ones do."""
    def fetch(account, session, settings):
        result = outcomes[account.id]
        if isinstance(result, Exception):
            raise result
        return AccountUsage(id=account.id, provider=account.provider, email=account.email,
                            windows=result, updated_at=datetime.now(timezone.utc))
    return fetch


def test_tracker_states_for_every_outcome_with_and_without_stored_values(auth_dir, tmp_path,
                                                                        caplog):
    now = datetime.now(timezone.utc)
    past = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    names = {}
    for email in ("ok", "stale", "limited", "blocked", "broken", "dead"):
        names[email] = auth_dir.codex(email="%s@example.com" % email, expired=FUTURE).name
    names["expired"] = auth_dir.claude(email="expired@example.com", expired=past).name
    names["off"] = auth_dir.codex(email="off@example.com", disabled=True).name
    auth_dir.raw("codex-torn.json", '{"type": "codex", "acc')
    window = (UsageWindow("primary_window", "5-hour", 40.0),)
    store = StateStore(str(tmp_path / "state"))
    store.save([(("codex", names["stale"]), StoredState(windows=window, fetched_at=now))])
    fetch = fetcher_from({
        names["ok"]: window,
        names["stale"]: ProviderError("Codex usage API returned 429", status=429),
        names["limited"]: ProviderError("Codex usage API returned 429", status=429),
        names["blocked"]: ProviderError("HTML", status=403, blocked=True),
        names["broken"]: ProviderError("Codex usage request timed out after 15 s"),
        names["dead"]: ProviderError("token_invalidated", status=401, login_problem=True),
    })
    with caplog.at_level(logging.INFO, logger="oauth_usage_tracker"):
        found = discover_accounts(str(auth_dir))
        with OAuthUsageTracker(fetchers={Provider.CODEX: fetch, Provider.CLAUDE: fetch},
                               state_dir=str(tmp_path / "state")) as tracker:
            handle = tracker.refresh(found.codex, found.claude)
            accounts = handle.result(30)
    states = {a.id: a.state.value for a in accounts}
    states.update({s.id: s.state.value for s in found.skipped + handle.skipped})
    assert states == {names["ok"]: "ok", names["stale"]: "stale",
                      names["limited"]: "rate_limited", names["blocked"]: "blocked",
                      names["broken"]: "error", names["dead"]: "login_failed",
                      names["expired"]: "expired", names["off"]: "disabled",
                      "codex-torn.json": "unreadable"}
    cooling = {a.id: a.cooldown_until for a in accounts if a.cooldown_until is not None}
    assert set(cooling) == {names["stale"], names["limited"]}
    assert all(until > now for until in cooling.values())
    logged = {r.getMessage().split(": ")[0]: (r.levelname, r.getMessage().split(": ")[1])
              for r in caplog.records if r.levelno >= logging.WARNING}
    assert logged == {names["stale"]: ("WARNING", "stale"),
                      names["limited"]: ("WARNING", "rate_limited"),
                      names["blocked"]: ("WARNING", "blocked"),
                      names["broken"]: ("WARNING", "error"),
                      names["dead"]: ("ERROR", "login_failed"),
                      names["expired"]: ("ERROR", "expired"),
                      "codex-torn.json": ("ERROR", "unreadable")}


def test_tracker_cooldown_run_is_rate_limited_without_values_and_sends_nothing(auth_dir,
                                                                               tmp_path):
    name = auth_dir.codex(email="c@example.com", expired=FUTURE).name
    until = datetime.now(timezone.utc) + timedelta(minutes=5)
    StateStore(str(tmp_path / "s")).save([(("codex", name), StoredState(
        cooldown_until=until, cooldown_seconds=300.0))])
    found = discover_accounts(str(auth_dir))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(CODEX_URL, status=500)
        with OAuthUsageTracker(state_dir=str(tmp_path / "s")) as tracker:
            [usage] = tracker.refresh_and_wait(found.codex, ())
        assert len(mock.calls) == 0
    assert usage.state is AccountState.RATE_LIMITED
    assert usage.cooldown_until == until.replace(microsecond=0)


def test_tracker_without_state_reports_no_cooldown(auth_dir):
    auth_dir.codex(email="c@example.com", expired=FUTURE)
    found = discover_accounts(str(auth_dir))
    with responses.RequestsMock() as mock:
        mock.get(CODEX_URL, status=429, json={"error": {"message": "slow down"}})
        with OAuthUsageTracker(state_dir=False) as tracker:
            [usage] = tracker.refresh_and_wait(found.codex, ())
    assert usage.state is AccountState.RATE_LIMITED and usage.cooldown_until is None


def test_tracker_expired_claude_with_refresh_disabled_is_expired(auth_dir):
    auth_dir.claude(email="e@example.com", expired="2001-01-01T00:00:00Z")
    found = discover_accounts(str(auth_dir))
    with OAuthUsageTracker(state_dir=False, include_expired=True,
                           allow_token_refresh=False) as tracker:
        [usage] = tracker.refresh_and_wait((), found.claude)
    assert usage.state is AccountState.EXPIRED and "refresh is disabled" in usage.error


def test_tracker_file_gone_bad_since_discovery_is_unreadable(auth_dir, caplog):
    path = auth_dir.codex(email="c@example.com", expired=FUTURE)
    found = discover_accounts(str(auth_dir))
    path.write_text("{")  # after discovery, before the fetch
    with caplog.at_level(logging.ERROR, logger="oauth_usage_tracker"):
        with OAuthUsageTracker(state_dir=False) as tracker:
            [usage] = tracker.refresh_and_wait(found.codex, ())
    assert usage.state is AccountState.UNREADABLE and usage.error
    assert ["%s: unreadable: " % path.name in r.getMessage() for r in caplog.records] == [True]
