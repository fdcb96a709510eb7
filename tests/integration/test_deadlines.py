"""Hard per-request deadlines (SPEC §12), through the installed script against a real loopback
server that trickles its response headers one byte every half second: a one-shot run ends within a
few timeouts with a clear sentence, and SIGTERM or Ctrl-C ends a run within seconds, after token
write-backs but never waiting for usage reads.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from oauth_usage_tracker import http
from support import (CLAUDE_REFRESH, assert_no_secrets, loopback_server, signal_and_reap,
                     wait_for)

import hostile_server as hs
from hostile_server import CLAUDE_PATH, CODEX_PATH, TOKEN_PATH

COMMAND = ([shutil.which("oauth-usage-tracker")] if shutil.which("oauth-usage-tracker")
           else [sys.executable, "-m", "oauth_usage_tracker"])
PAST = "2000-01-01T00:00:00Z"


def _env(tmp_path, *servers_for_paths):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH_USAGE_TRACKER_")}
    env["HOME"] = str(tmp_path / "home")
    env.update(hs.endpoint_environ(*servers_for_paths))
    return env



@pytest.mark.parametrize("path, what", [(CODEX_PATH, "Codex usage"),
                                        (CLAUDE_PATH, "Claude usage"),
                                        (TOKEN_PATH, "Claude token refresh")])
def test_trickled_headers_one_shot_run_ends_within_a_few_timeouts(path, what, auth_dir,
                                                                  tmp_path):
    victim = auth_dir.codex() if path == CODEX_PATH else auth_dir.claude(
        expired=PAST if path == TOKEN_PATH else "2099-01-01T00:00:00Z")
    before = victim.read_bytes()
    other = auth_dir.codex(email="other@example.com", access_token="healthy-codex-token-0001")
    with hs.HostileServer(hs.trickle_headers(0.5), path,
                          healthy={"healthy-codex-token-0001"}) as server:
        base = server.base_url
        started = time.monotonic()
        result = subprocess.run(COMMAND + ["--auth-dir", str(auth_dir), "--json", "--no-state",
                                           "--refresh-expired", "--timeout", "2", "-vv"],
                                env=_env(tmp_path, base, base, base), capture_output=True,
                                text=True, timeout=60, stdin=subprocess.DEVNULL)
        elapsed = time.monotonic() - started
    assert elapsed < 9, elapsed  # a few timeouts, start-up included
    assert result.returncode == 1, result.stderr
    accounts = {a["id"]: a for a in json.loads(result.stdout)["accounts"]}
    assert accounts[victim.name]["error"].startswith("%s request timed out after 2 s" % what)
    assert accounts[other.name]["windows"] and accounts[other.name]["error"] is None
    assert "Traceback" not in result.stderr
    if path == TOKEN_PATH:
        assert victim.read_bytes() == before  # no answer, no write
    assert_no_secrets(result.stdout, result.stderr)


@pytest.mark.parametrize("number, extra, status", [
    (signal.SIGTERM, [], 143), (signal.SIGINT, [], 130),
    (signal.SIGTERM, ["--watch", "3600"], 0), (signal.SIGINT, ["--watch", "3600"], 0)])
def test_signal_ends_a_run_stuck_in_a_trickled_read_within_seconds(number, extra, status,
                                                                    auth_dir, tmp_path):
    auth_dir.codex()
    with hs.HostileServer(hs.trickle_headers(0.5), CODEX_PATH) as server:
        base = server.base_url
        process = subprocess.Popen(
            COMMAND + ["--auth-dir", str(auth_dir), "--json", "--no-state", "--timeout", "120",
                       "--output", str(tmp_path / "report.json")] + extra,
            env=_env(tmp_path, base, base, base), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: server.count(CODEX_PATH) == 1)
            time.sleep(0.3)  # a few header bytes are in
            out, err, elapsed = signal_and_reap(process, number)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert elapsed < 4, elapsed
    assert process.returncode == status, err
    assert "Traceback" not in err


def _slow_token(server, conn, request):
    server.stall(2.0)
    hs.good_answer(server, conn, request)


def test_sigterm_waits_for_the_token_write_back_but_not_for_the_read(auth_dir, tmp_path):
    """A Claude refresh is on the wire (its answer comes after 2 s) while a Codex read trickles
    for ever: SIGTERM ends the run once the rotated tokens are on disk, not a timeout later."""
    claude = auth_dir.claude(expired=PAST)
    auth_dir.codex()
    with hs.HostileServer(hs.trickle_headers(0.5), CODEX_PATH) as usage, \
            hs.HostileServer(_slow_token, TOKEN_PATH) as token:
        process = subprocess.Popen(
            COMMAND + ["--auth-dir", str(auth_dir), "--json", "--no-state", "--timeout", "120",
                       "--refresh-expired"],
            env=_env(tmp_path, usage.base_url, usage.base_url, token.base_url),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: usage.count(CODEX_PATH) == 1 and token.count(TOKEN_PATH) == 1)
            out, err, elapsed = signal_and_reap(process, signal.SIGTERM)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        issued = list(token.issued)
    assert process.returncode == 143, err
    assert elapsed < 6, elapsed
    written = json.loads(claude.read_text())
    assert written["refresh_token"] in issued and written["refresh_token"] != CLAUDE_REFRESH
    assert token.count(TOKEN_PATH) == 1
    assert "Traceback" not in err
    assert_no_secrets(out, err)


def test_stop_reads_cuts_a_read_in_flight_and_refuses_the_next(session):
    with hs.HostileServer(hs.trickle_headers(0.5), CODEX_PATH) as server:
        url = server.base_url + CODEX_PATH
        import threading
        outcome = {}

        def read():
            try:
                http.send(session, "GET", url, what="Codex usage", timeout=60, max_body=1024)
            except Exception as error:  # the assertion below names what came out
                outcome["error"] = error
        worker = threading.Thread(target=read)
        worker.start()
        assert wait_for(lambda: server.count(CODEX_PATH) == 1)
        started = time.monotonic()
        http.stop_reads(session)
        worker.join(10)
        assert not worker.is_alive() and time.monotonic() - started < 2
        assert str(outcome["error"]) == "Codex usage request stopped: the run is ending"
        with pytest.raises(Exception) as caught:
            http.send(session, "GET", url, what="Codex usage", timeout=60, max_body=1024)
        assert "not sent" in str(caught.value) and caught.value.unsent
        assert server.count(CODEX_PATH) == 1


def test_deadline_covers_headers_in_process(session):
    with hs.HostileServer(hs.trickle_headers(0.2), CODEX_PATH) as server:
        started = time.monotonic()
        with pytest.raises(Exception) as caught:
            http.send(session, "GET", server.base_url + CODEX_PATH, what="Codex usage",
                      timeout=1, max_body=1024)
        assert time.monotonic() - started < 2.5
    assert str(caught.value) == "Codex usage request timed out after 1 s"


# --- TLS: the deadline covers the handshake and trickled headers over TLS too -------------------

@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    return str(cert), str(key)


class _TlsStaller:
    """A loopback TLS server that either never starts the handshake, or completes it and then
    trickles one header byte every 0.2 s, until stopped (at most MAX_STALL seconds)."""

    def __init__(self, certificate, handshake):
        import socket
        import ssl
        import threading
        self.handshake = handshake
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(*certificate)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.stopping = threading.Event()
        self.accepted = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stopping.set()
        self.listener.close()
        self.thread.join(10)

    @property
    def url(self):
        return "https://127.0.0.1:%d%s" % (self.listener.getsockname()[1], CODEX_PATH)

    def _serve(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        self.accepted.set()
        try:
            if self.handshake:
                conn = self.context.wrap_socket(conn, server_side=True)
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                give_up = time.monotonic() + hs.MAX_STALL
                while not self.stopping.wait(0.2) and time.monotonic() < give_up:
                    conn.sendall(b"a")
            else:
                self.stopping.wait(30)
        except OSError:
            pass
        finally:
            conn.close()


@pytest.mark.parametrize("handshake", [False, True], ids=["stalled-handshake", "trickled-headers"])
def test_deadline_covers_tls_handshake_and_headers(handshake, certificate):
    from oauth_usage_tracker.errors import ProviderError
    session = http.make_session(1)
    session.verify = certificate[0]
    try:
        with _TlsStaller(certificate, handshake) as server:
            started = time.monotonic()
            with pytest.raises(ProviderError) as caught:
                http.send(session, "GET", server.url, what="Codex usage", timeout=1.5,
                          max_body=1024)
            elapsed = time.monotonic() - started
            assert server.accepted.is_set()
    finally:
        session.close()
    assert str(caught.value) == "Codex usage request timed out after 1.5 s"
    assert elapsed < 3.5, elapsed


def test_a_kept_alive_tls_connection_sets_its_sockets_timeout_only_when_it_changes(
        certificate, monkeypatch):
    """The TLS socket urllib3 wraps around the connection's own sets its timeout only when it
    changes, as the plain one does (deadline._SSLSocket): nothing per request once connected."""
    import socket

    from oauth_usage_tracker import deadline
    reached = []
    real = socket.socket.settimeout

    def settimeout(sock, value):
        reached.append((type(sock).__name__, value))
        real(sock, value)
    monkeypatch.setattr(socket.socket, "settimeout", settimeout)
    session = http.make_session(1)
    session.verify = certificate[0]
    with loopback_server(lambda path: (200, "OK", []), keep_alive=True,
                         certificate=certificate) as (base, accepted):
        url = base + "/"
        try:
            assert http.send(session, "GET", url, what="Test", timeout=7.0,
                             max_body=64).body == b"{}"
            connected = len(reached)
            for _ in range(2):
                assert http.send(session, "GET", url, what="Test", timeout=7.0,
                                 max_body=64).body == b"{}"
            assert len(accepted) == 1 and len(reached) == connected  # nothing more per request
            assert http.send(session, "GET", url, what="Test", timeout=3.0,
                             max_body=64).body == b"{}"
            assert reached[connected:] == [("_SSLSocket", 3.0)]  # a new timeout is set, once
            (pool,) = [known[1] for known in session.get_adapter(url)._direct.values()]
            conn = pool.pool.get()
            assert isinstance(conn.sock, deadline._SSLSocket) and conn.sock.gettimeout() == 3.0
            pool.pool.put(conn)
        finally:
            session.close()
