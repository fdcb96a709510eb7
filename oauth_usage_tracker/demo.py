"""A loopback fake of both providers, and sample accounts for it.

Used by `--demo`, by the project's integration tests and by the benchmark. The fake behaves like
the real endpoints where it matters: Claude refresh tokens are single-use and rotate (a reused one
gets `400 invalid_grant`), access tokens are checked, and an account can be made to fail the way
real ones do (a Cloudflare page, a 429, a dead token). Nothing here talks to the network.
"""
from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, AbstractSet, Any, Dict, FrozenSet, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs

from .config import URL_ENV
from .parsing import format_timestamp

if TYPE_CHECKING:
    from .report import Report

CODEX_PATH = "/backend-api/wham/usage"
CLAUDE_PATH = "/api/oauth/usage"
TOKEN_PATH = "/v1/oauth/token"

#: Default seconds to the resets: the 5-hour window 53 % through, the weekly one 45 %.
FIVE_HOUR_RESET = 8400.0
WEEKLY_RESET = 334800.0

CLOUDFLARE_PAGE = (b"<!DOCTYPE html><html lang=\"en-US\"><head><title>Just a moment...</title>"
                   b"</head><body>Enable JavaScript and cookies to continue</body></html>")


@dataclass
class FakeAccount:
    """How the fake treats one account."""

    provider: str
    email: str
    used: List[float] = field(default_factory=lambda: [23.0, 41.0])
    behaviour: str = "ok"
    """`ok`, `cloudflare`, `rate_limited`, `server_error` or `scope`."""
    retry_after: Optional[str] = "300"
    """The Retry-After header of a `rate_limited` answer (None: no header)."""
    resets: Tuple[float, float] = (FIVE_HOUR_RESET, WEEKLY_RESET)
    """Seconds from each answer to the 5-hour and the weekly reset."""


#: What the fake answers: (status, headers, body).
Answer = Tuple[int, Dict[str, str], bytes]


def _json(data: Any) -> bytes:
    return json.dumps(data).encode("utf-8")


class FakeProviders:
    """A threaded HTTP server on 127.0.0.1 that answers like chatgpt.com's wham/usage,
    api.anthropic.com's oauth/usage and platform.claude.com's oauth/token."""

    def __init__(self, latency: float = 0.0, expires_in: int = 28800):
        self.latency = latency
        self.expires_in = expires_in
        self._lock = threading.Lock()
        self._serial = itertools.count(1)
        self._access: Dict[str, FakeAccount] = {}
        self._refresh: Dict[str, FakeAccount] = {}
        self.requests: Dict[str, int] = {}
        self.token_requests: List[dict] = []
        self.usage_headers: List[dict] = []
        self.connections = 0
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # --- accounts -----------------------------------------------------------------------------

    def add_account(self, account: FakeAccount, access_token: str,
                    refresh_token: Optional[str] = None) -> None:
        """Accept `access_token` (and `refresh_token`, once) for this account."""
        with self._lock:
            self._access[access_token] = account
            if refresh_token:
                self._refresh[refresh_token] = account

    def expire_access(self, access_token: str) -> None:
        """Make the fake reject this access token with 401, as a stale one is."""
        with self._lock:
            self._access.pop(access_token, None)

    def count(self, path: str) -> int:
        """How many requests reached `path`."""
        with self._lock:
            return self.requests.get(path, 0)

    # --- server lifetime ----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The fake's address, `http://127.0.0.1:<port>`."""
        assert self._server is not None, "start() the fake first"
        return "http://127.0.0.1:%d" % self._server.server_address[1]

    def environ(self) -> Dict[str, str]:
        """The environment variables that point the tracker at this fake."""
        return {URL_ENV["codex_usage_url"]: self.base_url + CODEX_PATH,
                URL_ENV["claude_usage_url"]: self.base_url + CLAUDE_PATH,
                URL_ENV["claude_token_url"]: self.base_url + TOKEN_PATH}

    def start(self) -> "FakeProviders":
        """Serve both providers on a free loopback port, in a daemon thread; return self."""
        fake = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

            def process_request(self, request: Any, client_address: Any) -> None:
                with fake._lock:
                    fake.connections += 1
                super().process_request(request, client_address)

            def handle_error(self, request: Any, client_address: Any) -> None:
                # A client that hung up mid-answer (its deadline cut the socket, under load) is
                # no fault of the fake: socketserver would print a traceback into the run.
                if isinstance(sys.exc_info()[1], OSError):
                    return
                super().handle_error(request, client_address)

        class Handler(_Handler):
            owner = fake

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="fake-providers", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (a stopped fake may be started again)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(5)
            self._server = None

    def __enter__(self) -> "FakeProviders":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- answers ------------------------------------------------------------------------------

    def answer(self, method: str, path: str, headers: "Message[str, str]", body: bytes
               ) -> Answer:
        """Return (status, headers, body) for one request."""
        with self._lock:
            self.requests[path] = self.requests.get(path, 0) + 1
        if self.latency:
            time.sleep(self.latency)
        if method == "POST" and path == TOKEN_PATH:
            return self._token(body)
        if method == "GET" and path in (CODEX_PATH, CLAUDE_PATH):
            with self._lock:
                self.usage_headers.append({k.lower(): v for k, v in headers.items()
                                           if k.lower() != "authorization"})
            token = headers.get("Authorization", "")[len("Bearer "):]
            with self._lock:
                account = self._access.get(token)
            return self._usage(path, account)
        return 404, {}, _json({"error": "not found"})

    def _token(self, body: bytes) -> Answer:
        form = parse_qs(body.decode("utf-8", "replace"))
        with self._lock:
            self.token_requests.append({k: v[0] for k, v in form.items() if k != "refresh_token"})
            account = self._refresh.pop(form.get("refresh_token", [""])[0], None)
            if account is None or form.get("grant_type") != ["refresh_token"]:
                return 400, {}, _json({"error": "invalid_grant",
                                       "error_description": "Refresh token not found or invalid"})
            serial = next(self._serial)
            access = "demo-access-%d-%s" % (serial, os.urandom(6).hex())
            refresh = "demo-refresh-%d-%s" % (serial, os.urandom(6).hex())
            self._access[access] = account
            self._refresh[refresh] = account
        return 200, {}, _json({"token_type": "Bearer", "access_token": access,
                               "refresh_token": refresh, "expires_in": self.expires_in,
                               "scope": "user:inference user:profile"})

    def _usage(self, path: str, account: Optional[FakeAccount]) -> Answer:
        claude = path == CLAUDE_PATH
        if account is None:
            if claude:
                return 401, {}, _json({"type": "error", "error": {
                    "type": "authentication_error", "message": "Invalid bearer token"}})
            return 401, {}, _json({"error": {"message": "Provided authentication token is "
                                             "expired.", "code": "token_expired"}})
        if account.behaviour == "cloudflare":
            return 403, {"Content-Type": "text/html", "cf-mitigated": "challenge",
                         "Server": "cloudflare"}, CLOUDFLARE_PAGE
        if account.behaviour == "rate_limited":
            headers = {"Retry-After": account.retry_after} if account.retry_after else {}
            return 429, headers, _json({"error": {
                "message": "Rate limited. Please try again later.", "type": "rate_limit_error"}})
        if account.behaviour == "server_error":
            return 502, {}, b"upstream error"
        if account.behaviour == "scope":
            return 403, {}, _json({"type": "error", "error": {
                "type": "permission_error",
                "message": "OAuth token does not meet scope requirement user:profile"}})
        now = datetime.now(timezone.utc)
        if claude:
            return 200, {}, _json(claude_payload(account.used, now, account.resets))
        return 200, {}, _json(codex_payload(account.used, now, account.resets))


class _Handler(BaseHTTPRequestHandler):
    owner: FakeProviders
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms a request on Linux).
    disable_nagle_algorithm = True

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, headers, payload = self.owner.answer(self.command, self.path.split("?")[0],
                                                     self.headers, body)
        self.send_response(status)
        headers = dict(headers)
        headers.setdefault("Content-Type", "application/json")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def claude_payload(used: List[float], now: datetime,
                   resets: Sequence[float] = (FIVE_HOUR_RESET, WEEKLY_RESET)) -> dict:
    """A current-shape oauth/usage body with the given 5-hour and weekly utilization, resetting
    `resets` seconds from now."""
    five, week = (list(used) + [0.0, 0.0])[:2]
    five_reset = _iso(now + timedelta(seconds=resets[0]))
    week_reset = _iso(now + timedelta(seconds=resets[1]))
    return {
        "five_hour": {"utilization": five, "resets_at": five_reset},
        "seven_day": {"utilization": week, "resets_at": week_reset},
        "seven_day_oauth_apps": None, "seven_day_opus": None,
        "seven_day_sonnet": {"utilization": round(week / 3, 1), "resets_at": week_reset},
        "seven_day_cowork": None, "seven_day_omelette": None,
        "extra_usage": {"is_enabled": False, "monthly_limit": None, "used_credits": None,
                        "utilization": None},
        "limits": [{"kind": "weekly_scoped", "group": "weekly", "percent": int(week // 2),
                    "severity": "normal", "is_active": False,
                    "resets_at": week_reset,
                    "scope": {"model": {"id": None, "display_name": "Opus"}, "surface": None}}],
    }


def codex_payload(used: List[float], now: datetime,
                  resets: Sequence[float] = (FIVE_HOUR_RESET, WEEKLY_RESET)) -> dict:
    """A current-shape wham/usage body with the given primary and secondary used_percent,
    resetting `resets` seconds from now."""
    five, week = (list(used) + [0.0, 0.0])[:2]
    stamp = int(now.timestamp())
    five_after, week_after = int(resets[0]), int(resets[1])
    return {
        "plan_type": "plus",
        "rate_limit": {
            "allowed": True, "limit_reached": False,
            "primary_window": {"used_percent": five, "limit_window_seconds": 18000,
                               "reset_after_seconds": five_after, "reset_at": stamp + five_after},
            "secondary_window": {"used_percent": week, "limit_window_seconds": 604800,
                                 "reset_after_seconds": week_after,
                                 "reset_at": stamp + week_after},
        },
        "credits": {"has_credits": False, "unlimited": False, "balance": "0"},
    }


def write_credential(directory: str, provider: str, email: str, access: str, refresh: str,
                     expired: datetime, **extra: Any) -> str:
    """Write one CLIProxyAPI-shaped credential file (compact, sorted keys, mode 0600)."""
    data = {"access_token": access, "disabled": False, "email": email,
            "expired": format_timestamp(expired), "id_token": "", "last_refresh": format_timestamp(
                expired - timedelta(hours=8)), "refresh_token": refresh, "type": provider}
    if provider == "codex":
        data["account_id"] = "demo-%s" % email.split("@")[0]
    data.update(extra)
    path = os.path.join(directory, "%s-%s.json" % (provider, email))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(data, separators=(",", ":"), sort_keys=True))
    return path


def populate(fake: FakeProviders, directory: str, claude: int, codex: int,
             now: Optional[datetime] = None) -> List[str]:
    """Create `claude` + `codex` healthy accounts (bulk, for tests and the benchmark)."""
    now = now or datetime.now(timezone.utc)
    paths = []
    for provider, count in (("claude", claude), ("codex", codex)):
        for index in range(count):
            email = "%s%04d@example.com" % (provider, index)
            access, refresh = "demo-a-%s-%d" % (provider, index), "demo-r-%s-%d" % (provider, index)
            fake.add_account(FakeAccount(provider, email, [float(index % 100), 50.0]), access,
                             refresh)
            paths.append(write_credential(directory, provider, email, access, refresh,
                                          now + timedelta(hours=6)))
    return paths


#: What `--demo` tells people after the report.
STORY = ("a loopback fake answered for both providers; Carol's expired token was refreshed, her "
         "5-hour window runs out before it resets, dave is idle, erin frees up in 15 minutes, "
         "and frank@example.com fails on purpose.")


def create_demo_accounts(fake: FakeProviders, directory: str,
                         now: Optional[datetime] = None) -> FrozenSet[str]:
    """The `--demo` cast, a pool with a story: alice uses her quota at an even pace; Carol
    (whose expired token will be refreshed) burns her 5-hour window so fast that it runs out
    before it resets; dave is idle; erin has nearly emptied her 5-hour window, which resets in
    15 minutes and frees her; frank is behind a Cloudflare challenge. Plus one disabled account
    and one file of a provider this tool does not track. Return the file names of the accounts
    that fail on purpose."""
    now = now or datetime.now(timezone.utc)
    even, soon = (FIVE_HOUR_RESET, WEEKLY_RESET), (900.0, WEEKLY_RESET)
    cast = [
        ("claude", "alice@example.com", [20.0, 30.0], even, "ok", now + timedelta(hours=6)),
        ("claude", "Carol@example.com", [88.0, 41.0], even, "ok", now - timedelta(minutes=20)),
        ("codex", "dave@example.com", [0.0, 0.0], even, "ok", now + timedelta(days=5)),
        ("codex", "erin@example.com", [93.0, 40.0], soon, "ok", now + timedelta(days=5)),
        ("codex", "frank@example.com", [0.0, 0.0], even, "cloudflare", now + timedelta(days=5)),
    ]
    failing = set()
    for provider, email, used, resets, behaviour, expired in cast:
        name = email.split("@")[0].lower()
        access, refresh = "demo-access-%s" % name, "demo-refresh-%s" % name
        fake.add_account(FakeAccount(provider, email, used, behaviour, resets=resets), access,
                         refresh)
        if expired <= now:
            fake.expire_access(access)
        path = write_credential(directory, provider, email, access, refresh, expired)
        if behaviour != "ok":
            failing.add(os.path.basename(path))
    write_credential(directory, "claude", "old@example.com", "demo-access-old",
                     "demo-refresh-old", now + timedelta(hours=6), disabled=True)
    with open(os.path.join(directory, "gemini-grace@example.com.json"), "w") as handle:
        handle.write(json.dumps({"type": "gemini", "email": "grace@example.com"}))
    return frozenset(failing)


def behaved_as_designed(report: "Report", failing: AbstractSet[str]) -> bool:
    """Given a demo run's report and the accounts that fail on purpose (create_demo_accounts),
    return True when exactly those failed and every other account returned windows."""
    return all(bool(account.error) == (account.id in failing) for account in report.accounts)
