"""HTTP plumbing: one session factory, capped bodies, requests' exceptions turned into sentences.

Every call passes a timeout (a requests Session cannot hold one) and reads at most `max_body`
bytes within that same timeout. Redirects are never followed: an API endpoint that redirects is
an error, and the bearer token must not travel anywhere else.
"""
from __future__ import annotations

import email.utils
import json
import logging
import os
import time
from datetime import datetime, timezone
from http.cookiejar import DefaultCookiePolicy
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, NamedTuple, Optional, Set, Union

import requests
from requests.adapters import BaseAdapter
from urllib3.exceptions import DecodeError, ProtocolError, ReadTimeoutError

from .config import endpoint_host, is_loopback_host
from .deadline import STOPPING, Deadlines, WatchedAdapter
from .errors import ProviderError
from .state import cooldown_seconds

if TYPE_CHECKING:  # imported by the first answer: see __getattr__
    from .response import HttpResponse

logger = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_NO_PROXY = {"http": None, "https": None}
_IDENTITY = {"Accept-Encoding": "identity"}


class BearerAuth(requests.auth.AuthBase):
    """Sets `Authorization: Bearer …`. Passing it as `auth=` also keeps requests from applying a
    ~/.netrc entry over our header. Its repr never shows the token."""

    def __init__(self, token: str):
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """Set the header on a request about to be sent."""
        request.headers["Authorization"] = "Bearer " + self._token
        return request

    def __repr__(self) -> str:
        return "BearerAuth(<hidden>)"


class _Route(NamedTuple):
    """What Session.request would work out for one endpoint URL, worked out once."""

    url: str
    """The URL as requests prepares it (`PreparedRequest.prepare_url`)."""
    proxies: Dict[str, str]
    """The proxies the adapter gets: `proxies_for` merged with the session's, None dropped."""
    adapter: BaseAdapter
    """The adapter mounted for the URL's scheme."""


class _Session(requests.Session):
    """A Session that reads the environment once, not on every request, and prepares each
    request itself instead of going through `Session.request`.

    requests, with `trust_env`, scans the whole environment for proxies on every request (two
    scans each); with hundreds of accounts that is most of the client's CPU. Here proxies are
    worked out once per endpoint from the same variables (HTTPS_PROXY, NO_PROXY…), the CA bundle
    variables are honoured as requests would, and ~/.netrc is never applied (the bearer token is
    set explicitly). Loopback endpoints never go through a proxy: it would see the tokens.

    `Session.request` also merges the session's settings into every request (headers, cookies,
    auth, proxies, verify: each through `merge_setting`, whose runtime Protocol checks alone cost
    more than the rest of a request's bookkeeping) and then walks the redirect and cookie code of
    `Session.send`. `open` does what those would do for this session, with what depends only on
    the URL (the prepared URL, the proxies, the adapter) worked out once per endpoint, and sends
    through the adapter, which never follows a redirect. What it leaves out is empty here: the
    cookie jar accepts no cookie (make_session), the session has no hooks, no auth, no params.

    Even with allow_redirects=False, requests walks its redirect code to fill `Response.next`,
    reading the 3xx body past our cap; there is never a target here.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False
        self.verify = (os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
                       or True)
        self._proxies: Dict[str, Dict[str, Optional[str]]] = {}
        self._routes: Dict[str, _Route] = {}
        #: The hard deadlines of the requests in flight (see deadline.py).
        self.deadlines = Deadlines()

    def proxies_for(self, url: str) -> Dict[str, Optional[str]]:
        """The proxies for an endpoint URL, from the environment as it was at first use."""
        if url not in self._proxies:
            if is_loopback_host(endpoint_host(url) or ""):
                self._proxies[url] = dict(_NO_PROXY)
            else:
                self._proxies[url] = dict(requests.utils.get_environ_proxies(url)) or dict(
                    _NO_PROXY)
        return self._proxies[url]

    def route(self, url: str) -> _Route:
        """Given an endpoint URL, return its _Route, worked out at first use as Session.request
        would: requests prepares the URL (raising its own exceptions for a bad one), the
        proxies are `merge_setting(proxies_for(url), self.proxies)` (a None value turns a scheme
        off), the adapter is the one mounted for the prepared URL."""
        route = self._routes.get(url)
        if route is None:
            prepared = requests.PreparedRequest()
            prepared.prepare_url(url, {})
            proxies: Dict[str, Optional[str]] = dict(self.proxies)
            proxies.update(self.proxies_for(url))
            route = _Route(url=prepared.url or url,
                           proxies={key: value for key, value in proxies.items()
                                    if value is not None},
                           adapter=self.get_adapter(prepared.url or url))
            self._routes[url] = route
        return route

    def open(self, method: str, url: str, *, headers: Mapping[str, Optional[str]],
             auth: Optional[requests.auth.AuthBase],
             data: Union[str, bytes, Mapping[str, str], None], timeout: float
             ) -> requests.Response:
        """Given a request, send it as `Session.request(..., stream=True,
        allow_redirects=False)` would and return the streamed Response. Raise what requests
        raises for the same request (a bad header, a refused connection, a timeout…)."""
        route = self.route(url)
        request = requests.PreparedRequest()
        request.prepare_method(method)
        request.url = route.url
        request.prepare_headers(merged_headers(self.headers, headers))
        request.prepare_body(data or {}, None)
        request.prepare_auth(auth, route.url)
        # The proxies as a copy: the route's own stay as they were worked out.
        return route.adapter.send(request, stream=True, timeout=timeout,
                                  verify=True if self.verify is None else self.verify,
                                  cert=self.cert, proxies=dict(route.proxies))

    def get_redirect_target(self, resp: requests.Response) -> None:
        """Never a target: see the class docstring."""
        return None


def merged_headers(session_headers: Mapping[str, Any], headers: Mapping[str, Any]
                   ) -> Dict[str, Any]:
    """Given the session's headers and a request's, return what `merge_setting(headers,
    session_headers)` gives, as a plain dict: the session's, then the request's over them
    (matched without regard to case, named as the later one names it, in the place the first
    one took), None dropped. Built on a dict keyed by the lower-case name, as
    CaseInsensitiveDict keeps them, without its per-item method calls (every request merges)."""
    merged = {name.lower(): (name, value) for name, value in session_headers.items()}
    for name, value in headers.items():
        merged[name.lower()] = (name, value)
    return {name: value for name, value in merged.values() if value is not None}


def make_session(pool_size: int) -> requests.Session:
    """Given the number of workers, return a Session whose connection pool holds that many
    connections per host and never opens more (callers wait for a free one), with no retries and
    no cookie jar shared between accounts."""
    session = _Session()
    adapter = WatchedAdapter(pool_connections=4, pool_maxsize=max(1, pool_size), max_retries=0,
                          pool_block=True)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    return session


def __getattr__(name: str) -> Any:
    """`http.HttpResponse`, imported from response.py on first use: a run's first request goes
    out before it exists (see response.py)."""
    if name == "HttpResponse":
        from .response import HttpResponse
        return HttpResponse
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def send(session: requests.Session, method: str, url: str, *, what: str, timeout: float,
         max_body: int, headers: Optional[Mapping[str, str]] = None,
         auth: Optional[requests.auth.AuthBase] = None,
         data: Union[str, bytes, Mapping[str, str], None] = None) -> "HttpResponse":
    """Given a session and a request, return the HttpResponse, whatever its status. `what` names
    the request in messages ("Codex usage"). Raise ProviderError for a timeout (the whole
    exchange, connecting, headers and body included, gets `timeout` seconds, enforced by a timer
    that shuts the socket down), a dead connection or a body over the cap.

    A GET (a usage read) is cut short when the session's run is stopping (stop_reads); a POST (a
    token exchange, whose answer holds the only copy of the next refresh token) never is."""
    deadlines = getattr(session, "deadlines", None) or Deadlines()
    with deadlines.guard(timeout, abortable=method == "GET") as deadline:
        if deadline.reason == STOPPING:
            raise ProviderError("%s request not sent: the run is stopping" % what, unsent=True)
        unsent = False
        try:
            response = _send_unguarded(session, method, url, what=what, timeout=timeout,
                                       max_body=max_body, headers=headers, auth=auth, data=data)
        except ProviderError as error:
            if deadline.reason is None:
                raise
            unsent = error.unsent  # cut while connecting: the request never left
        else:
            if deadline.reason is None:
                return response
        # The deadline fired: whatever the cut socket made of the exchange (an error, a body
        # that ended early), the truth is that it ran out of time.
        if deadline.reason == STOPPING:
            raise ProviderError("%s request stopped: the run is ending" % what,
                                unsent=unsent) from None
        raise ProviderError("%s request timed out after %s" % (what, seconds(timeout)),
                            unsent=unsent) from None


def stop_reads(session: requests.Session) -> None:
    """Given a session from make_session, end its usage reads in flight now and refuse new ones;
    token exchanges run on to their own deadline."""
    deadlines = getattr(session, "deadlines", None)
    if deadlines is not None:
        deadlines.stop_reads()


def _send_unguarded(session: requests.Session, method: str, url: str, *, what: str,
                    timeout: float, max_body: int, headers: Optional[Mapping[str, str]] = None,
                    auth: Optional[requests.auth.AuthBase] = None,
                    data: Union[str, bytes, Mapping[str, str], None] = None) -> "HttpResponse":
    deadline = time.monotonic() + timeout
    # Ask for the body as it is: a compliant server then sends nothing to decompress. A server
    # that compresses anyway is decoded by urllib3 (>= 2.6.3, which decompresses no more than
    # each read asks for and at most 5 chained encodings), and the body stays under max_body.
    sent_headers = dict(headers or {}, **_IDENTITY)
    try:
        if isinstance(session, _Session):
            response = session.open(method, url, headers=sent_headers, auth=auth, data=data,
                                    timeout=timeout)
        else:  # a session from elsewhere: its own settings and environment apply
            response = session.request(method, url, headers=sent_headers, auth=auth, data=data,
                                       timeout=timeout, stream=True, allow_redirects=False)
        with response:
            body = _read_body(response, what, max_body, deadline, timeout)
            # build_response made these headers for this response alone: no copy needed.
            from .response import HttpResponse
            return HttpResponse(response.status_code, response.headers, body)
    except ProviderError:
        raise
    except requests.exceptions.Timeout as error:
        raise ProviderError("%s request timed out after %s" % (what, seconds(timeout)),
                            unsent=never_sent(error)) from None
    except requests.exceptions.ConnectionError as error:
        raise ProviderError("%s request failed: %s" % (what, _connection_problem(error)),
                            unsent=never_sent(error)) from None
    except requests.exceptions.InvalidHeader:
        raise ProviderError("%s request failed: a header holds characters HTTP cannot carry"
                            % what) from None
    except requests.exceptions.RequestException as error:
        raise ProviderError("%s request failed (%s)" % (what, type(error).__name__)) from None
    except (UnicodeEncodeError, ValueError):
        # http.client's message would quote the header, bearer token included.
        raise ProviderError("%s request failed: a header holds characters HTTP cannot carry"
                            % what, unsent=True) from None


def _read_body(response: requests.Response, what: str, max_body: int, deadline: float,
               timeout: float) -> bytes:
    chunks = []
    size = 0
    try:
        while True:
            if time.monotonic() > deadline:
                raise requests.exceptions.Timeout()
            # read1 returns after one socket read, so a body that trickles in byte by byte
            # still meets the deadline above (iter_content blocks until 64 KiB or EOF).
            chunk = response.raw.read1(_CHUNK, decode_content=True)
            if not chunk:
                break
            size += len(chunk)
            if size > max_body:
                raise ProviderError("%s returned a body larger than %d KiB (HTTP %d)"
                                    % (what, max_body // 1024, response.status_code),
                                    status=response.status_code)
            chunks.append(chunk)
    except ReadTimeoutError:
        raise requests.exceptions.Timeout() from None
    except (ProtocolError, DecodeError) as error:
        raise ProviderError("%s request failed: the connection broke off mid-response (%s)"
                            % (what, type(error).__name__), status=response.status_code) from None
    return b"".join(chunks)


def never_sent(error: BaseException) -> bool:
    """Given an exception from requests, return True when the request certainly never left this
    machine: no connection was ever made (refused, no such host, connect timeout). Decided by
    exception types through requests' and urllib3's wrappers, never by message text. Anything
    else (a reset, a read timeout, a TLS failure, a proxy error) may come after the request was
    written: its outcome is unknown."""
    from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, ProxyError
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    pending: List[object] = [error]
    seen: Set[int] = set()
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        # NewConnectionError and NameResolutionError are ConnectTimeoutErrors in urllib3 2.
        if isinstance(item, ConnectTimeoutError):
            return True
        if isinstance(item, MaxRetryError):
            pending.append(item.reason)
        if isinstance(item, ProxyError):
            pending.append(item.original_error)
        pending.extend(item.args)
        pending.append(item.__cause__)
    return False


def _connection_problem(error: BaseException) -> str:
    text = repr(error).lower()
    if "refused" in text:
        return "connection refused"
    if "reset" in text or "remotedisconnected" in text or "aborted" in text:
        return "connection reset"
    if "name or service" in text or "nodename" in text or "getaddrinfo" in text \
            or "name resolution" in text:
        return "host name not found"
    if "ssl" in text or "certificate" in text:
        return "TLS error"
    return "connection error"


def seconds(value: float) -> str:
    """Given a duration, return e.g. `15 s` or `2.5 s`."""
    return "%g s" % value


def _wait_text(value: float) -> str:
    """Given a cooldown in seconds, return it for people: `90 s`, `15 min`, `1 h`."""
    if value >= 3600:
        return "%g h" % round(value / 3600, 1)
    if value >= 600:
        return "%d min" % round(value / 60)
    return "%d s" % round(value)


def decode_json(response: "HttpResponse", what: str) -> Any:
    """Given a response, return its decoded JSON body. Raise ProviderError naming the status when
    the body is empty, HTML (a Cloudflare challenge is a common case) or not JSON."""
    if not response.body.strip():
        raise ProviderError("%s returned an empty body (HTTP %d)" % (what, response.status),
                            status=response.status)
    if response.is_html:
        hint = ("; a Cloudflare challenge blocked the request, try again later"
                if _is_challenge(response) else "")
        raise ProviderError("%s returned an HTML page instead of JSON (HTTP %d%s)"
                            % (what, response.status, hint), status=response.status, blocked=True)
    try:
        return json.loads(response.body.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ProviderError("%s returned a body that is not valid JSON (HTTP %d)"
                            % (what, response.status), status=response.status) from None


def _is_challenge(response: "HttpResponse") -> bool:
    return bool(response.headers.get("cf-mitigated")) or b"challenge" in response.body.lower() \
        or "cloudflare" in response.headers.get("Server", "").lower() \
        or b"just a moment" in response.body.lower()


def try_json(response: "HttpResponse") -> Any:
    """Given a response, return its JSON body, or None when it has none."""
    try:
        return json.loads(response.body.decode("utf-8"))
    except (ValueError, RecursionError):
        return None


def retry_after(response: "HttpResponse", now: Optional[datetime] = None) -> Optional[float]:
    """Given a response, return its Retry-After in seconds (a number or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    try:
        number = float(value)
        return number if number >= 0 and number == number and number != float("inf") else None
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (moment - now).total_seconds())


def status_error(response: "HttpResponse", what: str, detail: str = "") -> ProviderError:
    """Given a failed response, return the ProviderError naming its status, e.g.
    `Claude usage API returned 429 (rate limited; retry after 300 s)`."""
    after = retry_after(response)
    if response.is_html and not detail:
        detail = ("an HTML page: a Cloudflare challenge blocked the request; try again later"
                  if _is_challenge(response) else "an HTML page instead of JSON")
    if response.status == 429:
        # The cooldown actually kept, not the header: `Retry-After: Fri, 31 Dec 9999 …` would
        # read "retry after 2.51606e+11 s".
        wait = _wait_text(cooldown_seconds(after, None)) if after else None
        detail = detail or ("rate limited; retry after %s" % wait if wait else "rate limited")
    elif 300 <= response.status < 400:
        detail = detail or "unexpected redirect"
    elif response.status >= 500:
        detail = detail or "server error; try again later"
    message = "%s API returned %d" % (what, response.status)
    if detail:
        message += " (%s)" % detail
    return ProviderError(message, status=response.status, retry_after=after,
                         body=try_json(response), blocked=response.is_html)
