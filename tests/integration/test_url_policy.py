"""The endpoint URL policy (SPEC §8, §12) decided by the parser that connects: each URL form is
either refused before any token is read, or reaches the loopback server it names, through the
real HTTP stack and through the real script.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from oauth_usage_tracker import config, errors, http
from support import CODEX_ACCESS, assert_no_secrets

import hostile_server as hs
from hostile_server import CLAUDE_PATH, CODEX_PATH, TOKEN_PATH

COMMAND = ([shutil.which("oauth-usage-tracker")] if shutil.which("oauth-usage-tracker")
           else [sys.executable, "-m", "oauth_usage_tracker"])

# {port} is the loopback server's port; {other} a second loopback server standing in for a remote
# host (the place a confused parser would send the token).
REFUSED = [
    # A backslash ends the authority for urllib3 but not for urlsplit.
    "http://127.0.0.1:{other}\\@127.0.0.1:{port}/usage",
    "http://127.0.0.1:{port}\\@example.com/usage",
    "http://example.com\\.127.0.0.1:{port}/usage",
    "https://api.anthropic.com\\@example.com/usage",
    # Userinfo, in every disguise.
    "http://user@127.0.0.1:{port}/usage",
    "http://user:password@localhost:{port}/usage",
    "http://@127.0.0.1:{port}/usage",
    "https://user@api.anthropic.com/usage",
    "http://127.0.0.1:{port}%2f@example.com/usage",
    "http://127.0.0.1:{port}%40example.com/usage",
    # Other IPv4 spellings a resolver may take for loopback: where they go is the resolver's call.
    "http://127.1:{port}/usage",
    "http://0x7f.0.0.1:{port}/usage",
    "http://0x7f000001:{port}/usage",
    "http://2130706433:{port}/usage",
    "http://017700000001:{port}/usage",
    "http://0177.0.0.1:{port}/usage",
    "http://127.000.000.001:{port}/usage",
    "http://%31%32%37.0.0.1:{port}/usage",
    "http://0.0.0.0:{port}/usage",
    # IPv6 forms other than ::1.
    "http://[::ffff:127.0.0.1]:{port}/usage",
    "http://[::ffff:7f00:1]:{port}/usage",
    "http://[0:0:0:0:0:ffff:127.0.0.1]:{port}/usage",
    "http://[::1%25lo]:{port}/usage",
    "http://[::]:{port}/usage",
    "http://::1:{port}/usage",
    # Unicode dots and look-alikes, trailing dots, names that only look local.
    "http://127\u30020\u30020\u30021:{port}/usage",
    "http://127\uff0e0\uff0e0\uff0e1:{port}/usage",
    "http://localhost\u3002:{port}/usage",
    "https://ex\u0430mple.com/usage",
    "http://localhost.:{port}/usage",
    "http://localhost.evil:{port}/usage",
    "http://evil.localhost:{port}/usage",
    "http://localhost.localdomain:{port}/usage",
    # Whitespace and control characters anywhere.
    "http://127.0.0.1 :{port}/usage",
    "http://127.0.0.1:{port}/us age",
    "http://127.0.0.1\t:{port}/usage",
    "http://127.0.0.1:{port}\n.example.com/usage",
    "http://local\x00host:{port}/usage",
    "http://127.0.0.1:{port}/usage\r\nX-Injected: 1",
    "http://127.0.0.1\x7f:{port}/usage",
    # Not an http(s) URL with an authority at all, or an impossible port.
    "http:/127.0.0.1:{port}/usage",
    "http:127.0.0.1:{port}/usage",
    "//127.0.0.1:{port}/usage",
    "ftp://127.0.0.1:{port}/usage",
    "file:///etc/passwd",
    "http://127.0.0.1:99999/usage",
    "http://127.0.0.1:-1/usage",
    "http://:{port}/usage",
    "",
    # Plain http to somewhere else.
    "http://example.com/usage",
    "http://10.0.0.1:{port}/usage",
    "http://[2001:db8::1]:{port}/usage",
]

# Accepted loopback forms: the request must arrive at the loopback server.
REACHES_LOOPBACK = [
    "http://127.0.0.1:{port}/usage",
    "http://localhost:{port}/usage",
    "http://LOCALHOST:{port}/usage",
    "HTTP://127.0.0.1:{port}/usage",
    "http://127.0.0.1:{port}/usage?at=@x#frag@example.com",
]

ACCEPTED_HTTPS = [
    "https://api.anthropic.com/api/oauth/usage",
    "HTTPS://Chatgpt.COM/backend-api/wham/usage",
    "https://[2001:db8::1]:8443/usage",
    "https://mirror.example.com:8443/v1/oauth/token?x=1",
]


@pytest.fixture
def servers():
    with hs.HostileServer() as server, hs.HostileServer() as other:
        yield server, other


def _fill(form, servers):
    server, other = servers
    return form.format(port=server.base_url.rsplit(":", 1)[1],
                       other=other.base_url.rsplit(":", 1)[1])


def test_table_holds_at_least_thirty_forms():
    assert len(REFUSED) + len(REACHES_LOOPBACK) + len(ACCEPTED_HTTPS) >= 30
    assert len(set(REFUSED)) == len(REFUSED)


@pytest.mark.parametrize("form", REFUSED)
def test_check_url_refuses_form_and_nothing_is_sent(form, servers):
    url = _fill(form, servers)
    with pytest.raises(errors.ConfigurationError) as caught:
        config.check_url(url, "Codex usage")
    assert "Refused Codex usage URL" in str(caught.value)
    assert "\n" not in str(caught.value) and "\x00" not in str(caught.value)
    assert all(server.count(CODEX_PATH) == 0 for server in servers)


@pytest.mark.parametrize("form", REACHES_LOOPBACK)
def test_accepted_loopback_form_reaches_the_named_server(form, servers, session):
    url = _fill(form, servers)
    assert config.check_url(url) == url
    server, other = servers
    url = url.replace("/usage", CODEX_PATH)
    response = http.send(session, "GET", url, what="Codex usage", timeout=5, max_body=1 << 20)
    assert response.status == 200
    assert server.count(CODEX_PATH) == 1 and other.count(CODEX_PATH) == 0


@pytest.mark.parametrize("url", ACCEPTED_HTTPS)
def test_https_to_any_host_is_accepted(url):
    assert config.check_url(url) == url


@pytest.mark.parametrize("host, expected", [
    ("localhost", True), ("LOCALHOST", True), ("127.0.0.1", True), ("127.255.0.9", True),
    ("[::1]", True), ("::1", True), ("localhost.", False), ("127.1", False),
    ("[::ffff:127.0.0.1]", False), ("0x7f.0.0.1", False), ("2130706433", False),
    ("evil.localhost", False), ("", False)])
def test_is_loopback_host_takes_only_the_documented_spellings(host, expected):
    assert config.is_loopback_host(host) is expected


def test_endpoint_host_is_what_urllib3_connects_to():
    assert config.endpoint_host("http://127.0.0.1:1\\@localhost:2/x") == "127.0.0.1"
    assert config.endpoint_host("http://example.com#@127.0.0.1/") == "example.com"
    assert config.endpoint_host("http://[::1]:8/") == "[::1]"
    assert config.endpoint_host("http://127.0.0.1:99999/") is None


@pytest.mark.parametrize("form", [
    "http://127.0.0.1:{other}\\@127.0.0.1:{port}",
    "http://user@127.0.0.1:{port}",
    "http://127.1:{port}",
    "http://localhost.:{port}",
])
def test_script_refuses_bypass_url_with_exit_2_and_sends_nothing(form, servers, auth_dir):
    auth_dir.codex()
    auth_dir.claude()
    server, other = servers
    base = _fill(form, servers)
    env = hs.endpoint_environ(base, server.base_url, server.base_url)
    result = subprocess.run(COMMAND + ["--auth-dir", str(auth_dir), "--json", "--no-state"],
                            env=dict(_clean_env(), **env), capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert "Refused Codex usage URL" in result.stderr
    assert "Traceback" not in result.stderr
    for each in servers:
        assert each.count(CODEX_PATH) + each.count(CLAUDE_PATH) + each.count(TOKEN_PATH) == 0
    assert_no_secrets(result.stdout, result.stderr)


def test_script_with_accepted_loopback_spelling_reads_usage(servers, auth_dir):
    auth_dir.codex()
    server, _ = servers
    base = server.base_url.replace("127.0.0.1", "LOCALHOST")
    env = hs.endpoint_environ(base, base, base)
    result = subprocess.run(COMMAND + ["--auth-dir", str(auth_dir), "--json", "--no-state"],
                            env=dict(_clean_env(), **env), capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    report = json.loads(result.stdout)
    assert server.count(CODEX_PATH) == 1
    assert [account["email"] for account in report["accounts"]] == ["bob@example.com"]
    assert server.requests[0].credential == CODEX_ACCESS


def _clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith("OAUTH_USAGE_TRACKER_")}
