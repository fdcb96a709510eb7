"""The hard deadline while connecting to a name with several addresses (deadline.py's own
connect loop): getaddrinfo is patched to give four loopback addresses whose accept queues are
full, so the kernel drops every SYN and each connect would wait for its whole timeout. The
request still ends at its deadline, as a timeout that never left (unsent), stop_reads cuts it at
once, and addresses that refuse are skipped for the next one, as urllib3 does."""
import socket
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from oauth_usage_tracker import demo, http
from oauth_usage_tracker.accounts import discover_accounts
from oauth_usage_tracker.config import Settings
from oauth_usage_tracker.errors import ProviderError, TokenRefreshError
from oauth_usage_tracker.providers import claude
from oauth_usage_tracker.refresh import GUARD

from support import wait_for
from unanswering import unanswering_ports

# localhost, which the URL policy lets plain http reach; port 1, which no test server uses: only
# this pair's lookups are patched, every other one resolves for real.
NAME, PORT = "localhost", 1


@pytest.fixture
def several(monkeypatch):
    """Resolve NAME:PORT to four unanswering loopback addresses; yield the list of addresses it
    resolves to, which a test may change."""
    with unanswering_ports(4) as ports:
        answers = [("127.0.0.1", port) for port in ports]
        real = socket.getaddrinfo

        def getaddrinfo(host, port, *args, **kwargs):
            if (host, port) != (NAME, PORT):
                return real(host, port, *args, **kwargs)
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address)
                    for address in answers]
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        yield answers


def _url(path="/usage"):
    return "http://%s:%d%s" % (NAME, PORT, path)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_four_unanswering_addresses_end_at_the_deadline_unsent(session, several, method):
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        http.send(session, method, _url(), what="Test", timeout=2, max_body=1024)
    elapsed = time.monotonic() - started
    assert str(caught.value) == "Test request timed out after 2 s"
    assert caught.value.unsent is True
    assert 1.9 <= elapsed < 2.5, elapsed  # urllib3's own loop took 4 x 2 s


def test_stop_reads_cuts_a_get_still_connecting(session, several):
    outcome = {}

    def read():
        try:
            http.send(session, "GET", _url(), what="Codex usage", timeout=60, max_body=1024)
        except ProviderError as error:
            outcome["error"] = error
    worker = threading.Thread(target=read)
    worker.start()
    # The read is connecting once its deadline holds a socket (handed over before connect()).
    assert wait_for(lambda: any(d._socket is not None for d in session.deadlines._active))
    started = time.monotonic()
    http.stop_reads(session)
    worker.join(10)
    assert not worker.is_alive() and time.monotonic() - started < 1
    assert str(outcome["error"]) == "Codex usage request stopped: the run is ending"
    assert outcome["error"].unsent is True


def test_refusing_addresses_are_skipped_for_one_that_answers(session, several):
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening: a connect is refused at once
    with refused, demo.FakeProviders() as fake:
        answering = fake.environ()["OAUTH_USAGE_TRACKER_CODEX_USAGE_URL"]
        port = int(answering.split(":")[2].split("/")[0])
        several[:] = [refused.getsockname(), refused.getsockname(), ("127.0.0.1", port)]
        response = http.send(session, "GET", _url(demo.CODEX_PATH), what="Codex usage",
                             timeout=5, max_body=64 * 1024)
    assert response.status == 401  # the fake answered (no token was sent)


def test_every_address_refusing_is_a_refused_connection_unsent(session, several):
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    with refused:
        several[:] = [refused.getsockname()] * 4
        with pytest.raises(ProviderError) as caught:
            http.send(session, "POST", _url(), what="Test", timeout=5, max_body=1024)
    assert str(caught.value) == "Test request failed: connection refused"
    assert caught.value.unsent is True


def test_a_refresh_cut_while_connecting_never_marks_the_token(tmp_path, several, session):
    directory = tmp_path / "auth"
    directory.mkdir()
    with demo.FakeProviders() as fake:
        fake.add_account(demo.FakeAccount("claude", "s@example.com"), "old-access", "spare-1")
        fake.expire_access("old-access")
        demo.write_credential(str(directory), "claude", "s@example.com", "old-access",
                              "spare-1", datetime.now(timezone.utc) - timedelta(hours=1))
        (account,) = discover_accounts(str(directory)).claude
        working = Settings.from_environ(fake.environ(), timeout=2.0)
        unreachable = working.with_(claude_token_url=_url(demo.TOKEN_PATH))
        started = time.monotonic()
        with pytest.raises(TokenRefreshError) as caught:
            claude.fetch_usage(account, session, unreachable)
        elapsed = time.monotonic() - started
        assert "timed out after 2 s" in str(caught.value) and elapsed < 2.5, elapsed
        assert caught.value.outcome_unknown is False
        assert not GUARD.is_unclear("spare-1")
        assert fake.count(demo.TOKEN_PATH) == 0
        usage = claude.fetch_usage(account, session, working)
    assert usage.token_refreshed is True


