"""Was the refresh request sent? Decided from exception types (http.never_sent), never from
message text: a refused connection, a failed name lookup and a connect timeout are unsent and
never mark a refresh token as spent; everything after the request was written is unknown. Real
loopback sockets where the kernel can produce the failure."""
import socket
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests
from urllib3.exceptions import (MaxRetryError, NameResolutionError, NewConnectionError,
                                ProtocolError, ProxyError)

from oauth_usage_tracker import demo, http
from oauth_usage_tracker.accounts import discover_accounts
from oauth_usage_tracker.config import Settings
from oauth_usage_tracker.errors import ProviderError, TokenRefreshError
from oauth_usage_tracker.providers import claude
from oauth_usage_tracker.refresh import GUARD

URL = "http://127.0.0.1:9/x"


def refused() -> NewConnectionError:
    return NewConnectionError(None, "Failed to establish a new connection: [Errno 111] refused")


@pytest.mark.parametrize("error", [
    requests.exceptions.ConnectTimeout("connect timed out"),
    requests.exceptions.ConnectionError(MaxRetryError(None, URL, refused())),
    requests.exceptions.ConnectionError(MaxRetryError(
        None, URL, NameResolutionError("example.test", None, socket.gaierror(-2, "unknown")))),
    requests.exceptions.ProxyError(MaxRetryError(
        None, URL, ProxyError("Unable to connect to proxy", refused()))),
], ids=["connect-timeout", "refused", "name-resolution", "proxy-unreachable"])
def test_never_sent_when_no_connection_was_made(error):
    assert http.never_sent(error) is True


@pytest.mark.parametrize("error", [
    requests.exceptions.ReadTimeout("read timed out"),
    requests.exceptions.Timeout(),  # the body deadline, long after sending
    requests.exceptions.ConnectionError(ProtocolError(
        "Connection aborted.", ConnectionResetError(104, "Connection reset by peer"))),
    requests.exceptions.SSLError("handshake failed"),
    # Words alone decide nothing: this text says "refused", the type says nothing.
    requests.exceptions.ConnectionError("[Errno 111] Connection refused"),
    requests.exceptions.ConnectionError("Failed to resolve: Name or service not known"),
], ids=["read-timeout", "deadline", "reset", "tls", "refused-text", "resolve-text"])
def test_outcome_unknown_otherwise(error):
    assert http.never_sent(error) is False


@pytest.fixture
def full_backlog():
    """A loopback port whose accept queue is full: a new connection's SYN is dropped, so the
    client sees a real connect timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    for _ in range(4):
        client = socket.socket()
        client.setblocking(False)
        try:
            client.connect(server.getsockname())
        except BlockingIOError:
            pass
        fillers.append(client)
    time.sleep(0.1)
    yield "http://127.0.0.1:%d" % server.getsockname()[1]
    for client in fillers:
        client.close()
    server.close()


@pytest.fixture
def refused_url():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return "http://127.0.0.1:%d" % port


def test_send_real_connect_timeout_is_unsent(session, full_backlog):
    with pytest.raises(ProviderError) as caught:
        http.send(session, "POST", full_backlog + "/t", what="Test", timeout=0.5, max_body=1024)
    assert caught.value.unsent is True
    assert str(caught.value) == "Test request timed out after 0.5 s"


def test_send_real_refused_connection_is_unsent(session, refused_url):
    with pytest.raises(ProviderError) as caught:
        http.send(session, "POST", refused_url + "/t", what="Test", timeout=2, max_body=1024)
    assert caught.value.unsent is True
    assert str(caught.value) == "Test request failed: connection refused"


def test_send_real_silence_after_the_request_is_an_unknown_outcome(session):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # the kernel accepts; nobody ever answers
    try:
        with pytest.raises(ProviderError) as caught:
            http.send(session, "POST", "http://127.0.0.1:%d/t" % listener.getsockname()[1],
                      what="Test", timeout=0.5, max_body=1024)
    finally:
        listener.close()
    assert caught.value.unsent is False


def test_connect_timeout_to_the_token_endpoint_does_not_stop_later_refreshes(
        tmp_path, fake, full_backlog, session):
    """As under --watch: one process, the same account, the token endpoint first unreachable
    (connect timeout), then back. The second fetch refreshes; the token was never marked."""
    directory = tmp_path / "auth"
    directory.mkdir()
    fake.add_account(demo.FakeAccount("claude", "w@example.com"), "old-access", "old-refresh")
    fake.expire_access("old-access")
    demo.write_credential(str(directory), "claude", "w@example.com", "old-access", "old-refresh",
                          datetime.now(timezone.utc) - timedelta(hours=1))
    (account,) = discover_accounts(str(directory)).claude
    working = Settings.from_environ(fake.environ(), timeout=2.0)
    unreachable = working.with_(claude_token_url=full_backlog + demo.TOKEN_PATH, timeout=0.5)
    with pytest.raises(TokenRefreshError) as first:
        claude.fetch_usage(account, session, unreachable)
    assert first.value.outcome_unknown is False
    assert "timed out" in str(first.value)
    assert not GUARD.is_unclear("old-refresh")
    usage = claude.fetch_usage(account, session, working)
    assert usage.token_refreshed is True and usage.windows
    assert fake.count(demo.TOKEN_PATH) == 1


def test_read_timeout_from_the_token_endpoint_marks_the_token(tmp_path, session):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    settings = Settings(claude_token_url="http://127.0.0.1:%d/t" % listener.getsockname()[1],
                        timeout=0.5)
    try:
        with pytest.raises(TokenRefreshError) as caught:
            claude.exchange_refresh_token(session, settings, "some-refresh")
    finally:
        listener.close()
    assert caught.value.outcome_unknown is True
