"""No token ever leaves the credential file: not in logs at DEBUG, errors, reprs or other files
(SPEC §9). Every failure path of both providers is run with full logging captured."""
import functools
import json
import logging
import os
import traceback

import pytest
import requests

from oauth_usage_tracker import refresh as refresh_module
from oauth_usage_tracker import http
from oauth_usage_tracker.accounts import discover_accounts
from oauth_usage_tracker.config import Settings
from oauth_usage_tracker.credentials import TokenGrant
from oauth_usage_tracker.refresh import RefreshResult
from oauth_usage_tracker.errors import UsageTrackerError
from oauth_usage_tracker.providers import claude, codex

from support import (CLAUDE_ACCESS, CLAUDE_REFRESH, CODEX_ACCESS, CODEX_ID_TOKEN, SECRETS,
                     assert_no_secrets, load_payload, payload_text)

CLAUDE_USAGE = "https://api.anthropic.com/api/oauth/usage"
CLAUDE_TOKEN = "https://platform.claude.com/v1/oauth/token"
CODEX_USAGE = "https://chatgpt.com/backend-api/wham/usage"
PAST = "2000-01-01T00:00:00Z"
SETTINGS = Settings(timeout=1)

GRANT = load_payload("claude_token_refresh_ok")
ODD_REFRESH = "sk-ant-ort01-ODDrefresh+with/slash=and~tilde_0000000000"
NEW_TOKENS = (GRANT["access_token"], GRANT["refresh_token"],
              load_payload("claude_token_no_refresh")["access_token"], ODD_REFRESH,
              load_payload("codex_token_refresh_ok")["access_token"],
              load_payload("codex_token_refresh_ok")["refresh_token"],
              load_payload("codex_token_refresh_ok")["id_token"])
ALL_TOKENS = SECRETS + NEW_TOKENS


def assert_clean(texts):
    """Fail if any token, old or new, or a long piece of one, is in any of the texts."""
    assert_no_secrets(*texts)
    for text in texts:
        for token in NEW_TOKENS:
            assert token not in text
            assert token[12:36] not in text
            assert token.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D") not in text


@pytest.fixture
def captured(caplog):
    """Every log record of every logger at DEBUG, as formatted text."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="oauth_usage_tracker")
    return caplog


@pytest.fixture(autouse=True)
def short_invalid_grant_poll(monkeypatch):
    monkeypatch.setattr(refresh_module, "refresh_tokens",
                        functools.partial(refresh_module.refresh_tokens, invalid_grant_wait=0.2))


def outputs(caplog, outcome, auth_dir):
    """Everything a person or another program could see: logs, the error in every form, the
    result's repr, and every file of the auth directory except the credential files."""
    texts = [caplog.text]
    for record in caplog.records:
        texts.append(record.getMessage())
        texts.append(repr(record.args))
        if record.exc_info:
            texts.append("".join(traceback.format_exception(*record.exc_info)))
    if isinstance(outcome, BaseException):
        texts += [str(outcome), repr(outcome), repr(outcome.args),
                  "".join(traceback.format_exception(type(outcome), outcome,
                                                     outcome.__traceback__))]
        texts += [repr(value) for name, value in vars(outcome).items() if name != "body"]
    else:
        texts.append(repr(outcome))
    for name in os.listdir(auth_dir.path):
        if not name.endswith(".json"):
            with open(os.path.join(auth_dir.path, name), "rb") as handle:
                texts.append(handle.read().decode("utf-8", "replace"))
    return texts


def run(fetch_usage, account, session, settings=SETTINGS):
    try:
        return fetch_usage(account, session, settings)
    except UsageTrackerError as error:
        return error


def claude_account(auth_dir, **extra):
    auth_dir.claude(**extra)
    return discover_accounts(auth_dir).claude[0]


def codex_account(auth_dir, **extra):
    auth_dir.codex(**extra)
    return discover_accounts(auth_dir).codex[0]


def echo(status, token_text):
    """A server error body that quotes the token back (some proxies and gateways do)."""
    return dict(status=status, json={"error": {"message": "bad token %s" % token_text,
                                               "type": "authentication_error"}})


# --- Claude ------------------------------------------------------------------------------------


CLAUDE_CASES = {
    "401 twice after refresh": (dict(), [
        ("GET", dict(status=401, json=load_payload("claude_401_token_expired"))),
        ("POST", dict(json=GRANT)),
        ("GET", echo(401, GRANT["access_token"])),
    ]),
    "403 scope": (dict(), [("GET", dict(status=403, json=load_payload("claude_403_scope")))]),
    "403 revoked, refresh, success": (dict(), [
        ("GET", dict(status=403, json=load_payload("claude_403_revoked"))),
        ("POST", dict(json=GRANT)),
        ("GET", dict(json=load_payload("claude_max"))),
    ]),
    "429": (dict(), [("GET", dict(status=429, json=load_payload("claude_429"),
                                  headers={"Retry-After": "300"}))]),
    "usage 5xx echoing the token": (dict(), [("GET", echo(500, CLAUDE_ACCESS))]),
    "usage HTML page": (dict(), [("GET", dict(
        body=payload_text("codex_403_cloudflare_challenge.html"), content_type="text/html",
        headers={"cf-mitigated": "challenge"}))]),
    "usage not JSON, echoing the token": (dict(), [("GET", dict(
        body="Bearer %s is fine but this is not JSON" % CLAUDE_ACCESS,
        content_type="application/json"))]),
    "usage timeout": (dict(), [("GET", dict(body=requests.exceptions.ReadTimeout(
        "HTTPSConnectionPool(host='api.anthropic.com'): Read timed out.")))]),
    "usage connection error": (dict(), [("GET", dict(body=requests.exceptions.ConnectionError(
        "Connection refused")))]),
    "invalid_grant": (dict(expired=PAST), [
        ("POST", dict(status=400, json=load_payload("claude_token_invalid_grant")))]),
    "invalid_grant echoing the refresh token": (dict(expired=PAST), [
        ("POST", dict(status=400, json={"error": "invalid_grant",
                                        "error_description": "unknown %s" % CLAUDE_REFRESH}))]),
    "invalid_request echoing the refresh token": (dict(expired=PAST), [
        ("POST", echo(400, CLAUDE_REFRESH))]),
    "token timeout": (dict(expired=PAST), [
        ("POST", dict(body=requests.exceptions.ReadTimeout("Read timed out.")))]),
    "token 5xx": (dict(expired=PAST), [("POST", dict(status=503, body=b"upstream error"))]),
    "token 429": (dict(expired=PAST), [("POST", dict(status=429,
                                                     json=load_payload("claude_token_429"),
                                                     headers={"Retry-After": "60"}))]),
    "token 200 garbage": (dict(expired=PAST), [("POST", dict(body=b"<html>ok</html>"))]),
    "expired, refreshed, success": (dict(expired=PAST), [
        ("POST", dict(json=GRANT)), ("GET", dict(json=load_payload("claude_max")))]),
    "odd refresh token, refreshed, success": (dict(expired=PAST, refresh_token=ODD_REFRESH), [
        ("POST", dict(json=load_payload("claude_token_no_refresh"))),
        ("GET", dict(json=load_payload("claude_max")))]),
    "expired, refreshed, then 429": (dict(expired=PAST), [
        ("POST", dict(json=GRANT)),
        ("GET", dict(status=429, json=load_payload("claude_429")))]),
    "plain success": (dict(), [("GET", dict(json=load_payload("claude_max")))]),
}


@pytest.mark.parametrize("case", sorted(CLAUDE_CASES))
def test_claude_paths_never_show_a_token(auth_dir, session, mocked_responses, captured, case):
    extra, replies = CLAUDE_CASES[case]
    account = claude_account(auth_dir, **extra)
    for method, reply in replies:
        mocked_responses.add(method, CLAUDE_USAGE if method == "GET" else CLAUDE_TOKEN, **reply)
    outcome = run(claude.fetch_usage, account, session)
    texts = outputs(captured, outcome, auth_dir)
    assert_clean(texts)
    # The case really ran: every reply was used, and something was said about it.
    assert len(mocked_responses.calls) == len(replies)


def test_claude_no_refresh_paths_never_show_a_token(auth_dir, session, mocked_responses,
                                                    captured):
    account = claude_account(auth_dir, expired=PAST)
    outcome = run(claude.fetch_usage, account, session, SETTINGS.with_(allow_token_refresh=False))
    assert isinstance(outcome, UsageTrackerError)
    assert_clean(outputs(captured, outcome, auth_dir))


# --- bad files -------------------------------------------------------------------------------------


def test_bad_token_characters_are_not_quoted(auth_dir, session, mocked_responses, captured):
    bad = CLAUDE_ACCESS + "\n"
    account = claude_account(auth_dir, access_token=bad)
    outcome = run(claude.fetch_usage, account, session)
    assert isinstance(outcome, UsageTrackerError)
    assert_clean(outputs(captured, outcome, auth_dir))
    assert len(mocked_responses.calls) == 0


def test_bad_codex_token_characters_are_not_quoted(auth_dir, session, mocked_responses,
                                                   captured):
    account = codex_account(auth_dir, access_token=CODEX_ACCESS + " x")
    outcome = run(codex.fetch_usage, account, session)
    assert isinstance(outcome, UsageTrackerError)
    assert_clean(outputs(captured, outcome, auth_dir))


@pytest.mark.parametrize("damage", ["truncated", "not an object", "binary"])
def test_broken_credential_files_never_show_a_token(auth_dir, session, mocked_responses,
                                                    captured, damage):
    path = auth_dir.claude()
    account = discover_accounts(auth_dir).claude[0]
    text = path.read_text()
    if damage == "truncated":
        path.write_text(text[:text.index(CLAUDE_REFRESH) + 30])
    elif damage == "not an object":
        path.write_text(json.dumps([text]))
    else:
        path.write_bytes(b"\xff\xfe" + text.encode())
    outcome = run(claude.fetch_usage, account, session)
    assert isinstance(outcome, UsageTrackerError)
    texts = outputs(captured, outcome, auth_dir)
    found = discover_accounts(auth_dir)
    texts += [repr(found), repr(found.skipped)]
    assert_clean(texts)


def test_discovery_never_shows_a_token(auth_dir, captured):
    auth_dir.claude()
    auth_dir.codex()
    auth_dir.raw("gemini-x.json", json.dumps({"type": CLAUDE_ACCESS}))
    auth_dir.raw("weird.json", json.dumps({"type": "qwen", "access_token": CLAUDE_ACCESS}))
    found = discover_accounts(auth_dir)
    texts = [captured.text, repr(found), repr(found.accounts), repr(found.skipped)]
    texts += [str(account) for account in found.accounts]
    assert_clean(texts)


# --- Codex -------------------------------------------------------------------------------------


CODEX_CASES = {
    "401 token_expired": [dict(status=401, json=load_payload("codex_401_token_expired"))],
    "401 token_invalidated": [dict(status=401, json=load_payload("codex_401_token_invalidated"))],
    "401 echoing the token": [echo(401, CODEX_ACCESS)],
    "403 Cloudflare page": [dict(status=403, body=payload_text(
        "codex_403_cloudflare_challenge.html"), content_type="text/html",
        headers={"cf-mitigated": "challenge"})],
    "200 HTML page": [dict(body="<html>%s</html>" % CODEX_ID_TOKEN, content_type="text/html")],
    "429": [dict(status=429, json={"detail": "slow down"}, headers={"Retry-After": "30"})],
    "5xx echoing the token": [echo(502, CODEX_ACCESS)],
    "not JSON echoing the token": [dict(body="token=%s" % CODEX_ACCESS)],
    "timeout": [dict(body=requests.exceptions.ReadTimeout("Read timed out."))],
    "redirect": [dict(status=302, headers={"Location": "https://elsewhere.example.test/?t=x"})],
    "no windows": [dict(json={"plan_type": "free"})],
    "success": [dict(json=load_payload("codex_plus"))],
}


@pytest.mark.parametrize("case", sorted(CODEX_CASES))
def test_codex_paths_never_show_a_token(auth_dir, session, mocked_responses, captured, case):
    account = codex_account(auth_dir)
    for reply in CODEX_CASES[case]:
        mocked_responses.add("GET", CODEX_USAGE, **reply)
    outcome = run(codex.fetch_usage, account, session)
    assert_clean(outputs(captured, outcome, auth_dir))
    assert len(mocked_responses.calls) == len(CODEX_CASES[case])


# --- reprs -----------------------------------------------------------------------------------------


def test_reprs_hide_tokens(auth_dir):
    grant = TokenGrant(access_token=GRANT["access_token"], refresh_token=GRANT["refresh_token"],
                       expires_in=28800)
    result = RefreshResult(access_token=GRANT["access_token"], rotated=True)
    bearer = http.BearerAuth(CLAUDE_ACCESS)
    texts = [repr(grant), str(grant), repr(result), str(result), repr(bearer), str(bearer)]
    assert_clean(texts)
    assert "28800" in repr(grant)  # the repr still says something useful
    assert "rotated=True" in repr(result)


def test_assert_clean_catches_every_token():
    # Guard: the checker used above really fails on each token.
    for token in ALL_TOKENS:
        with pytest.raises(AssertionError):
            assert_clean(["prefix %s suffix" % token])
