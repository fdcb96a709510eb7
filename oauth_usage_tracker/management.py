"""CLIProxyAPI's management API: the key, the proxy's URL, and one client per proxy that guards
the proxy (and its operator) against this tool.

The management key has full power over the proxy (it can download every refresh token, and make
the proxy send any of its tokens anywhere), and the proxy locks a client address out for 30
minutes after 5 failed logins. Hence, per proxy and run:
- the first 401/403 from the management API stops every later call to it, and the rejection is
  remembered across runs (see `lockout`);
- the first request that gets no answer at all stops the rest too, so a dead proxy costs one
  timeout, not one per account;
- at most `workers` calls are in flight.
Newer proxies serve the API under `/v8/management` (`/credentials`, `/requests/api-call`) and
still `/v0/management` for older clients; a v8-only proxy answers 404 on the v0 paths.
"""
from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
from datetime import datetime, timezone
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.structures import CaseInsensitiveDict

from . import http
from .config import (
    CPA_KEY_ENV,
    DEFAULT_CPA_WORKERS,
    Settings,
    check_url,
    is_loopback_host,
    redacted_url,
)
from .errors import ConfigurationError, ProviderError
from .lockout import RejectedKeys, Rejection, fingerprint

logger = logging.getLogger(__name__)

LISTING_MAX_BYTES = 16 * 1024 * 1024
KEY_FILE_MAX_BYTES = 4096
#: Listing and api-call paths, v0 first: v8 proxies still serve v0 "for existing clients".
API_PATHS = {"v0": ("/v0/management/auth-files", "/v0/management/api-call"),
             "v8": ("/v8/management/credentials", "/v8/management/requests/api-call")}
_MANAGEMENT_SUFFIX = re.compile(r"/v[08]/management$")
_KEY = re.compile(r"[\x21-\x7e]{1,%d}" % KEY_FILE_MAX_BYTES)
_PROXY_ERRORS = frozenset({"invalid url", "missing method", "missing url", "invalid body",
                           "invalid proxy_url", "failed to build request"})


def check_key(key: Any) -> str:
    """Given a management key, return it without surrounding whitespace. Raise
    ConfigurationError (never quoting it) unless it is printable ASCII without spaces."""
    key = key.strip() if isinstance(key, str) else ""
    if not _KEY.fullmatch(key):
        raise ConfigurationError("The CLIProxyAPI management key must be one word of printable "
                                 "ASCII (from --cpa-key-file or %s)" % CPA_KEY_ENV)
    return key


def read_key_file(path: str) -> Tuple[str, str]:
    """Given the key file's path, return (key, version), the version naming the file's size and
    modification time. The file must be a regular file (a FIFO or device is never read); one
    readable by group or others gets a warning. Raise ConfigurationError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise ConfigurationError("Cannot open the management key file %s (%s)"
                                 % (path, error.strerror)) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigurationError("The management key file %s is not a regular file" % path)
        if info.st_mode & 0o077:
            logger.warning("The management key file %s can be read by group or others (mode "
                           "%03o); the key has full power over the proxy: chmod 600 it",
                           path, stat.S_IMODE(info.st_mode))
        data = handle.read(KEY_FILE_MAX_BYTES + 1)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    return check_key(text), "%d:%d" % (info.st_size, info.st_mtime_ns)


def base_url(url: str, allow_http: bool = False) -> str:
    """Given a proxy URL as the operator wrote it, return its base URL (no trailing slash, no
    `/v0/management`). It must be https://, or http:// to a loopback address, unless
    `allow_http`. Raise ConfigurationError otherwise."""
    url = url.strip()
    name = "CLIProxyAPI"
    try:
        userinfo = "@" in urlsplit(url).netloc
    except ValueError:
        userinfo = False
    if userinfo:  # checked first, so that a secret in the URL is never quoted back
        raise ConfigurationError("Refused a CLIProxyAPI URL with a user name or password in it: "
                                 "the key goes in --cpa-key-file or %s" % CPA_KEY_ENV)
    if allow_http and url[:7].lower() == "http://":
        check_url("https://" + url[7:], name)  # every rule but the scheme's
    else:
        check_url(url, name)
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ConfigurationError("Refused CLIProxyAPI URL %s: no query or fragment, please"
                                 % ascii(redacted_url(url)))
    path = _MANAGEMENT_SUFFIX.sub("", parts.path.rstrip("/"))
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, "", ""))


def source_label(url: str) -> str:
    """Given a base URL, return the `source` its accounts carry: host:port, and the path when
    there is one (two proxies behind one host)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = "[%s]" % host if ":" in host else host
    return "%s:%d%s" % (host, port, parts.path)


class Proxy:
    """One remote CLIProxyAPI during one run: its URL, the key (never shown), the API version it
    serves, its call slots, and whether it may still be called.

    `_stopped` is written once, under `_lock` (the first 401/403 or dead connection wins), and
    read by every call after it takes a slot, so at most the calls already in flight (up to
    `workers`) meet the same failure; none starts after it.
    """

    def __init__(self, url: str, key: str, *, workers: int = DEFAULT_CPA_WORKERS,
                 allow_http: bool = False, key_version: Optional[str] = None,
                 rejected: Optional[RejectedKeys] = None):
        if not 1 <= workers <= 64:
            raise ConfigurationError("--cpa-workers must be between 1 and 64, not %s" % workers)
        self.url = base_url(url, allow_http)
        self.source = source_label(self.url)
        self._key = check_key(key)
        self.key_fingerprint = fingerprint(self.url, self._key)
        self.key_version = key_version
        self.rejected = rejected or RejectedKeys(None)
        #: Calls in flight at most (the tracker lets no more of its accounts into the pool).
        self.workers = workers
        self.api = "v0"
        self._slots = threading.BoundedSemaphore(workers)
        self._lock = threading.Lock()
        self._stopped: Optional[ProviderError] = None
        #: An api-call was answered with this key (not 401/403) in this run: the probe gate
        #: (see `lanes`) lets the other calls in. Written once, False to True.
        self._accepted = False
        if allow_http and self.url.startswith("http://") \
                and not is_loopback_host(urlsplit(self.url).hostname or ""):
            logger.warning("%s: plain http (--cpa-allow-http): the management key, which has "
                           "full power over the proxy, crosses the network in clear text",
                           self.source)

    def __repr__(self) -> str:
        return "Proxy(%r)" % self.source

    def _what(self, name: str) -> str:
        return "CLIProxyAPI %s %s" % (self.source, name)

    @property
    def gate_open(self) -> bool:
        """True once more than one api-call may be in flight: the key was accepted for one in
        this run, or the proxy was stopped (every later call then fails without a request)."""
        with self._lock:
            return self._accepted or self._stopped is not None

    def stop(self, error: ProviderError) -> ProviderError:
        """Stop every later call to this proxy in this run with `error` (the first stop wins,
        logged once); return the error that stopped it."""
        with self._lock:
            if self._stopped is None:
                self._stopped = error
                logger.error("%s", error)
            return self._stopped

    def _rejected(self, status: int) -> ProviderError:
        self.rejected.record(self.key_fingerprint, Rejection(datetime.now(timezone.utc), status,
                                                             self.key_version))
        if status == 401:
            reason = "rejected the management key (401)"
        else:
            reason = ("refused the management API (403: remote management is off, or this "
                      "host is locked out after failed logins)")
        return ProviderError("CLIProxyAPI at %s %s; it is not asked again with this key until "
                             "the key changes or an hour has passed" % (self.source, reason),
                             status=status, login_problem=True)

    def call(self, session: requests.Session, settings: Settings, method: str, path: str,
             name: str, max_body: int, body: Optional[bytes] = None) -> "http.HttpResponse":
        """Make one management call in one of the proxy's slots and return its answer. Raise
        ProviderError, without sending, once the proxy was stopped; stop it (and raise) on a
        401/403 or when it does not answer."""
        with self._slots:
            with self._lock:
                stopped = self._stopped
            if stopped is not None:
                raise ProviderError(str(stopped), status=stopped.status,
                                    login_problem=stopped.login_problem)
            headers = {"Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            try:
                response = http.send(session, method, self.url + path, what=self._what(name),
                                     timeout=settings.timeout, max_body=max_body,
                                     headers=headers, auth=http.BearerAuth(self._key), data=body)
            except ProviderError as error:
                if error.status in (401, 403):
                    raise self.stop(self._rejected(error.status)) from None
                if error.status is not None:
                    self._accept(name)
                    raise  # it answered (a body over the cap): not a dead proxy
                raise self.stop(ProviderError(
                    "%s; no more requests to it in this run" % error)) from None
            if response.status in (401, 403):
                raise self.stop(self._rejected(response.status))
            self._accept(name)
            return response

    def _accept(self, name: str) -> None:
        if name == "api-call":
            with self._lock:
                self._accepted = True

    def list_payload(self, session: requests.Session, settings: Settings) -> Any:
        """Return the proxy's decoded credential listing (v0 first, then v8 when v0 is absent)
        and log which API version was found. Raise UsageTrackerError when it cannot be listed."""
        for api in API_PATHS:
            response = self.call(session, settings, "GET", API_PATHS[api][0], "listing",
                                 LISTING_MAX_BYTES)
            if response.status == 404:
                continue
            if response.status != 200:
                raise http.status_error(response, self._what("listing"))
            payload = http.decode_json(response, self._what("listing"))
            self.api = api
            self.rejected.forget(self.key_fingerprint)
            logger.info("%s: management API /%s/management found", self.source, api)
            return payload
        raise self.stop(ProviderError(
            "CLIProxyAPI at %s has no management API (404 at /v0/management and /v8/management): "
            "set remote-management.secret-key in its config.yaml" % self.source))

    def api_call(self, session: requests.Session, settings: Settings, auth_index: str,
                 url: str, headers: Dict[str, str], what: str) -> "http.HttpResponse":
        """Have the proxy send `GET url` with the credential's token in place of `$TOKEN$`;
        return the provider's answer as an HttpResponse (the envelope decoded)."""
        body = json.dumps({"auth_index": auth_index, "method": "GET", "url": url,
                           "header": headers}).encode("utf-8")
        response = self.call(session, settings, "POST", API_PATHS[self.api][1], "api-call",
                             4 * settings.max_body_bytes + 65536, body)
        if response.status == 404:
            raise self.stop(ProviderError(
                "CLIProxyAPI at %s has no api-call route (HTTP 404); it needs v6.6.63 or later"
                % self.source))
        return decode_envelope(response, self.source, what, settings.max_body_bytes)


def decode_envelope(response: "http.HttpResponse", source: str, what: str,
                    max_body: int) -> "http.HttpResponse":
    """Given the proxy's answer to an api-call, return the provider's answer inside it (status,
    headers with their lists joined, the body as bytes). Raise ProviderError for the proxy's own
    failures: 400 (`auth token not found` is a login problem), 502 (it could not reach the
    provider), anything else, or an envelope this tool does not understand."""
    payload = http.try_json(response)
    if response.status == 200:
        status = payload.get("status_code") if isinstance(payload, dict) else None
        body = payload.get("body", "") if isinstance(payload, dict) else None
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599 \
                or not isinstance(body, str):
            raise ProviderError("%s: CLIProxyAPI at %s answered the api-call with something "
                                "this tool does not understand (HTTP 200)" % (what, source),
                                status=200)
        data = body.encode("utf-8", "replace")
        if len(data) > max_body:
            raise ProviderError("%s returned a body larger than %d KiB (HTTP %d)"
                                % (what, max_body // 1024, status), status=status)
        headers: CaseInsensitiveDict = CaseInsensitiveDict()
        raw = payload.get("header")
        for name, value in (raw.items() if isinstance(raw, dict) else ()):
            values = value if isinstance(value, list) else [value]
            texts = [item for item in values if isinstance(item, str)]
            if isinstance(name, str) and texts:
                headers[name] = ", ".join(texts)
        return http.HttpResponse(status, headers, data)
    error = payload.get("error") if isinstance(payload, dict) else None
    if response.status == 400 and error in ("auth token not found", "auth token refresh failed"):
        raise ProviderError("%s: CLIProxyAPI at %s holds no usable token for this account (%s); "
                            "log in again with CLIProxyAPI" % (what, source, error),
                            status=400, login_problem=True)
    if response.status == 502:
        raise ProviderError("%s request failed: CLIProxyAPI at %s could not reach the provider "
                            "(502); try again later" % (what, source), status=502)
    detail = error if error in _PROXY_ERRORS else ""
    raise http.status_error(response, "CLIProxyAPI %s api-call" % source, detail)
