"""Remote proxies through the installed script: loopback fakes of CLIProxyAPI's management API
relaying to the loopback fake of both providers, beside a local auth directory."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from cpa_fake import Credential, FakeManagement, SilentServer
from oauth_usage_tracker import demo
from support import assert_no_secrets, signal_and_reap, wait_for

SCRIPT = shutil.which("oauth-usage-tracker")
COMMAND = [SCRIPT] if SCRIPT else [sys.executable, "-m", "oauth_usage_tracker"]
NOW = datetime.now(timezone.utc)
KEY = "cpa-TESTmanagementKEYnotREAL-5f1c2b9e8d7a"
TOKENS = ("cpa-TESTclaudeACCESSnotREAL-0001", "cpa-TESTcodexACCESSnotREAL-0002",
          "cpa-TESTclaudeACCESSnotREAL-0003", "cpa-TESTclaudeLIMITEDnotREAL-0004",
          "cpa-TESTclaudeDEADtokenNOTREAL-0005")


def run(args, env_extra=None, timeout=60):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH_USAGE_TRACKER_")}
    env.update(env_extra or {})
    return subprocess.run(COMMAND + list(args), env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def providers():
    with demo.FakeProviders() as fake:
        yield fake


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "cpa.key"
    path.write_text(KEY + "\n")
    path.chmod(0o600)
    return path


def proxy_a(providers):
    """A v0 proxy: a healthy Claude and Codex account, a disabled one, one listed without
    auth_index, a Gemini credential."""
    providers.add_account(demo.FakeAccount("claude", "ann@example.com", [10.0, 20.0]), TOKENS[0])
    providers.add_account(demo.FakeAccount("codex", "bob@example.com", [30.0, 40.0]), TOKENS[1])
    return FakeManagement(KEY, [
        Credential("claude-ann@example.com.json", "claude", "ann@example.com", TOKENS[0]),
        Credential("codex-bob@example.com-plus.json", "codex", "bob@example.com", TOKENS[1],
                   account_id="acct-bob-7d3e"),
        Credential("claude-off@example.com.json", "claude", "off@example.com", TOKENS[2],
                   disabled=True),
        Credential("claude-old@example.com.json", "claude", "old@example.com", TOKENS[2],
                   extra={"no_index": True}),
        Credential("gemini-gus@example.com.json", "gemini", "gus@example.com", "x"),
    ])


def proxy_b(providers):
    """A v8-only proxy: a healthy account whose file name is also in proxy A, one answered 429,
    one whose token the provider rejects."""
    providers.add_account(demo.FakeAccount("claude", "cat@example.com", [50.0, 60.0]), TOKENS[2])
    providers.add_account(demo.FakeAccount("claude", "lim@example.com", behaviour="rate_limited"),
                          TOKENS[3])
    return FakeManagement(KEY, [
        Credential("claude-ann@example.com.json", "claude", "cat@example.com", TOKENS[2]),
        Credential("claude-lim@example.com.json", "claude", "lim@example.com", TOKENS[3]),
        Credential("claude-dead@example.com.json", "claude", "dead@example.com", TOKENS[4]),
    ], api="v8")


def test_two_proxies_and_a_local_directory_in_one_run(providers, auth_dir, key_file, tmp_path):
    demo.populate(providers, str(auth_dir), claude=1, codex=0)
    with proxy_a(providers) as a, proxy_b(providers) as b:
        result = run(["--auth-dir", str(auth_dir), "--cpa-url", a.url, "--cpa-url", b.url + "/",
                      "--cpa-key-file", str(key_file), "--state-dir", str(tmp_path / "state"),
                      "--json", "-vv"], providers.environ())
        source_a, source_b = a.url[len("http://"):], b.url[len("http://"):]
        assert a.failed_logins == b.failed_logins == 0
        assert "/v8/management/credentials" not in a.requests
        assert b.requests[:2] == ["/v0/management/auth-files", "/v8/management/credentials"]
        assert all(path == "/v8/management/requests/api-call" for path in b.requests[2:])
    assert result.returncode == 1, result.stderr  # the 429 without stale values, the dead login
    report = json.loads(result.stdout)
    by_key = {(account["source"], account["id"]): account for account in report["accounts"]}
    assert set(by_key) == {
        ("local", "claude-claude0000@example.com.json"),
        (source_a, "claude-ann@example.com.json"), (source_a, "codex-bob@example.com-plus.json"),
        (source_b, "claude-ann@example.com.json"), (source_b, "claude-lim@example.com.json"),
        (source_b, "claude-dead@example.com.json")}
    ann = by_key[(source_a, "claude-ann@example.com.json")]
    assert ann["error"] is None and ann["windows"][0]["used_percent"] == 10.0
    assert by_key[(source_b, "claude-ann@example.com.json")]["windows"][0]["used_percent"] == 50.0
    bob = by_key[(source_a, "codex-bob@example.com-plus.json")]
    assert bob["error"] is None and bob["plan"] == "plus"
    assert [w["used_percent"] for w in bob["windows"]] == [30.0, 40.0]
    assert "429" in by_key[(source_b, "claude-lim@example.com.json")]["error"]
    dead = by_key[(source_b, "claude-dead@example.com.json")]["error"]
    assert "401" in dead and "log in again" in dead
    skipped = {(s["source"], s["id"]): s["reason"] for s in report["skipped"]}
    assert skipped[(source_a, "claude-off@example.com.json")] == "disabled"
    assert skipped[(source_a, "(unusable listing entries)")].startswith("unreadable: 1 ")
    assert "claude-old@example.com.json" in skipped[(source_a, "(unusable listing entries)")]
    assert skipped[(source_a, "gemini-gus@example.com.json")] == "unsupported type 'gemini'"
    # The same headers as local mode, the account id from the listing's claims, the token
    # substituted by the proxy.
    codex_headers = [h for h in providers.usage_headers if "chatgpt-account-id" in h]
    assert [h["chatgpt-account-id"] for h in codex_headers] == ["acct-bob-7d3e"]
    assert codex_headers[0]["user-agent"] == "codex-cli"
    claude_headers = [h for h in providers.usage_headers if "anthropic-beta" in h]
    assert {h["user-agent"] for h in claude_headers} == {"claude-code/2.1.0"}
    assert "management API /v8/management found" in result.stderr
    assert_no_secrets(result.stdout, result.stderr)
    for secret in TOKENS + (KEY,):
        assert secret not in result.stdout + result.stderr
        assert secret not in (tmp_path / "state" / "state.json").read_text()


def test_table_groups_accounts_by_source(providers, auth_dir, key_file, tmp_path):
    demo.populate(providers, str(auth_dir), claude=1, codex=0)
    with proxy_a(providers) as a:
        result = run(["--auth-dir", str(auth_dir), "--cpa-url", a.url, "--cpa-key-file",
                      str(key_file), "--no-state"], providers.environ())
    source = a.url[len("http://"):]
    assert result.stdout.index("== local ==") < result.stdout.index("claude0000@example.com")
    assert result.stdout.index("== %s ==" % source) < result.stdout.index("ann@example.com")
    assert "%s/claude-off@example.com.json" % source in result.stdout


def test_cpa_url_alone_reads_no_local_directory(providers, key_file, tmp_path):
    home = tmp_path / "home"
    (home / ".cli-proxy-api").mkdir(parents=True)
    demo.populate(providers, str(home / ".cli-proxy-api"), claude=1, codex=0)
    with proxy_a(providers) as a:
        result = run(["--cpa-url", a.url, "--cpa-key-file", str(key_file), "--no-state",
                      "--json"], dict(providers.environ(), HOME=str(home)))
    assert result.returncode == 1  # the entry without auth_index is unreadable
    assert {a["source"] for a in json.loads(result.stdout)["accounts"]} == {
        a.url[len("http://"):]}


def test_wrong_key_one_failed_login_per_run_then_none_until_the_key_file_changes(
        providers, key_file, tmp_path):
    state = ["--state-dir", str(tmp_path / "state")]
    with proxy_a(providers) as a, proxy_b(providers) as b:
        a.key = "the-key-the-proxy-expects"
        args = ["--cpa-url", a.url, "--cpa-url", b.url, "--cpa-key-file", str(key_file),
                "--json", "-vv"] + state
        first = run(args, providers.environ())
        assert a.failed_logins == 1
        assert a.requests == ["/v0/management/auth-files"]
        assert first.returncode == 1
        report = json.loads(first.stdout)
        reason = {s["id"]: s["reason"] for s in report["skipped"]}[a.url[len("http://"):]]
        assert "rejected the management key (401)" in reason
        assert "until the key changes or an hour has passed" in reason
        assert any(account["error"] is None for account in report["accounts"])  # B goes on

        second = run(args, providers.environ())
        assert a.failed_logins == 1 and len(a.requests) == 1  # not even asked
        assert "rejected this management key at" in second.stdout
        assert second.returncode == 1

        os.utime(key_file, (time.time() + 5, time.time() + 5))  # the operator edits the file
        run(args, providers.environ())
        assert a.failed_logins == 2
    stored = (tmp_path / "state" / "rejected-keys.json").read_text()
    assert KEY not in stored and "the-key-the-proxy-expects" not in stored
    for result in (first, second):
        assert KEY not in result.stdout + result.stderr
        assert_no_secrets(result.stdout, result.stderr)


def test_a_proxy_that_never_answers_costs_one_timeout(providers, key_file, tmp_path):
    with SilentServer() as silent, proxy_a(providers) as a:
        started = time.monotonic()
        result = run(["--cpa-url", silent.url, "--cpa-url", a.url, "--cpa-key-file",
                      str(key_file), "--timeout", "3", "--no-state", "--json"],
                     providers.environ())
        elapsed = time.monotonic() - started
        silent_source = silent.url[len("http://"):]
    assert elapsed < 3 + 5, elapsed  # one timeout (the listings run side by side), not two
    report = json.loads(result.stdout)
    reason = {s["id"]: s["reason"] for s in report["skipped"]}[silent_source]
    assert "timed out after 3 s" in reason
    assert sum(1 for account in report["accounts"] if account["windows"]) == 2


def test_upstream_transport_failure_is_a_502_for_that_account_only(providers, key_file,
                                                                   tmp_path):
    with proxy_a(providers) as a:
        closed = SilentServer().__enter__()
        dead_url = closed.url
        closed.__exit__()  # nothing listens there any more: the relay fails
        env = dict(providers.environ(), OAUTH_USAGE_TRACKER_CODEX_USAGE_URL=dead_url + "/x")
        result = run(["--cpa-url", a.url, "--cpa-key-file", str(key_file), "--no-state",
                      "--json"], env)
    by_id = {account["id"]: account for account in json.loads(result.stdout)["accounts"]}
    assert "could not reach the provider (502)" in by_id["codex-bob@example.com-plus.json"][
        "error"]
    assert by_id["claude-ann@example.com.json"]["error"] is None


def test_calls_in_flight_per_proxy_stay_within_cpa_workers(key_file, tmp_path):
    with demo.FakeProviders(latency=0.2) as slow:
        credentials = []
        for index in range(8):
            token = "cpa-slow-%d" % index
            slow.add_account(demo.FakeAccount("claude", "s%d@example.com" % index), token)
            credentials.append(Credential("claude-s%d.json" % index, "claude",
                                          "s%d@example.com" % index, token))
        with FakeManagement(KEY, credentials) as proxy:
            result = run(["--cpa-url", proxy.url, "--cpa-key-file", str(key_file),
                          "--cpa-workers", "2", "--workers", "8", "--no-state"], slow.environ())
            assert result.returncode == 0, result.stderr
            assert proxy.max_in_flight == 2
            assert len(proxy.api_calls) == 8


@pytest.mark.parametrize("args, env, message", [
    (["--cpa-url", "http://10.1.2.3:8317"], {"OAUTH_USAGE_TRACKER_CPA_KEY": KEY},
     "Refused CLIProxyAPI URL"),
    (["--cpa-url", "https://cpa.example.net"], {}, "needs the management key"),
    (["--cpa-url", "https://cpa.example.net"], {"OAUTH_USAGE_TRACKER_CPA_KEY": "two words"},
     "one word of printable ASCII"),
    (["--cpa-url", "https://cpa.example.net", "--cpa-key-file", "{fifo}"], {},
     "not a regular file"),
    (["--cpa-url", "https://cpa.example.net", "--cpa-key-file", "{missing}"], {},
     "Cannot open the management key file"),
    (["--cpa-url", "https://cpa.example.net", "--cpa-workers", "0"],
     {"OAUTH_USAGE_TRACKER_CPA_KEY": KEY}, "must be at least 1"),
])
def test_bad_remote_configuration_exits_2_without_quoting_the_key(args, env, message, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    args = [arg.format(fifo=tmp_path / "fifo", missing=tmp_path / "missing") for arg in args]
    result = run(args + ["--no-state"], env, timeout=20)
    assert result.returncode == 2
    assert message in result.stderr
    assert KEY not in result.stderr and "two words" not in result.stderr


def test_group_readable_key_file_warns(providers, key_file):
    key_file.chmod(0o644)
    with proxy_a(providers) as a:
        result = run(["--cpa-url", a.url, "--cpa-key-file", str(key_file), "--no-state"],
                     providers.environ())
    assert "can be read by group or others (mode 644)" in result.stderr
    assert "ann@example.com" in result.stdout
    assert KEY not in result.stdout + result.stderr


def test_key_rejected_mid_run_stops_the_proxy_and_its_accounts_keep_their_last_values(
        providers, key_file, tmp_path):
    state = ["--state-dir", str(tmp_path / "state")]
    with proxy_a(providers) as a:
        args = ["--cpa-url", a.url, "--cpa-key-file", str(key_file), "--cpa-workers", "1",
                "--json"] + state
        assert run(args, providers.environ()).returncode == 1  # the entry without auth_index
        calls = len(a.api_calls)
        a.key_after_listing = "a-new-key-set-by-the-operator"
        result = run(args, providers.environ())
        assert a.failed_logins == 1  # one slot: exactly one rejected call, then none
        assert len(a.api_calls) == calls
        # Next run: the listing is not even tried; the accounts keep their last values.
        again = run(args, providers.environ())
        assert a.failed_logins == 1
    for output in (result.stdout, again.stdout):
        accounts = json.loads(output)["accounts"]
        assert {account["id"] for account in accounts} == {
            "claude-ann@example.com.json", "codex-bob@example.com-plus.json"}
        for account in accounts:
            assert "management key" in account["error"]
            assert account["stale"] is True and account["windows"]
    assert KEY not in result.stdout + result.stderr + again.stdout + again.stderr


def test_the_tool_sends_the_placeholder_never_a_token_and_the_same_headers_as_local_mode(
        providers, key_file):
    with proxy_a(providers) as a:
        result = run(["--cpa-url", a.url, "--cpa-key-file", str(key_file), "--no-state",
                      "--provider", "claude"], providers.environ())
        sent = list(a.sent_headers)
    assert "ann@example.com" in result.stdout
    assert sent == [{"Accept": "application/json", "anthropic-beta": "oauth-2025-04-20",
                     "User-Agent": "claude-code/2.1.0", "Authorization": "Bearer $TOKEN$"}]


def test_library_discover_remote_feeds_the_tracker(providers, tmp_path, monkeypatch):
    from oauth_usage_tracker import OAuthUsageTracker, Settings, discover_remote
    settings = Settings.from_environ(providers.environ())
    with proxy_b(providers) as b:
        found = discover_remote(b.url, KEY, settings=settings)
        assert {a.source for a in found.accounts} == {b.url[len("http://"):]}
        with OAuthUsageTracker(settings=settings, state_dir=tmp_path / "state") as tracker:
            results = tracker.refresh_and_wait(found.codex, found.claude)
    by_email = {usage.email: usage for usage in results}
    assert by_email["cat@example.com"].windows and by_email["cat@example.com"].error is None
    assert by_email["cat@example.com"].source == b.url[len("http://"):]
    assert by_email["dead@example.com"].login_problem


def test_proxies_and_key_from_the_environment(providers):
    with proxy_a(providers) as a, proxy_b(providers) as b:
        env = dict(providers.environ(), OAUTH_USAGE_TRACKER_CPA_URL="%s, %s" % (a.url, b.url),
                   OAUTH_USAGE_TRACKER_CPA_KEY=KEY)
        result = run(["--no-state", "--json", "-vv"], env)
    sources = {account["source"] for account in json.loads(result.stdout)["accounts"]}
    assert sources == {a.url[len("http://"):], b.url[len("http://"):]}
    assert KEY not in result.stdout + result.stderr


def test_a_slow_proxy_does_not_hold_up_another(key_file):
    with demo.FakeProviders() as upstream:
        credentials = {"slow": [], "fast": []}
        for name in credentials:
            for index in range(12):
                token = "cpa-%s-%d" % (name, index)
                email = "%s%d@example.com" % (name, index)
                upstream.add_account(demo.FakeAccount("claude", email), token)
                credentials[name].append(Credential("claude-%s.json" % email, "claude", email,
                                                    token))
        with FakeManagement(KEY, credentials["slow"]) as slow, \
                FakeManagement(KEY, credentials["fast"]) as fast:
            slow.delay = 1.0
            result = run(["--cpa-url", slow.url, "--cpa-url", fast.url, "--cpa-key-file",
                          str(key_file), "--cpa-workers", "2", "--workers", "8", "--no-state"],
                         upstream.environ())
            assert result.returncode == 0, result.stderr
            assert slow.max_in_flight == 2
            # The slow proxy answers two calls a second; the fast one is done before the slow
            # one's second pair, not after its sixth.
            assert max(fast.answered) < sorted(slow.answered)[3]


def test_without_state_each_run_offers_the_wrong_key_and_the_proxy_locks_this_host_out(
        providers, key_file):
    """Why the rejection is remembered: with --no-state nothing is, and the fake (like the
    proxy) blocks the address after the fifth failed login; the tool then names the lockout."""
    with proxy_a(providers) as a:
        a.key = "the-key-the-proxy-expects"
        args = ["--cpa-url", a.url, "--cpa-key-file", str(key_file), "--no-state", "--json"]
        for _ in range(5):
            assert run(args, providers.environ()).returncode == 1
        assert a.failed_logins == 5
        a.key = KEY  # even the right key is refused now
        result = run(args, providers.environ())
        assert a.failed_logins == 5
    reason = json.loads(result.stdout)["skipped"][0]["reason"]
    assert "(403: remote management is off, or this host is locked out" in reason


def test_watch_lists_the_proxy_again_every_interval_and_exits_0_on_sigterm(providers, key_file,
                                                                           tmp_path):
    output = tmp_path / "report.json"

    def emails():
        try:
            return {a["email"] for a in json.loads(output.read_text())["accounts"]}
        except (OSError, ValueError):
            return set()

    with proxy_a(providers) as a:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH_USAGE_TRACKER_")}
        env.update(providers.environ())
        process = subprocess.Popen(
            COMMAND + ["--cpa-url", a.url, "--cpa-key-file", str(key_file), "--json", "--output",
                       str(output), "--watch", "1", "--state-dir", str(tmp_path / "state")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: emails() == {"ann@example.com", "bob@example.com"})
            # An account added at the proxy shows up at the next interval.
            providers.add_account(demo.FakeAccount("claude", "new@example.com"), "cpa-new-tok")
            a.credentials.append(Credential("claude-new.json", "claude", "new@example.com",
                                            "cpa-new-tok", auth_index="00000000000000ee"))
            assert wait_for(lambda: "new@example.com" in emails())
            _, stderr, _ = signal_and_reap(process, signal.SIGTERM)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 0, stderr
    assert a.requests.count("/v0/management/auth-files") >= 2
    assert a.failed_logins == 0
    report = json.loads(output.read_text())
    assert {s["id"] for s in report["skipped"]} >= {"claude-off@example.com.json",
                                                    "(unusable listing entries)"}
    assert "Traceback" not in stderr and KEY not in stderr


def test_metrics_label_each_source_and_one_file_name_at_two_proxies_stays_two_series(
        providers, auth_dir, key_file, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families
    demo.populate(providers, str(auth_dir), claude=1, codex=0)
    metrics = tmp_path / "oauth.prom"
    with proxy_a(providers) as a, proxy_b(providers) as b:
        run(["--auth-dir", str(auth_dir), "--cpa-url", a.url, "--cpa-url", b.url,
             "--cpa-key-file", str(key_file), "--no-state", "--prometheus", str(metrics)],
            providers.environ())
        source_a, source_b = a.url[len("http://"):], b.url[len("http://"):]
    text = metrics.read_text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    info = {(s.labels["source"], s.labels["account"])
            for s in families["oauth_usage_account_info"].samples}
    assert {("local", "claude-claude0000@example.com.json"),
            (source_a, "claude-ann@example.com.json"),
            (source_b, "claude-ann@example.com.json")} <= info
    states = {(s.labels["source"], s.labels["account"], s.labels["state"]): s.value
              for s in families["oauth_usage_account_state"].samples}
    assert states[(source_b, "claude-dead@example.com.json", "login_failed")] == 1
    assert states[(source_a, "claude-ann@example.com.json", "ok")] == 1
    assert KEY not in text


SECRET = "pasted-SECRETinURLnotREAL-9e1d"


@pytest.mark.parametrize("args, env", [
    (["--cpa-url", "https://cpa.example.net/?key=" + SECRET], {"OAUTH_USAGE_TRACKER_CPA_KEY": KEY}),
    (["--cpa-url", "https://cpa.example.net/#" + SECRET], {"OAUTH_USAGE_TRACKER_CPA_KEY": KEY}),
    (["--cpa-url", "https://admin:%s@cpa.example.net" % SECRET],
     {"OAUTH_USAGE_TRACKER_CPA_KEY": KEY}),
    (["--cpa-url", "http://admin:%s@10.1.2.3:8317/?k=%s" % (SECRET, SECRET)],
     {"OAUTH_USAGE_TRACKER_CPA_KEY": KEY}),
    ([], {"OAUTH_USAGE_TRACKER_CLAUDE_USAGE_URL": "http://u:%s@10.1.2.3/usage" % SECRET}),
    ([], {"OAUTH_USAGE_TRACKER_CODEX_USAGE_URL": "http://10.1.2.3/usage?token=" + SECRET}),
])
def test_refused_urls_are_named_without_their_userinfo_or_query(args, env, tmp_path):
    (tmp_path / "auth").mkdir()
    result = run(args + ["--no-state", "-vv", "--auth-dir", str(tmp_path / "auth")], env,
                 timeout=20)
    assert result.returncode == 2, result.stderr
    assert "Refused" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def many_accounts(providers, count):
    credentials = []
    for index in range(count):
        token = "cpa-TESTmanyACCESSnotREAL-%04d" % index
        email = "m%d@example.com" % index
        providers.add_account(demo.FakeAccount("claude", email, [10.0, 20.0]), token)
        credentials.append(Credential("claude-%s.json" % email, "claude", email, token))
    return credentials


def test_key_rejected_after_the_listing_costs_one_failed_login_whatever_the_cpa_workers(
        providers, key_file, tmp_path):
    """The probe gate: the first api-call goes alone; its 401 stops the other 19."""
    args = ["--cpa-url", None, "--cpa-key-file", str(key_file), "--cpa-workers", "8",
            "--workers", "8", "--json", "--state-dir", str(tmp_path / "state")]
    with FakeManagement(KEY, many_accounts(providers, 20)) as proxy:
        args[1] = proxy.url
        proxy.key_after_listing = "a-new-key-set-by-the-operator"
        first = run(args, providers.environ())
        assert proxy.failed_logins == 1
        assert proxy.requests.count("/v0/management/api-call") == 1
        second = run(args, providers.environ())
        assert proxy.failed_logins == 1  # nothing offered again: not even the listing
        assert proxy.requests.count("/v0/management/auth-files") == 1
    assert first.returncode == second.returncode == 1
    errors = [account["error"] for account in json.loads(first.stdout)["accounts"]]
    assert len(errors) == 20 and all("rejected the management key (401)" in e for e in errors)
    assert KEY not in first.stdout + first.stderr


def test_once_the_probe_is_answered_the_calls_run_side_by_side(key_file):
    with demo.FakeProviders(latency=0.2) as slow:
        with FakeManagement(KEY, many_accounts(slow, 12)) as proxy:
            result = run(["--cpa-url", proxy.url, "--cpa-key-file", str(key_file),
                          "--cpa-workers", "4", "--workers", "8", "--no-state"], slow.environ())
            assert result.returncode == 0, result.stderr
            assert proxy.max_in_flight == 4
            assert len(proxy.api_calls) == 12
            first_answer = min(proxy.answered)
            # The probe was answered before a second call arrived: nothing overlapped it.
            assert sorted(proxy.answered)[1] - first_answer >= 0.15


def test_a_proxy_whose_api_calls_hang_costs_one_timeout_and_one_call(providers, key_file):
    with FakeManagement(KEY, many_accounts(providers, 10)) as proxy:
        proxy.delay = 30.0
        started = time.monotonic()
        result = run(["--cpa-url", proxy.url, "--cpa-key-file", str(key_file), "--cpa-workers",
                      "8", "--workers", "8", "--timeout", "2", "--no-state", "--json"],
                     providers.environ())
        elapsed = time.monotonic() - started
        assert proxy.requests.count("/v0/management/api-call") == 1
    assert elapsed < 2 + 5, elapsed
    errors = [account["error"] for account in json.loads(result.stdout)["accounts"]]
    assert len(errors) == 10 and all("no more requests to it in this run" in e
                                     or "timed out" in e for e in errors)


@pytest.mark.parametrize("state", [["--no-state"], ["--state-dir", "{file}/state"], []])
def test_a_wrong_key_that_cannot_be_remembered_is_announced_at_start(providers, key_file,
                                                                     tmp_path, state):
    (tmp_path / "file").write_text("not a directory")
    state = [arg.format(file=tmp_path / "file") for arg in state]
    with proxy_a(providers) as a:
        result = run(["--cpa-url", a.url, "--cpa-key-file", str(key_file), "--json"] + state,
                     dict(providers.environ(), HOME=str(tmp_path / "home")))
    warned = "locks this host out of its management API for 30 minutes after 5 failed logins"
    assert (warned in result.stderr) is bool(state), result.stderr
    if state:
        assert ("--no-state" if state == ["--no-state"] else "cannot be created") \
            in result.stderr
    assert result.stdout  # the run goes on


def test_a_hostile_listing_costs_a_bounded_number_of_events_and_hook_runs(key_file, tmp_path):
    """20,000 `{}` entries and 60 accounts whose token the proxy lacks: two records for the
    junk, 62 events in the log, 50 hook runs and one warning; the next run announces nothing."""
    hook = tmp_path / "hook.sh"
    hook.write_text("#!/bin/sh\necho \"$OAUTH_USAGE_EVENT\" >> %s\n" % (tmp_path / "ran"))
    hook.chmod(0o700)
    credentials = [Credential("claude-h%d.json" % index, "claude", "h%d@example.com" % index, "")
                   for index in range(60)]
    with FakeManagement(KEY, credentials) as proxy:
        real_listing = proxy.listing
        proxy.listing = lambda: {"files": real_listing()["files"] + [{}] * 20000}
        args = ["--cpa-url", proxy.url, "--cpa-key-file", str(key_file), "--cpa-workers", "8",
                "--json", "--state-dir", str(tmp_path / "state"), "--on-event", str(hook),
                "--events-log", str(tmp_path / "events.log")]
        first = run(args, timeout=120)
        second = run(args, timeout=120)
    report = json.loads(first.stdout)
    assert len(report["accounts"]) == 60
    assert [s["id"] for s in report["skipped"]] == ["(listing entries beyond 5000)",
                                                     "(unusable listing entries)"]
    logged = [json.loads(line) for line in (tmp_path / "events.log").read_text().splitlines()]
    assert len(logged) == 62 and {e["event"] for e in logged} == {"login_failed"}
    assert (tmp_path / "ran").read_text().splitlines() == ["login_failed"] * 50
    assert first.stderr.count("the --on-event commands got the first 50; the other 12 were "
                              "not passed to them") == 1
    # Read after both runs: the second one announced nothing again.
    assert "--on-event" not in second.stderr and second.returncode == first.returncode


def test_no_state_with_a_proxy_says_so_at_error_level_even_with_q(providers, key_file):
    """The shipped cron line runs with -q: a set-up that cannot remember a rejected key (and so
    would lock the host out after 5 runs of a wrong key) must still be said, at ERROR."""
    with proxy_a(providers) as a:
        quiet = run(["--cpa-url", a.url, "--cpa-key-file", str(key_file), "--no-state", "-q",
                     "--json"], providers.environ())
        remembered = run(["--cpa-url", a.url, "--cpa-key-file", str(key_file), "-q", "--json"],
                         providers.environ())
    assert "ERROR: Rejected CLIProxyAPI management keys cannot be remembered" in quiet.stderr
    assert "cannot be remembered" not in remembered.stderr
