"""A hostile HTTP server on 127.0.0.1, and helpers to run the script in-process against it.

The server answers the three endpoints (Codex usage, Claude usage, Claude token) like the real
services for every request, except the ones that reach the faulted path with a credential that is
not in `healthy`: those get the chosen fault, written on a raw socket so that it can be anything
a broken CDN, a dying upstream or a hostile peer sends (HTML pages, cut bodies, resets, stalls,
bombs). Every stall ends when the server stops, and at the latest after MAX_STALL seconds.
"""
import contextlib
import gzip
import json
import logging
import os
import socket
import struct
import threading
import time
from datetime import datetime, timezone
from typing import Callable, Dict, Iterable, List, Optional, Sequence
from urllib.parse import parse_qs

from oauth_usage_tracker import demo

CODEX_PATH, CLAUDE_PATH, TOKEN_PATH = demo.CODEX_PATH, demo.CLAUDE_PATH, demo.TOKEN_PATH
STOLEN_PATH = "/stolen"
MAX_STALL = 20.0
MAX_REQUEST = 1024 * 1024

Fault = Callable[["HostileServer", socket.socket, "Request"], None]


class Request:
    """One request as the server read it."""

    def __init__(self, method: str, path: str, headers: Dict[str, str], body: bytes):
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body

    @property
    def credential(self) -> str:
        """The bearer token of a usage request, the refresh token of a token request."""
        if self.method == "POST":
            form = parse_qs(self.body.decode("utf-8", "replace"))
            return form.get("refresh_token", [""])[0]
        value = self.headers.get("authorization", "")
        return value[len("Bearer "):] if value.startswith("Bearer ") else value


class HostileServer:
    """The server. `fault` is applied to requests for `fault_path` whose credential is not in
    `healthy`; everything else gets a good answer (the token endpoint issues fresh tokens, kept in
    `issued`). `requests` records every request read, by path in `count()`."""

    def __init__(self, fault: Optional[Fault] = None, fault_path: Optional[str] = None,
                 healthy: Iterable[str] = ()):
        self.fault = fault
        self.fault_path = fault_path
        self.healthy = set(healthy)
        self.requests: List[Request] = []
        self.issued: List[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: List[threading.Thread] = []
        self._open: List[socket.socket] = []
        self._listener: Optional[socket.socket] = None
        self._acceptor: Optional[threading.Thread] = None

    # --- lifetime -----------------------------------------------------------------------------

    def start(self) -> "HostileServer":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(0.5)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, name="hostile-accept",
                                          daemon=True)
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            try:  # wakes a blocked accept() at once
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._acceptor is not None:
            self._acceptor.join(5)
        if self._listener is not None:
            self._listener.close()
        deadline = time.monotonic() + 5
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            leftovers, self._open = self._open, []
        for conn in leftovers:
            conn.close()

    def __enter__(self) -> "HostileServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return "http://127.0.0.1:%d" % self._listener.getsockname()[1]

    def environ(self) -> Dict[str, str]:
        return endpoint_environ(self.base_url, self.base_url, self.base_url)

    def count(self, path: str) -> int:
        with self._lock:
            return sum(1 for request in self.requests if request.path == path)

    def stall(self, seconds: float = MAX_STALL) -> None:
        """Wait until the server stops (or `seconds` pass)."""
        self._stopping.wait(min(seconds, MAX_STALL))

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # --- serving ------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(5)
            with self._lock:
                self._open.append(conn)
            thread = threading.Thread(target=self._handle, args=(conn,), name="hostile-conn",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            request = read_request(conn)
            if request is None:
                return
            with self._lock:
                self.requests.append(request)
            if (self.fault is not None and request.path == self.fault_path
                    and request.credential not in self.healthy):
                self.fault(self, conn, request)
            else:
                good_answer(self, conn, request)
        except OSError:
            pass
        finally:
            with self._lock:
                if conn in self._open:
                    self._open.remove(conn)
            conn.close()


def read_request(conn: socket.socket) -> Optional[Request]:
    """Read one request (head and Content-Length body); None if the client went away."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
        if len(data) > MAX_REQUEST:
            return None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path = lines[0].split(" ")[:2]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length") or 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return Request(method, path.split("?")[0], headers, body)


# --- building answers ---------------------------------------------------------------------------

def head(status: int, headers: Optional[Dict[str, str]] = None, reason: str = "Whatever",
         version: str = "HTTP/1.1") -> bytes:
    lines = ["%s %d %s" % (version, status, reason)]
    for name, value in (headers or {}).items():
        lines.append("%s: %s" % (name, value))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response(status: int, body: bytes = b"", headers: Optional[Dict[str, str]] = None,
             content_type: Optional[str] = "application/json") -> bytes:
    """A complete response with Content-Length and Connection: close."""
    all_headers = {}
    if content_type:
        all_headers["Content-Type"] = content_type
    all_headers.update(headers or {})
    all_headers["Content-Length"] = str(len(body))
    all_headers["Connection"] = "close"
    return head(status, all_headers) + body


def good_answer(server: HostileServer, conn: socket.socket, request: Request) -> None:
    now = datetime.now(timezone.utc)
    if request.path == TOKEN_PATH:
        access = "hostile-access-%s" % os.urandom(12).hex()
        refresh = "hostile-refresh-%s" % os.urandom(12).hex()
        with server._lock:
            server.issued += [access, refresh]
        body = json.dumps({"token_type": "Bearer", "access_token": access,
                           "refresh_token": refresh, "expires_in": 28800})
    elif request.path == CODEX_PATH:
        body = json.dumps(demo.codex_payload([23.0, 41.0], now))
    elif request.path == CLAUDE_PATH:
        body = json.dumps(demo.claude_payload([23.0, 41.0], now))
    else:
        conn.sendall(response(404, b'{"error": "not found"}'))
        return
    conn.sendall(response(200, body.encode("utf-8")))


# --- faults -------------------------------------------------------------------------------------

def send(data: bytes) -> Fault:
    """A fault that writes these bytes and closes."""
    def fault(server, conn, request):
        conn.sendall(data)
    return fault


def send_response(status: int, body: bytes = b"", headers: Optional[Dict[str, str]] = None,
                  content_type: Optional[str] = "application/json") -> Fault:
    return send(response(status, body, headers, content_type))


def send_json(payload, status: int = 200) -> Fault:
    return send_response(status, json.dumps(payload).encode("utf-8"))


def reset_connection(conn: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST, not a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def never_answer(server, conn, request):
    server.stall()


def headers_then_stall(server, conn, request):
    conn.sendall(head(200, {"Content-Type": "application/json", "Content-Length": "500"}))
    server.stall()


def body_then_stall(server, conn, request):
    conn.sendall(head(200, {"Content-Type": "application/json", "Content-Length": "500"})
                 + b'{"rate_limit": {"primary_window": {"used_per')
    server.stall()


def slow_drip(interval: float = 0.2, total: float = 8.0) -> Fault:
    """Send a long body one byte at a time, each byte well within the read timeout, so only a
    deadline over the whole exchange ends it. Gives up after `total` seconds."""
    def fault(server, conn, request):
        body = b" " * 10000 + b"{}"
        conn.sendall(head(200, {"Content-Type": "application/json",
                                "Content-Length": str(len(body))}))
        deadline = time.monotonic() + total
        for byte in body:
            if server.stopping or time.monotonic() > deadline:
                return
            conn.sendall(bytes([byte]))
            server.stall(interval)
    return fault


def trickle_headers(interval: float = 0.5) -> Fault:
    """Send a status line, then one header byte every `interval` seconds, forever (until the
    server stops or MAX_STALL): each byte is well within any read timeout, the headers never end."""
    def fault(server, conn, request):
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        deadline = time.monotonic() + MAX_STALL
        while not server.stopping and time.monotonic() < deadline:
            conn.sendall(b"a")
            server.stall(interval)
    return fault


def close_mid_body(server, conn, request):
    conn.sendall(head(200, {"Content-Type": "application/json", "Content-Length": "5000"})
                 + b'{"five_hour": {"utilization": 10, "resets_at": "2026-')


def close_without_answer(server, conn, request):
    pass


def reset_before_answer(server, conn, request):
    reset_connection(conn)


def reset_mid_body(server, conn, request):
    conn.sendall(head(200, {"Content-Type": "application/json", "Content-Length": "5000"})
                 + b'{"rate_limit": {"primary_window"')
    time.sleep(0.05)
    reset_connection(conn)


def chunked(body_chunks: Sequence[bytes], terminate: bool = True) -> bytes:
    data = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in body_chunks)
    return data + (b"0\r\n\r\n" if terminate else b"")


def send_chunked(raw_body: bytes, headers: Optional[Dict[str, str]] = None) -> Fault:
    all_headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked",
                   "Connection": "close"}
    all_headers.update(headers or {})
    return send(head(200, all_headers) + raw_body)


def gzip_bomb(megabytes: int = 64) -> bytes:
    """About 64 KiB of gzip that inflates to `megabytes` MiB of spaces: one member per MiB,
    repeated (concatenated gzip members decode to the concatenation of their contents)."""
    return gzip.compress(b" " * (1024 * 1024), compresslevel=9) * megabytes


def nested_gzip_bomb(layers: int = 3, mebibytes: int = 512) -> bytes:
    """A few hundred bytes that inflate, through `layers` gzip encodings one inside the other
    (sent as `Content-Encoding: gzip, gzip, gzip`), to `mebibytes` MiB of spaces. Built a MiB at
    a time: the inflated size is never held here either."""
    import zlib
    inner = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b" " * (1024 * 1024)
    data = b"".join([inner.compress(block) for _ in range(mebibytes)] + [inner.flush()])
    for _ in range(layers - 1):
        data = gzip.compress(data, compresslevel=9)
    return data


def accept_never_read_listener() -> socket.socket:
    """A listening socket that never accepts: the kernel completes the handshake, nobody reads."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener


def refused_port() -> int:
    """A loopback port with nothing listening on it (bound, then released)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def endpoint_environ(codex_base: str, claude_base: str, token_base: str) -> Dict[str, str]:
    return {
        "OAUTH_USAGE_TRACKER_CODEX_USAGE_URL": codex_base + CODEX_PATH,
        "OAUTH_USAGE_TRACKER_CLAUDE_USAGE_URL": claude_base + CLAUDE_PATH,
        "OAUTH_USAGE_TRACKER_CLAUDE_TOKEN_URL": token_base + TOKEN_PATH,
    }


# --- running the script in-process --------------------------------------------------------------

@contextlib.contextmanager
def preserved_logging():
    """cli.main() points the package logger at the sys.stderr of the moment and stops it from
    propagating; put it back afterwards so later tests' caplog still sees package records."""
    logger = logging.getLogger("oauth_usage_tracker")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


class CliRun:
    """The outcome of one in-process run of the script."""

    def __init__(self, status, stdout, stderr, elapsed):
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
        self.elapsed = elapsed

    @property
    def report(self):
        return json.loads(self.stdout)

    def accounts(self) -> Dict[str, dict]:
        return {account["id"]: account for account in self.report["accounts"]}

    def skipped(self) -> Dict[str, str]:
        return {item["id"]: item["reason"] for item in self.report["skipped"]}


def run_cli(argv: List[str], capsys) -> CliRun:
    """Run `cli.main(argv)` in this process with logging restored afterwards; return its status,
    captured stdout and stderr, and how long it took."""
    from oauth_usage_tracker import cli
    capsys.readouterr()
    with preserved_logging():
        started = time.monotonic()
        status = cli.main(argv)
        elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    return CliRun(status, captured.out, captured.err, elapsed)


def assert_no_tokens(tokens: Iterable[str], *texts: str) -> None:
    """Fail if any token, or a 24-character piece of one, appears in any text."""
    for token in tokens:
        if not token:
            continue
        pieces = {token}
        if len(token) >= 36:
            pieces.add(token[12:36])
        for text in texts:
            for piece in pieces:
                assert piece not in text, "a token leaked into the output"


def assert_sentence(message: Optional[str]) -> None:
    """Fail unless `message` reads as a sentence for a person: no traceback, not a bare
    exception class or repr, a bounded length."""
    assert isinstance(message, str) and message.strip(), "no error message"
    assert "Traceback" not in message
    assert "File \"" not in message
    assert len(message) < 400, message
    assert " " in message.strip(), "not a sentence: %r" % message
    assert not message.strip().endswith("Error()"), message
    assert "<html" not in message.lower() and "<!doctype" not in message.lower(), message
