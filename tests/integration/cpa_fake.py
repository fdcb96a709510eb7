"""A loopback fake of CLIProxyAPI's management API, written from ../shared/FACTS-CPA.md.

- The key goes in `Authorization: Bearer <key>` or `X-Management-Key`; a wrong key is 401, a
  missing one counts as a failure too; 5 failures from one client address block it for 30
  minutes (403), localhost included; a good key resets the count.
- `GET /v0/management/auth-files` lists `{"files": [...]}` with `auth_index` (16 hex), `type`
  and `provider`, `email`, `disabled`, and Codex `id_token` as decoded claims.
- `POST /v0/management/api-call` relays a request upstream with `$TOKEN$` replaced by the
  credential's access token in header values only (an unknown auth_index leaves it literal),
  and answers 200 `{"status_code", "header": {name: [values]}, "body": "<text>"}`; a transport
  failure is 502 `{"error": "request failed"}`.
- `api="v8"` serves only `/v8/management/credentials` and `/requests/api-call`; other paths 404.
"""
import http.client
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional
from urllib.parse import urlsplit

MAX_FAILURES = 5
BAN_SECONDS = 30 * 60
ROUTES = {"v0": {"/v0/management/auth-files": "list", "/v0/management/api-call": "call"},
          "v8": {"/v8/management/credentials": "list",
                 "/v8/management/requests/api-call": "call"}}


@dataclass
class Credential:
    """One credential the fake proxy holds."""

    name: str
    provider: str
    email: str
    access_token: str
    auth_index: Optional[str] = None
    disabled: bool = False
    account_id: Optional[str] = None
    extra: Dict[str, object] = field(default_factory=dict)


class FakeManagement:
    """A threaded server on 127.0.0.1 answering like a CLIProxyAPI management API."""

    def __init__(self, key: str, credentials: List[Credential], api: str = "v0"):
        self.key = key
        self.credentials = list(credentials)
        for index, credential in enumerate(self.credentials):
            if credential.auth_index is None and "no_index" not in credential.extra:
                credential.auth_index = os.urandom(8).hex()
        self.api = api
        self.lock = threading.Lock()
        self.failures: Dict[str, int] = {}
        self.blocked_until: Dict[str, float] = {}
        self.failed_logins = 0
        self.requests: List[str] = []
        self.api_calls: List[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        #: When each api-call was answered (time.monotonic()).
        self.answered: List[float] = []
        #: Seconds each api-call takes before it is relayed (a slow proxy).
        self.delay = 0.0
        #: A key to switch to right after the next listing (the operator changes it mid-run).
        self.key_after_listing: Optional[str] = None
        #: The `header` objects of api-calls as received, before any substitution.
        self.sent_headers: List[dict] = []
        self._server: Optional[ThreadingHTTPServer] = None

    # --- lifetime -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self._server.server_address[1]

    def __enter__(self) -> "FakeManagement":
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- behaviour ----------------------------------------------------------------------------

    def authenticate(self, client: str, headers) -> Optional[int]:
        """Return None when the key is good, else the status to answer (401 or 403)."""
        provided = headers.get("Authorization", "")
        if provided.lower().startswith("bearer "):
            provided = provided[7:]
        provided = provided or headers.get("X-Management-Key", "")
        with self.lock:
            if self.blocked_until.get(client, 0) > time.time():
                return 403
            if provided and provided == self.key:
                self.failures[client] = 0
                return None
            self.failed_logins += 1
            self.failures[client] = self.failures.get(client, 0) + 1
            if self.failures[client] >= MAX_FAILURES:
                self.blocked_until[client] = time.time() + BAN_SECONDS
                self.failures[client] = 0
            return 401

    def listing(self) -> dict:
        files = []
        for credential in self.credentials:
            entry = {"name": credential.name, "type": credential.provider,
                     "provider": credential.provider, "email": credential.email,
                     "disabled": credential.disabled, "status": "active", "status_message": "",
                     "unavailable": False, "last_refresh": "2026-11-24T10:00:00+02:00",
                     "size": 812, "source": "file"}
            if credential.auth_index is not None:
                entry["auth_index"] = credential.auth_index
            if credential.provider == "codex":
                entry["id_token"] = {"chatgpt_account_id": credential.account_id,
                                     "plan_type": "plus"}
            entry.update({k: v for k, v in credential.extra.items() if k != "no_index"})
            files.append(entry)
        return {"files": files}

    def api_call(self, body: bytes):
        try:
            request = json.loads(body.decode("utf-8"))
        except ValueError:
            return 400, {"error": "invalid body"}
        method = str(request.get("method") or "").strip().upper()
        if not method:
            return 400, {"error": "missing method"}
        url = str(request.get("url") or "").strip()
        parts = urlsplit(url)
        if not parts.scheme or not parts.netloc:
            return 400, {"error": "invalid url"}
        credential = next((c for c in self.credentials
                           if c.auth_index and c.auth_index == request.get("auth_index")), None)
        headers = dict(request.get("header") or {})
        with self.lock:
            self.sent_headers.append(dict(headers))
        for name, value in headers.items():
            if "$TOKEN$" in value and credential is not None:
                if not credential.access_token:
                    return 400, {"error": "auth token not found"}
                headers[name] = value.replace("$TOKEN$", credential.access_token)
        with self.lock:
            self.api_calls.append({"auth_index": request.get("auth_index"), "url": url,
                                   "header_names": sorted(headers)})
        try:
            connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=60)
            connection.request(method, parts.path or "/", body=request.get("data") or None,
                               headers=headers)
            response = connection.getresponse()
            text = response.read().decode("utf-8", "replace")
            answer_headers: Dict[str, List[str]] = {}
            for name, value in response.getheaders():
                answer_headers.setdefault(name, []).append(value)
            connection.close()
        except OSError:
            return 502, {"error": "request failed"}
        return 200, {"status_code": response.status, "header": answer_headers, "body": text}


class _Handler(BaseHTTPRequestHandler):
    owner: FakeManagement
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _serve(self) -> None:
        fake = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        with fake.lock:
            fake.requests.append(path)
        route = ROUTES[fake.api].get(path) if fake.api in ROUTES else None
        if route is None and fake.api == "both":
            route = ROUTES["v0"].get(path) or ROUTES["v8"].get(path)
        if route is None:
            return self._answer(404, {"error": "not found"})
        denied = fake.authenticate(self.client_address[0], self.headers)
        if denied is not None:
            return self._answer(denied, {"error": "invalid management key" if denied == 401
                                         else "IP banned due to too many failed attempts"})
        if route == "list" and self.command == "GET":
            if fake.key_after_listing:
                fake.key, fake.key_after_listing = fake.key_after_listing, None
            return self._answer(200, fake.listing())
        if route == "call" and self.command == "POST":
            with fake.lock:
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            try:
                time.sleep(fake.delay)
                status, payload = fake.api_call(body)
            finally:
                with fake.lock:
                    fake.in_flight -= 1
                    fake.answered.append(time.monotonic())
            return self._answer(status, payload)
        return self._answer(404, {"error": "not found"})

    def _answer(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _serve

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass


class _QuietServer(ThreadingHTTPServer):
    """Its handler threads outlive the test that started them (daemon threads are not joined):
    a client that hung up mid-answer must not print a traceback into a later test's stderr."""

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class SilentServer:
    """A port that accepts connections (the kernel's backlog) and never answers."""

    def __enter__(self) -> "SilentServer":
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        return self

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.socket.getsockname()[1]

    def __exit__(self, *exc_info) -> None:
        self.socket.close()
