"""remote and management: URL policy, key checks, the listing, the api-call envelope and the
per-proxy gate."""
import json
import logging
import os
import threading

import pytest
import requests
import responses as responses_lib

from oauth_usage_tracker import lockout, management
from oauth_usage_tracker import remote as module
from oauth_usage_tracker.config import Settings
from oauth_usage_tracker.errors import ConfigurationError, ProviderError
from oauth_usage_tracker.models import AccountState, Provider
from support import load_payload

KEY = "cpa-UNITmanagementKEYnotREAL-77aa"
BASE = "https://cpa.example.net:8317"
LIST_V0 = BASE + "/v0/management/auth-files"
CALL_V0 = BASE + "/v0/management/api-call"
LIST_V8 = BASE + "/v8/management/credentials"
CALL_V8 = BASE + "/v8/management/requests/api-call"


@pytest.fixture(autouse=True)
def fresh_rejections():
    lockout.clear_memory()
    yield
    lockout.clear_memory()


def make_proxy(tmp_path=None, **options):
    rejected = lockout.RejectedKeys(str(tmp_path) if tmp_path else None)
    return management.Proxy(BASE, KEY, rejected=rejected, **options)


def envelope(status, body, headers=None):
    return {"status_code": status, "header": headers or {"Content-Type": ["application/json"]},
            "body": body if isinstance(body, str) else json.dumps(body)}


def listing(*entries):
    return {"files": list(entries)}


def entry(name="claude-a@example.com.json", kind="claude", email="a@example.com",
          auth_index="9f2c4e1a0b3d5c7e", **extra):
    data = {"name": name, "type": kind, "provider": kind, "email": email, "disabled": False,
            "status": "active", "unavailable": False}
    if auth_index is not None:
        data["auth_index"] = auth_index
    data.update(extra)
    return data


# --- URLs, keys, key files --------------------------------------------------------------------

@pytest.mark.parametrize("url, expected, source", [
    ("https://cpa.example.net", "https://cpa.example.net", "cpa.example.net:443"),
    ("https://CPA.example.net:8317/", "https://cpa.example.net:8317", "cpa.example.net:8317"),
    ("http://127.0.0.1:8317/v0/management", "http://127.0.0.1:8317", "127.0.0.1:8317"),
    ("http://[::1]:8317/v8/management/", "http://[::1]:8317", "[::1]:8317"),
    ("https://gw.example.net/team-a/", "https://gw.example.net/team-a", "gw.example.net:443/team-a"),
])
def test_base_url_and_source_label_normalise(url, expected, source):
    assert management.base_url(url) == expected
    assert management.source_label(expected) == source


@pytest.mark.parametrize("url", ["http://10.0.0.5:8317", "ftp://cpa.example.net", "cpa:8317",
                                 "https://cpa.example.net/?x=1", "https://cpa.example.net/#f",
                                 ""])
def test_base_url_refuses_clear_text_remote_and_odd_urls(url):
    with pytest.raises(ConfigurationError):
        management.base_url(url)


@pytest.mark.parametrize("allow_http", [False, True])
def test_base_url_refuses_credentials_in_the_url_without_quoting_them(allow_http):
    with pytest.raises(ConfigurationError) as caught:
        management.base_url("http://admin:%s@127.0.0.1:8317" % KEY, allow_http)
    assert KEY not in str(caught.value) and "--cpa-key-file" in str(caught.value)


def test_allow_http_accepts_a_remote_http_proxy_and_warns_about_the_key(caplog):
    with caplog.at_level(logging.WARNING, logger="oauth_usage_tracker"):
        proxy = management.Proxy("http://10.0.0.5:8317", KEY, allow_http=True)
    assert proxy.source == "10.0.0.5:8317"
    assert "clear text" in caplog.text and KEY not in caplog.text


def test_allow_http_keeps_every_other_rule():
    with pytest.raises(ConfigurationError):
        management.base_url("ftp://10.0.0.5:8317", allow_http=True)


@pytest.mark.parametrize("key", ["", "   ", "two words", "tab\there", "é-not-ascii", None, 42,
                                 "x" * 5000])
def test_check_key_refuses_without_quoting(key):
    with pytest.raises(ConfigurationError) as caught:
        management.check_key(key)
    if isinstance(key, str) and key.strip():
        assert key.strip() not in str(caught.value)


def test_read_key_file_strips_the_newline_and_names_a_version(tmp_path):
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    path.chmod(0o600)
    key, version = management.read_key_file(str(path))
    assert key == KEY
    os.utime(path, ns=(1, 123456789))
    assert management.read_key_file(str(path))[1] != version


def test_read_key_file_warns_when_others_can_read_it(tmp_path, caplog):
    path = tmp_path / "key"
    path.write_text(KEY)
    path.chmod(0o640)
    with caplog.at_level(logging.WARNING, logger="oauth_usage_tracker"):
        management.read_key_file(str(path))
    assert "mode 640" in caplog.text and KEY not in caplog.text


def test_read_key_file_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ConfigurationError, match="not a regular file"):
        management.read_key_file(str(tmp_path / "fifo"))


def test_read_key_file_refuses_binary_content(tmp_path):
    (tmp_path / "key").write_bytes(b"\xff\xfe" + KEY.encode())
    with pytest.raises(ConfigurationError):
        management.read_key_file(str(tmp_path / "key"))


def test_proxy_repr_never_shows_the_key():
    proxy = make_proxy()
    assert KEY not in repr(proxy) and KEY not in repr(module.RemoteAccount(proxy, "ab"))


# --- the listing -----------------------------------------------------------------------------

def test_listing_claude_and_codex_with_claims_disabled_and_skips():
    proxy = make_proxy()
    found = module.accounts_from_listing(listing(
        entry(),
        entry("codex-b@example.com-plus.json", "codex", "b@example.com", "0011223344556677",
              id_token={"chatgpt_account_id": "acct-7d3e", "plan_type": "plus"}),
        entry("claude-off.json", disabled=True),
        entry("claude-old.json", auth_index=None),
        entry("gemini-g.json", "gemini"),
        entry("claude-a@example.com.json", auth_index="ffff000011112222"),
        "not an object",
    ), proxy)
    assert [a.id for a in found.claude] == ["claude-a@example.com.json", "claude-off.json"]
    codex = found.codex[0]
    assert codex.remote.account_id == "acct-7d3e" and codex.remote.auth_index == "0011223344556677"
    assert codex.source == "cpa.example.net:8317" and codex.provider is Provider.CODEX
    assert found.claude[1].is_disabled and not found.claude[0].is_disabled
    reasons = {s.id: (s.reason, s.state, s.source) for s in found.skipped}
    unusable = reasons[module.UNUSABLE_ID]
    assert unusable[0] == ("unreadable: 2 listing entries cannot be queried (1 not an object, "
                           "1 without auth_index); CLIProxyAPI v6.6.63 or later lists the "
                           "auth_index needed; e.g. claude-old.json")
    assert unusable[1] is AccountState.UNREADABLE
    assert reasons["gemini-g.json"][0] == "unsupported type 'gemini'"
    assert reasons["claude-a@example.com.json"][0].startswith("duplicate of")
    assert {source for _, _, source in reasons.values()} == {"cpa.example.net:8317"}


@pytest.mark.parametrize("auth_index", ["", 1234, "has space", "x" * 200, ["a"], "a\nb"])
def test_listing_unusable_auth_index_is_unreadable(auth_index):
    found = module.accounts_from_listing(listing(entry(auth_index=auth_index)), make_proxy())
    assert not found.accounts and "auth_index" in found.skipped[0].reason


@pytest.mark.parametrize("payload", [[], {"files": None}, {"files": "x"}, None, "text"])
def test_listing_without_files_list_is_an_error(payload):
    with pytest.raises(ProviderError, match="no \"files\" list"):
        module.accounts_from_listing(payload, make_proxy())


def test_list_falls_back_to_v8_and_says_so(mocked_responses, session, caplog):
    mocked_responses.get(LIST_V0, status=404, json={"error": "not found"})
    mocked_responses.get(LIST_V8, json=listing(entry()))
    proxy = make_proxy()
    with caplog.at_level(logging.INFO, logger="oauth_usage_tracker"):
        found = module.list_proxy(proxy, Settings(), session)
    assert [a.id for a in found.claude] == ["claude-a@example.com.json"]
    assert proxy.api == "v8" and "/v8/management found" in caplog.text
    request = mocked_responses.calls[1].request
    assert request.headers["Authorization"] == "Bearer " + KEY


def test_list_without_any_management_api_is_one_clear_record(mocked_responses, session):
    mocked_responses.get(LIST_V0, status=404)
    mocked_responses.get(LIST_V8, status=404)
    found = module.list_proxy(make_proxy(), Settings(), session)
    assert not found.accounts
    assert "remote-management.secret-key" in found.skipped[0].reason
    assert found.skipped[0].state is AccountState.UNREADABLE


@pytest.mark.parametrize("status", [401, 403])
def test_list_rejected_once_is_remembered_and_not_retried(mocked_responses, session, tmp_path,
                                                          status):
    mocked_responses.get(LIST_V0, status=status, json={"error": "invalid management key"})
    proxy = make_proxy(tmp_path)
    found = module.list_proxy(proxy, Settings(), session)
    assert "(%d" % status in found.skipped[0].reason
    assert len(mocked_responses.calls) == 1
    lockout.clear_memory()  # a new process: only the file remembers
    again = module.list_proxy(make_proxy(tmp_path), Settings(), session)
    assert "rejected this management key at" in again.skipped[0].reason
    assert len(mocked_responses.calls) == 1
    assert KEY not in (tmp_path / lockout.REJECTED_FILE).read_text()


def test_list_remembered_accounts_come_back_with_nothing_to_ask(mocked_responses, session):
    mocked_responses.get(LIST_V0, status=401)
    proxy = make_proxy()
    remembered = [("claude", "cpa.example.net:8317/claude-a.json"), ("codex", "codex-local.json"),
                  ("claude", "other:1/claude-b.json")]
    found = module.list_proxy(proxy, Settings(), session, remembered)
    assert [a.id for a in found.claude] == ["claude-a.json"] and not found.codex
    with pytest.raises(ProviderError, match="rejected the management key"):
        module.fetch_usage(found.claude[0], session, Settings())
    assert len(mocked_responses.calls) == 1


# --- the api-call envelope ---------------------------------------------------------------------

def test_envelope_body_is_decoded_twice_and_header_lists_joined():
    answer = management.decode_envelope(
        _response(200, envelope(429, load_payload("claude_429"),
                                {"Retry-After": ["300"], "X-Many": ["a", "b"]})),
        "s:1", "Claude usage", 1024 * 1024)
    assert answer.status == 429 and answer.headers["retry-after"] == "300"
    assert answer.headers["X-Many"] == "a, b"
    assert json.loads(answer.body) == load_payload("claude_429")


@pytest.mark.parametrize("payload", [
    {"status_code": "200", "body": "{}"}, {"status_code": True, "body": "{}"},
    {"status_code": 99, "body": "{}"}, {"status_code": 200, "body": {"a": 1}},
    {"body": "{}"}, [], None,
])
def test_envelope_not_understood_is_a_clear_error(payload):
    with pytest.raises(ProviderError, match="does not understand"):
        management.decode_envelope(_response(200, payload), "s:1", "Claude usage", 1024)


def test_envelope_body_over_the_cap_is_an_error():
    with pytest.raises(ProviderError, match="larger than 1 KiB"):
        management.decode_envelope(_response(200, envelope(200, "x" * 2048)), "s:1", "Codex usage",
                               1024)


@pytest.mark.parametrize("status, error, expected, login", [
    (400, "auth token not found", "holds no usable token", True),
    (400, "invalid url", "api-call API returned 400 (invalid url)", False),
    (400, "\x1b[31mhostile", "api-call API returned 400", False),
    (502, "request failed", "could not reach the provider (502)", False),
    (500, "boom", "server error", False),
])
def test_envelope_proxy_failures(status, error, expected, login):
    with pytest.raises(ProviderError) as caught:
        management.decode_envelope(_response(status, {"error": error}), "s:1", "Claude usage", 1024)
    assert expected in str(caught.value) and caught.value.login_problem is login
    assert "\x1b" not in str(caught.value)


def _response(status, payload):
    from oauth_usage_tracker.http import HttpResponse
    return HttpResponse(status, {}, json.dumps(payload).encode())


# --- usage through the proxy -------------------------------------------------------------------

def listed(mocked_responses, session, *entries, api="v0"):
    mocked_responses.get(LIST_V0 if api == "v0" else LIST_V8, json=listing(*entries))
    return module.list_proxy(make_proxy(), Settings(), session)


def test_fetch_claude_through_the_proxy_uses_local_headers_and_parser(mocked_responses, session):
    found = listed(mocked_responses, session, entry())
    mocked_responses.post(CALL_V0, json=envelope(200, load_payload("claude_max")))
    usage = module.fetch_usage(found.claude[0], session, Settings())
    assert usage.windows[0].key == "five_hour" and usage.error is None
    sent = json.loads(mocked_responses.calls[1].request.body)
    assert sent == {"auth_index": "9f2c4e1a0b3d5c7e", "method": "GET",
                    "url": "https://api.anthropic.com/api/oauth/usage",
                    "header": {"Accept": "application/json", "anthropic-beta": "oauth-2025-04-20",
                               "User-Agent": "claude-code/2.1.0",
                               "Authorization": "Bearer $TOKEN$"}}


def test_fetch_codex_sends_the_account_id_from_the_claims(mocked_responses, session):
    found = listed(mocked_responses, session,
                   entry("codex-b.json", "codex", id_token={"chatgpt_account_id": "acct-1"}))
    mocked_responses.post(CALL_V0, json=envelope(200, load_payload("codex_plus")))
    usage = module.fetch_usage(found.codex[0], session, Settings())
    assert usage.plan and usage.windows
    header = json.loads(mocked_responses.calls[1].request.body)["header"]
    assert header["ChatGPT-Account-Id"] == "acct-1" and header["User-Agent"] == "codex-cli"


def test_fetch_uses_the_v8_call_path_on_a_v8_proxy(mocked_responses, session):
    mocked_responses.get(LIST_V0, status=404)
    found = listed(mocked_responses, session, entry(), api="v8")
    mocked_responses.post(CALL_V8, json=envelope(200, load_payload("claude_max")))
    assert module.fetch_usage(found.claude[0], session, Settings()).windows


@pytest.mark.parametrize("payload, message", [
    ("claude_401_token_expired", "log in again with CLIProxyAPI"),
    ("claude_403_scope", "lacks the user:profile scope"),
])
def test_fetch_claude_rejected_token_is_a_login_problem_never_a_refresh(mocked_responses,
                                                                        session, payload,
                                                                        message):
    found = listed(mocked_responses, session, entry())
    status = 401 if "401" in payload else 403
    mocked_responses.post(CALL_V0, json=envelope(status, load_payload(payload)))
    with pytest.raises(ProviderError) as caught:
        module.fetch_usage(found.claude[0], session, Settings())
    assert message in str(caught.value) and caught.value.login_problem
    assert len(mocked_responses.calls) == 2  # no refresh, no retry


def test_fetch_codex_upstream_401_is_a_login_problem(mocked_responses, session):
    found = listed(mocked_responses, session, entry("codex-b.json", "codex"))
    mocked_responses.post(CALL_V0, json=envelope(401, load_payload("codex_401_token_expired")))
    with pytest.raises(ProviderError) as caught:
        module.fetch_usage(found.codex[0], session, Settings())
    assert caught.value.login_problem and "token_expired" in str(caught.value)


def test_fetch_upstream_429_keeps_status_and_retry_after(mocked_responses, session):
    found = listed(mocked_responses, session, entry())
    mocked_responses.post(CALL_V0, json=envelope(429, load_payload("claude_429"),
                                                 {"Retry-After": ["300"]}))
    with pytest.raises(ProviderError) as caught:
        module.fetch_usage(found.claude[0], session, Settings())
    assert caught.value.status == 429 and caught.value.retry_after == 300
    assert str(caught.value) == "Claude usage API returned 429 (rate limited; retry after 300 s)"


def test_fetch_cloudflare_page_inside_the_envelope_is_a_block_not_a_login(mocked_responses,
                                                                          session):
    found = listed(mocked_responses, session, entry("codex-b.json", "codex"))
    page = "<!DOCTYPE html><html><title>Just a moment...</title></html>"
    mocked_responses.post(CALL_V0, json=envelope(403, page, {"Content-Type": ["text/html"],
                                                             "Cf-Mitigated": ["challenge"]}))
    with pytest.raises(ProviderError) as caught:
        module.fetch_usage(found.codex[0], session, Settings())
    assert not caught.value.login_problem and "Cloudflare" in str(caught.value)


@pytest.mark.parametrize("status", [401, 403])
def test_management_rejection_mid_run_stops_every_later_call(mocked_responses, session, status):
    found = listed(mocked_responses, session, entry(), entry("claude-b.json",
                                                             auth_index="0000000000000001"))
    mocked_responses.post(CALL_V0, status=status, json={"error": "invalid management key"})
    for account in found.claude:
        with pytest.raises(ProviderError) as caught:
            module.fetch_usage(account, session, Settings())
        assert caught.value.login_problem and "(%d" % status in str(caught.value)
    assert len(mocked_responses.calls) == 2  # the listing and one api-call


def test_a_dead_proxy_stops_after_the_first_failure(session):
    proxy = make_proxy()
    account = module.accounts_from_listing(listing(entry(), entry(
        "claude-b.json", auth_index="0000000000000001")), proxy).claude
    calls = []

    def never_answers(request):
        calls.append(request)
        raise requests.exceptions.ConnectTimeout()

    with responses_lib.RequestsMock() as mock:
        mock.add_callback("POST", CALL_V0, callback=never_answers)
        for item in account:
            with pytest.raises(ProviderError, match="no more requests to it in this run"):
                module.fetch_usage(item, session, Settings())
    assert len(calls) == 1


def test_calls_in_flight_never_exceed_the_proxy_workers(session):
    proxy = make_proxy(workers=2)
    accounts = module.accounts_from_listing(listing(*[
        entry("claude-%d.json" % index, auth_index="%016x" % index) for index in range(6)]),
        proxy).claude
    lock, state = threading.Lock(), {"now": 0, "max": 0}
    gate = threading.Event()

    def callback(request):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        gate.wait(0.2)
        with lock:
            state["now"] -= 1
        return 200, {}, json.dumps(envelope(200, load_payload("claude_max")))

    with responses_lib.RequestsMock() as mock:
        mock.add_callback("POST", CALL_V0, callback=callback)
        threads = [threading.Thread(target=module.fetch_usage, args=(a, session, Settings()))
                   for a in accounts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert state["max"] == 2


def test_fetch_without_a_remote_reference_is_an_error(session):
    from oauth_usage_tracker.models import AuthAccount
    account = AuthAccount("x.json", Provider.CLAUDE, None, "x.json", "/nowhere/x.json")
    with pytest.raises(ProviderError):
        module.fetch_usage(account, session, Settings())


# --- hostile proxies ---------------------------------------------------------------------------

@pytest.mark.parametrize("body, content_type, expected", [
    (b"<!DOCTYPE html><html><body>Sign in</body></html>", "text/html", "HTML page"),
    (b"not json", "application/json", "not valid JSON"),
    (b"[" * 100000 + b"]" * 100000, "application/json", "not valid JSON"),
    (b"", "application/json", "empty body"),
])
def test_list_unusable_body_is_one_clear_record(mocked_responses, session, body, content_type,
                                                expected):
    mocked_responses.get(LIST_V0, body=body, content_type=content_type)
    found = module.list_proxy(make_proxy(), Settings(), session)
    assert not found.accounts and expected in found.skipped[0].reason


def test_list_redirect_is_not_followed_and_the_key_stays_home(mocked_responses, session):
    mocked_responses.get(LIST_V0, status=302, headers={"Location": "https://evil.example/"})
    found = module.list_proxy(make_proxy(), Settings(), session)
    assert "302" in found.skipped[0].reason and len(mocked_responses.calls) == 1


def test_hostile_names_and_types_never_break_the_listing():
    found = module.accounts_from_listing(listing(
        entry("\x1b[2Jclaude\u202e.json"), entry("x.json", kind="\x1b]0;owned\x07" * 20),
        entry("y.json", email=["not", "text"]), entry("z.json", kind=None, provider="CODEX"),
        {"name": 42}), make_proxy())
    assert [a.id for a in found.claude] == ["\x1b[2Jclaude\u202e.json", "y.json"]
    assert found.claude[1].email is None and found.codex[0].id == "z.json"
    unsupported = [s.reason for s in found.skipped if s.id == "x.json"][0]
    assert "\x1b" not in unsupported and "\x07" not in unsupported


def test_api_call_body_over_the_cap_never_reaches_the_parser(mocked_responses, session):
    found = listed(mocked_responses, session, entry())
    mocked_responses.post(CALL_V0, body=b'{"status_code": 200, "body": "' + b"x" * (5 << 20)
                          + b'"}', content_type="application/json")
    with pytest.raises(ProviderError, match="larger than"):
        module.fetch_usage(found.claude[0], session, Settings())


@pytest.mark.parametrize("bad", [{}, "text", 5, None, [], {"name": "  "}, {"name": 42},
                                 {"name": "n" * 256, "type": "claude", "auth_index": "ab"},
                                 {"name": "c.json", "type": "claude"}])
def test_unusable_entries_collapse_into_one_record_per_proxy(bad):
    found = module.accounts_from_listing(listing(*[bad] * 20000), make_proxy())
    assert not found.accounts
    assert [(s.id, s.state) for s in found.skipped] == [
        (module.BEYOND_CAP_ID, AccountState.UNREADABLE),
        (module.UNUSABLE_ID, AccountState.UNREADABLE)]
    assert "listed 20000 entries; only the first 5000 are read" in found.skipped[0].reason
    assert found.skipped[1].reason.startswith("unreadable: 5000 listing entries cannot be queried")


def test_a_listing_within_the_cap_is_read_whole_and_one_beyond_it_is_cut():
    proxy = make_proxy()
    entries = [entry("c%d.json" % index, auth_index="%016x" % index)
               for index in range(module.MAX_LISTED + 1)]
    found = module.accounts_from_listing(listing(*entries[:-1]), proxy)
    assert len(found.claude) == module.MAX_LISTED and not found.skipped
    found = module.accounts_from_listing(listing(*entries), proxy)
    assert len(found.claude) == module.MAX_LISTED
    assert [s.id for s in found.skipped] == [module.BEYOND_CAP_ID]


def test_unusable_record_quotes_at_most_three_names_printably():
    found = module.accounts_from_listing(listing(*[
        entry("\x1b[2Jold-%d.json" % index, auth_index=None) for index in range(10)]),
        make_proxy())
    reason = found.skipped[0].reason
    assert "10 listing entries" in reason and "10 without auth_index" in reason
    assert "old-2.json" in reason and "old-3.json" not in reason and "\x1b" not in reason
