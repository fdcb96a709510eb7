"""The hard deadline while connecting to a name with several addresses (deadline.py's own
connect loop): getaddrinfo is patched to give four loopback addresses whose accept queues are
full, so the kernel drops every SYN and each connect would wait for its whole timeout. The
request still ends at its deadline, as a timeout that never left (unsent), stop_reads cuts it at
once, and addresses that refuse are skipped for the next one, as urllib3 does. A resolver that
hangs (getaddrinfo patched to block) is bounded by the same deadline."""
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
            if (host, port) != (NAME, PORT) or _numeric_only(*args, **kwargs):
                return real(host, port, *args, **kwargs)
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address)
                    for address in answers]
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        yield answers


def _numeric_only(family=0, kind=0, protocol=0, flags=0):
    """Whether a getaddrinfo call asks for an address literal only (which never reaches a
    resolver, so the real function answers it at once)."""
    return bool(flags & socket.AI_NUMERICHOST)


def _url(path="/usage"):
    return "http://%s:%d%s" % (NAME, PORT, path)


def assert_ends_at_the_deadline_unsent(session, method, timeout):
    """Send `method` to NAME:PORT with a deadline of `timeout` seconds; check it ended at that
    deadline (not later), as a timeout that sent nothing."""
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        http.send(session, method, _url(), what="Test", timeout=timeout, max_body=1024)
    elapsed = time.monotonic() - started
    assert str(caught.value) == "Test request timed out after %d s" % timeout
    assert caught.value.unsent is True
    assert timeout - 0.1 <= elapsed < timeout + 0.5, elapsed


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_four_unanswering_addresses_end_at_the_deadline_unsent(session, several, method):
    assert_ends_at_the_deadline_unsent(session, method, 2)  # urllib3's own loop took 4 x 2 s


def assert_stop_reads_cuts_a_get(session, started_waiting):
    """Start a GET with a 60 s deadline on a thread; once `started_waiting()` holds, stop the
    session's reads and check the GET ended at once, unsent, as a stopped request."""
    outcome = {}

    def read():
        try:
            http.send(session, "GET", _url(), what="Codex usage", timeout=60, max_body=1024)
        except ProviderError as error:
            outcome["error"] = error
    worker = threading.Thread(target=read)
    worker.start()
    assert wait_for(started_waiting)
    started = time.monotonic()
    http.stop_reads(session)
    worker.join(10)
    assert not worker.is_alive() and time.monotonic() - started < 1
    assert str(outcome["error"]) == "Codex usage request stopped: the run is ending"
    assert outcome["error"].unsent is True


def test_stop_reads_cuts_a_get_still_connecting(session, several):
    # The read is connecting once its deadline holds a socket (handed over before connect()).
    assert_stop_reads_cuts_a_get(
        session, lambda: any(d._socket is not None for d in session.deadlines._active))


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




@pytest.fixture
def hung_resolver(monkeypatch):
    """Make the lookup of NAME:PORT hang until the test ends (as a resolver that never answers
    would); yield the list of hosts looked up, in order."""
    release = threading.Event()
    asked = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if (host, port) != (NAME, PORT) or _numeric_only(*args, **kwargs):
            return real(host, port, *args, **kwargs)
        asked.append(host)
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield asked
    release.set()


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_hung_resolver_ends_at_the_deadline_unsent(session, hung_resolver, method):
    assert_ends_at_the_deadline_unsent(session, method, 1)  # the resolver would take 30 s
    assert NAME in hung_resolver


def test_stop_reads_cuts_a_get_still_resolving(session, hung_resolver):
    assert_stop_reads_cuts_a_get(session, lambda: NAME in hung_resolver)


def test_a_name_that_does_not_resolve_is_said_so_and_an_address_asks_no_resolver(
        session, monkeypatch):
    asked = []

    def getaddrinfo(host, port, family=0, kind=0, protocol=0, flags=0):
        asked.append((host, flags))
        if not flags & socket.AI_NUMERICHOST and host == "nowhere.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if flags & socket.AI_NUMERICHOST and not host[0].isdigit():
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", 1))]
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(ProviderError) as caught:
        http.send(session, "GET", "https://nowhere.invalid/usage", what="Test", timeout=5,
                  max_body=1024)
    assert str(caught.value) == "Test request failed: host name not found"
    assert caught.value.unsent is True
    with pytest.raises(ProviderError):
        http.send(session, "GET", "http://127.0.0.1:1/usage", what="Test", timeout=5,
                  max_body=1024)
    assert ("127.0.0.1", socket.AI_NUMERICHOST) in asked
    assert ("127.0.0.1", 0) not in asked  # an address literal never reaches the resolver
