"""A hard wall-clock deadline for each request: a watchdog shuts the request's socket down.

urllib3's timeouts bound each socket operation, not the exchange: a server that sends one header
byte every half second keeps a request alive forever under a 5-second read timeout. Here every
request runs under a `Deadline`. The connection classes below hand it the socket they use (a new
one from `_new_conn` before it connects; a reused one when the request starts), and when the
deadline passes, or the run is stopping, the watchdog shuts that socket down: the blocked call
returns at once and the request fails, whatever phase it was in (connecting, the TLS handshake,
the status line and headers, the body). A name with several addresses is tried address by
address, each attempt given only what is left of the deadline. A name (not an address literal) is
resolved on a thread of its own that the request waits for only until the deadline fires: a
resolver that hangs is left to its own timeout while the request fails as a connect timeout.

One watchdog thread per process serves every deadline (a heap of due moments under a
Condition), rather than a timer thread per request: starting a thread costs more CPU than the
rest of a request's bookkeeping. It starts with the first deadline, and a forked child, where
the parent's watchdog thread does not exist, gets a new one with its first deadline.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import ssl
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union, cast

from requests.adapters import DEFAULT_POOLBLOCK, HTTPAdapter
from requests.models import PreparedRequest, Response
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    LocationParseError,
    NameResolutionError,
    NewConnectionError,
)
from urllib3.poolmanager import PoolManager
from urllib3.util.connection import allowed_gai_family

logger = logging.getLogger(__name__)

TIMED_OUT = "timed out"
STOPPING = "stopping"

# The deadline of the request the current thread is making: requests and urllib3 run a request
# on the caller's thread from start to end, so the connection classes find it here.
_current = threading.local()


class Deadline:
    """One request's deadline. `reason` is None until it fires, then TIMED_OUT or STOPPING.

    Timeline of the race it closes: the worker attaches the socket under `_lock`; the watchdog
    fires under the same lock and shuts down whatever is attached. A socket attached after the
    deadline fired is shut down at once by `attach`; once `finish` detached it (the connection
    may go back to the pool and serve another request), the watchdog can no longer touch it.
    """

    __slots__ = ("abortable", "reason", "seconds", "due", "finished", "_lock", "_socket",
                 "_waiter")

    def __init__(self, seconds: float, abortable: bool) -> None:
        #: True for requests that may be cut short when the run stops (reads, not token exchanges).
        self.abortable = abortable
        self.reason: Optional[str] = None
        self.seconds = seconds
        #: The monotonic moment it fires, set by start().
        self.due = time.monotonic() + seconds
        #: Set by finish(): the watchdog forgets a finished deadline instead of firing it.
        self.finished = False
        self._lock = threading.Lock()
        self._socket: Optional[socket.socket] = None
        self._waiter: Optional[threading.Event] = None

    def start(self) -> None:
        """Start the clock."""
        self.due = time.monotonic() + self.seconds
        _watchdog().watch(self, self.due)

    def remaining(self) -> float:
        """Return the seconds left before it fires: 0 once it has fired or its moment passed."""
        if self.reason is not None:
            return 0.0
        return max(0.0, self.due - time.monotonic())

    def attach(self, sock: socket.socket) -> None:
        """Given the socket the request now uses, watch it (shut it down if already fired)."""
        with self._lock:
            self._socket = sock
            if self.reason is not None:
                _shutdown(sock)

    def detach(self, sock: socket.socket) -> None:
        """Let go of `sock` if it is the one watched, before its owner closes it.

        Timeline: the watchdog may be shutting the socket down under `_lock` at this moment;
        taking `_lock` here waits for that to end, so the file descriptor is never closed (and
        its number handed to another file) while the watchdog is about to use it."""
        with self._lock:
            if self._socket is sock:
                self._socket = None

    def wake(self, waiter: Optional[threading.Event]) -> None:
        """Set `waiter` when the deadline fires (at once if it has fired); None forgets it."""
        with self._lock:
            self._waiter = waiter
            if waiter is not None and self.reason is not None:
                waiter.set()

    def fire(self, reason: str) -> None:
        """End the request now: remember why, shut its socket down and wake whoever waits on it
        (the first reason wins)."""
        with self._lock:
            if self.reason is not None or self.finished:
                return
            self.reason = reason
            if self._socket is not None:
                _shutdown(self._socket)
            if self._waiter is not None:
                self._waiter.set()

    def finish(self) -> None:
        """Stop the clock and let go of the socket."""
        with self._lock:
            self.finished = True
            self._socket = None
        _watchdog().forget()


class _Watchdog:
    """Fires every deadline of this process when it is due, from one daemon thread.

    `_condition` guards the heap. A finished deadline stays in the heap, marked, until it comes
    due or the marked ones are the majority (then the heap is rebuilt without them), so finishing
    costs no search. Deadlines are fired outside `_condition`: fire() takes the deadline's lock,
    which a worker holds while it attaches a socket, and the worker never waits for the
    watchdog's lock while holding its deadline's.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._heap: List[Tuple[float, int, Deadline]] = []
        self._order = itertools.count()  # ties in due moment never compare Deadlines
        self._finished = 0
        self._thread: Optional[threading.Thread] = None

    def watch(self, deadline: Deadline, due: float) -> None:
        """Fire `deadline` at the monotonic moment `due` unless it has finished by then."""
        with self._condition:
            heapq.heappush(self._heap, (due, next(self._order), deadline))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deadline-watchdog",
                                                daemon=True)
                self._thread.start()
            elif self._heap[0][2] is deadline:  # sooner than what the watchdog waits for
                self._condition.notify()

    def forget(self) -> None:
        """Count one more finished deadline; drop them all once they outnumber the live ones."""
        with self._condition:
            self._finished += 1
            if self._finished > 64 and self._finished * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2].finished]
                heapq.heapify(self._heap)
                self._finished = 0

    def _run(self) -> None:
        while True:
            with self._condition:
                due = self._due(time.monotonic())
                while not due:
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._condition.wait(wait)
                    due = self._due(time.monotonic())
            for deadline in due:
                deadline.fire(TIMED_OUT)

    def _due(self, now: float) -> List[Deadline]:
        due = []
        while self._heap and self._heap[0][0] <= now:
            deadline = heapq.heappop(self._heap)[2]
            if deadline.finished:
                self._finished = max(0, self._finished - 1)
            else:
                due.append(deadline)
        return due


_WATCHDOG: Optional[_Watchdog] = None
_WATCHDOG_LOCK = threading.Lock()


def _watchdog() -> _Watchdog:
    """The process's watchdog, made with the first deadline."""
    global _WATCHDOG
    watchdog = _WATCHDOG
    if watchdog is None:
        with _WATCHDOG_LOCK:
            if _WATCHDOG is None:
                _WATCHDOG = _Watchdog()
            watchdog = _WATCHDOG
    return watchdog


def _after_fork_in_child() -> None:
    # Only the forking thread lives on in the child: the parent's watchdog thread is gone and
    # its locks may have been held by a parent thread at the fork. The child's first deadline
    # makes a new watchdog; the parent's deadlines are its own threads' and are not fired here.
    global _WATCHDOG, _WATCHDOG_LOCK
    _WATCHDOG = None
    _WATCHDOG_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Deadlines:
    """The deadlines of one session's requests in flight, so a stopping run can cut its reads
    short. `_lock` guards `_active` and `stopping`; it is never held while a Deadline's lock is
    taken by a timer, and Deadline locks never wait for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: Set[Deadline] = set()
        self.stopping = False

    @contextmanager
    def guard(self, seconds: float, abortable: bool) -> Iterator[Deadline]:
        """Run the enclosed request under a deadline of `seconds`; an abortable request started
        after stop_reads() gets a deadline that has already fired."""
        deadline = Deadline(seconds, abortable)
        with self._lock:
            self._active.add(deadline)
            stopping = self.stopping
        if stopping and abortable:
            deadline.fire(STOPPING)
        previous = getattr(_current, "deadline", None)
        _current.deadline = deadline
        deadline.start()
        try:
            yield deadline
        finally:
            _current.deadline = previous
            deadline.finish()
            with self._lock:
                self._active.discard(deadline)

    def stop_reads(self) -> None:
        """End every abortable request in flight now, and every one started from now on."""
        with self._lock:
            self.stopping = True
            active = [deadline for deadline in self._active if deadline.abortable]
        for deadline in active:
            deadline.fire(STOPPING)


def _shutdown(sock: socket.socket) -> None:
    # The plain socket's method even for a TLS socket: SSLSocket.shutdown would also drop its
    # TLS state under the feet of the thread that is reading from it.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:  # already closed, or never connected
        pass


def _attach(sock: Optional[socket.socket]) -> None:
    deadline = getattr(_current, "deadline", None)
    if deadline is not None and sock is not None:
        deadline.attach(sock)


class _SameTimeout:
    """A socket that sets its timeout only when it changes. urllib3 sets a connection's timeout
    on its socket twice for every request (before sending it and before reading the answer),
    and the socket module makes a system call (ioctl FIONBIO) each time, even for the timeout
    it already has: two system calls per request, each a moment another worker can take the
    interpreter lock, for nothing. A changed timeout is set as before."""

    __slots__ = ()

    def settimeout(self, value: Optional[float]) -> None:
        """Set the timeout (see socket.settimeout), unless it is already `value`."""
        if value != self.gettimeout():  # type: ignore[attr-defined]
            super().settimeout(value)  # type: ignore[misc]


class _Socket(_SameTimeout, socket.socket):
    """A connection's socket, as _connect makes it (see _SameTimeout)."""


class _SSLSocket(_SameTimeout, ssl.SSLSocket):
    """A connection's TLS socket (see _SameTimeout): urllib3 wraps _Socket in a plain
    ssl.SSLSocket, which _HTTPSConnection.connect makes one of these (the same object, its
    class only)."""


def _connect(deadline: Deadline, address: Tuple[str, int], timeout: Optional[float],
             source_address: Optional[Tuple[str, int]],
             socket_options: Optional[Sequence[Tuple[int, int, Union[int, bytes]]]]
             ) -> socket.socket:
    """Given the current request's deadline, connect to `address` as urllib3 would (every
    address getaddrinfo gives, in its order, with urllib3's address family, socket options and
    source address) and return the connected socket, still watched by the deadline.

    Each attempt gets `timeout` or what is left of the deadline, whichever is less, and the
    socket is handed to the deadline before connect(), so the watchdog (or stop_reads) cuts a
    connect in progress. Raise TimeoutError once the deadline has fired or passed: urllib3 makes
    it a ConnectTimeoutError, a request that never left. Raise socket.gaierror when the name does
    not resolve, and the last attempt's OSError when every address failed.

    Timeline of the race with the watchdog, which may fire at any moment of an attempt: before
    attach(), attach() shuts the new socket down itself; from then until connect() starts, the
    shutdown marks the unconnected socket (on Linux connect() then returns at once; elsewhere it
    may wait out the attempt's time, never past the deadline); during connect(), it aborts the
    handshake. Whatever connect() then says, the deadline's reason is read after it, so a socket
    cut at any of these moments is closed and reported as a connect timeout: nothing was ever
    written to it."""
    host, port = address
    if host.startswith("["):
        host = host.strip("[]")
    try:
        host.encode("idna")
    except UnicodeError:
        raise LocationParseError("'%s', label empty or too long" % host) from None
    addresses = _resolve(deadline, host, port)
    error: Optional[OSError] = None
    for family, kind, protocol, _, peer in addresses:
        left = deadline.remaining()
        if left <= 0:
            raise TimeoutError("connecting ran out of time")
        sock = _Socket(family, kind, protocol)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(left if timeout is None else min(timeout, left))
            if source_address:
                sock.bind(source_address)
            deadline.attach(sock)
            sock.connect(peer)
            if deadline.reason is not None:
                raise TimeoutError("connecting ran out of time")
        except OSError as failed:
            deadline.detach(sock)
            sock.close()
            if deadline.reason is not None:
                raise TimeoutError("connecting ran out of time") from None
            error = failed
            continue
        sock.settimeout(timeout)
        return sock
    if error is not None:
        raise error
    raise OSError("getaddrinfo returned no address")


def _resolve(deadline: Deadline, host: str, port: int) -> List[Any]:
    """Return getaddrinfo's answer for `host`:`port` (urllib3's address family, stream sockets)
    within what is left of `deadline`; raise TimeoutError once the deadline fires first (or the
    run stops), and what getaddrinfo raised otherwise.

    An address literal is answered in place (AI_NUMERICHOST never asks a resolver). A name is
    looked up on a daemon thread of its own, which a hung resolver may keep until the resolver's
    own timeout; the request does not wait for it past the deadline, and the late answer is
    dropped. The thread holds only the name and the port."""
    family = allowed_gai_family()
    try:
        return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0,
                                  socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass  # a name, not an address
    answer: List[Any] = []
    done = threading.Event()

    def look_up() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM))
        except BaseException as error:  # handed to the waiting request, raised there
            answer.append(error)
        done.set()

    deadline.wake(done)
    try:
        threading.Thread(target=look_up, name="resolve", daemon=True).start()
        done.wait(deadline.remaining())
    finally:
        deadline.wake(None)
    if deadline.reason is not None or not answer:
        raise TimeoutError("resolving the name ran out of time")
    if isinstance(answer[0], BaseException):
        raise answer[0]
    return cast(List[Any], answer[0])


def _socket_timeout(timeout: object) -> Optional[float]:
    """Given urllib3's connect timeout (a number, None or its "default" token), return the
    socket timeout it stands for."""
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        return float(timeout)
    return None if timeout is None else socket.getdefaulttimeout()


class _Watched:
    """Hands each socket to the current thread's deadline: a new one before it connects (see
    _connect), a reused one when a request starts on it."""

    sock: Optional[socket.socket]

    def _new_conn(self) -> socket.socket:
        deadline = getattr(_current, "deadline", None)
        if deadline is None:  # a connection used outside send(): urllib3's own connect
            sock: socket.socket = super()._new_conn()  # type: ignore[misc]
            return sock
        conn = cast(HTTPConnection, self)
        # The exceptions urllib3's _new_conn raises for the same failures: never_sent and
        # requests' ConnectTimeout/ConnectionError read them.
        try:
            sock = _connect(deadline, (conn._dns_host, conn.port), _socket_timeout(conn.timeout),
                            conn.source_address, conn.socket_options)
        except socket.gaierror as error:
            raise NameResolutionError(conn.host, conn, error) from error
        except TimeoutError as error:
            raise ConnectTimeoutError(conn, "Connection to %s timed out. (connect timeout=%s)"
                                      % (conn.host, conn.timeout)) from error
        except OSError as error:
            raise NewConnectionError(conn, "Failed to establish a new connection: %s"
                                     % error) from error
        sys.audit("http.client.connect", conn, conn.host, conn.port)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self.sock)
        super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Watched, HTTPConnection):
    pass


class _HTTPSConnection(_Watched, HTTPSConnection):
    def connect(self) -> None:
        """Connect as urllib3 does; a TLS socket of the standard library's own class then sets
        its timeout only when it changes (_SSLSocket). Through an HTTPS proxy (TLS in TLS)
        urllib3's own transport is left as it is."""
        super().connect()
        if type(self.sock) is ssl.SSLSocket:
            self.sock.__class__ = _SSLSocket


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection
    #: The key its manager holds it under (set by _KeyedPoolManager).
    manager_key: Any = None


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection
    manager_key: Any = None


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _KeyedPoolManager(PoolManager):
    """A PoolManager that tells each pool it gives the key it holds it under, so that a pool
    remembered by WatchedAdapter can be looked up by that key again (see there)."""

    def connection_from_pool_key(self, pool_key: Any, request_context: Dict[str, Any]) -> Any:
        """Return the pool PoolManager gives for the key, the key set on it."""
        pool: Any = super().connection_from_pool_key(pool_key, request_context)
        pool.manager_key = pool_key
        return pool


#: How many direct (URL, verify, cert) lookups an adapter remembers before starting afresh.
_MAX_DIRECT_POOLS = 64


class WatchedAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections (direct or through an HTTP proxy) report their sockets to
    the current request's Deadline, and which remembers the pool each direct URL is sent on."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = DEFAULT_POOLBLOCK,
                         **pool_kwargs: Any) -> None:
        """Make the direct pools with the watched connection classes, in the PoolManager
        HTTPAdapter makes, as a _KeyedPoolManager."""
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager = _KeyedPoolManager(num_pools=connections, maxsize=maxsize, block=block,
                                             **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)
        #: (URL, verify, cert) -> (the pool manager, the pool it gave): see
        #: get_connection_with_tls_context.
        self._direct: Dict[Tuple[Any, ...], Tuple[Any, Any]] = {}
        #: URL -> the URL to send, for a request sent without a proxy: see request_url.
        self._paths: Dict[str, str] = {}

    def get_connection_with_tls_context(self, request: PreparedRequest, verify: Any,
                                        proxies: Optional[Mapping[str, str]] = None,
                                        cert: Any = None) -> Any:
        """Return the pool HTTPAdapter's method returns for the request, remembering it for a
        request sent without a proxy: every account's request goes to one of a few URLs, and
        working the pool out again (the URL parsed twice, the proxy selected, urllib3's pool key
        made from some thirty fields) cost more than the rest of preparing the request. A
        remembered pool is given again only when the adapter's manager still holds it under its
        key: looked up there as PoolManager looks it up (which also marks it the most recently
        used, as before). One the manager let go (evicted, or dropped when the adapter closed)
        is worked out again as before, and a request with a proxy always is."""
        if proxies or not isinstance(request.url, str):
            return super().get_connection_with_tls_context(request, verify, proxies, cert)
        key = (request.url, verify, cert)
        known = self._direct.get(key)
        if known is not None and known[0] is self.poolmanager:
            pool = known[1]
            if known[0].pools.get(pool.manager_key) is pool:
                return pool
        pool = super().get_connection_with_tls_context(request, verify, proxies, cert)
        if len(self._direct) >= _MAX_DIRECT_POOLS:
            self._direct.clear()
        self._direct[key] = (self.poolmanager, pool)
        return pool

    def request_url(self, request: PreparedRequest, proxies: Optional[Mapping[str, str]]
                    ) -> str:
        """Return the URL HTTPAdapter's method gives (the path, or the whole URL for an HTTP
        proxy), remembered for a request sent without a proxy: then it depends on the URL
        alone, which it parsed twice for every request."""
        if proxies or not isinstance(request.url, str):
            return super().request_url(request, proxies)
        url = self._paths.get(request.url)
        if url is None:
            url = super().request_url(request, proxies)
            if len(self._paths) >= _MAX_DIRECT_POOLS:
                self._paths.clear()
            self._paths[request.url] = url
        return url

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """Return the manager for an HTTP proxy, its pools with the watched connection classes
        (a SOCKS proxy's pools are left as they are)."""
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS pools bring their own connections
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager

    def build_response(self, req: PreparedRequest, resp: Any) -> Response:
        """Given the request sent and urllib3's response, return the Response as
        HTTPAdapter.build_response makes it (status, headers, encoding, raw, reason, url,
        request, connection), without copying the answer's cookies into the Response's own jar.

        That copy parses every answer's Set-Cookie headers through http.cookiejar (a
        MockRequest and a MockResponse each time), yet nothing here reads `Response.cookies`,
        and the session's own jar accepts no cookie (make_session). Session.send, the one
        caller that keeps cookies, copies them into the session's jar itself, from `resp`."""
        response = Response()
        response.status_code = getattr(resp, "status", None)  # type: ignore[assignment]
        response.headers = CaseInsensitiveDict(getattr(resp, "headers", {}))
        response.encoding = get_encoding_from_headers(response.headers)
        response.raw = resp
        response.reason = resp.reason
        response.url = (req.url.decode("utf-8") if isinstance(req.url, bytes)  # type: ignore[assignment]
                        else req.url)
        response.request = req
        response.connection = self
        return response
