"""A hard wall-clock deadline for each request: a watchdog shuts the request's socket down.

urllib3's timeouts bound each socket operation, not the exchange: a server that sends one header
byte every half second keeps a request alive forever under a 5-second read timeout. Here every
request runs under a `Deadline`. The connection classes below hand it the socket they use (a new
one from `_new_conn`, before any TLS handshake; a reused one when the request starts), and when
the deadline passes, or the run is stopping, the watchdog shuts that socket down: the blocked read
returns at once and the request fails, whatever phase it was in (connecting, the TLS handshake,
the status line and headers, the body). Name resolution happens before there is a socket and is
bounded by the resolver's own timeout.

One watchdog thread per process serves every deadline (a heap of due moments under a
Condition), rather than a timer thread per request: starting a thread costs more CPU than the
rest of a request's bookkeeping. It starts with the first deadline, and a forked child, where
the parent's watchdog thread does not exist, gets a new one with its first deadline.
"""
import heapq
import itertools
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Set, Tuple

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

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

    __slots__ = ("abortable", "reason", "seconds", "finished", "_lock", "_socket")

    def __init__(self, seconds: float, abortable: bool) -> None:
        #: True for requests that may be cut short when the run stops (reads, not token exchanges).
        self.abortable = abortable
        self.reason: Optional[str] = None
        self.seconds = seconds
        #: Set by finish(): the watchdog forgets a finished deadline instead of firing it.
        self.finished = False
        self._lock = threading.Lock()
        self._socket: Optional[socket.socket] = None

    def start(self) -> None:
        """Start the clock."""
        _watchdog().watch(self, time.monotonic() + self.seconds)

    def attach(self, sock: socket.socket) -> None:
        """Given the socket the request now uses, watch it (shut it down if already fired)."""
        with self._lock:
            self._socket = sock
            if self.reason is not None:
                _shutdown(sock)

    def fire(self, reason: str) -> None:
        """End the request now: remember why and shut its socket down (the first reason wins)."""
        with self._lock:
            if self.reason is not None or self.finished:
                return
            self.reason = reason
            if self._socket is not None:
                _shutdown(self._socket)

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


class _Watched:
    """Hands each socket to the current thread's deadline: a new one as soon as it is connected,
    a reused one when a request starts on it."""

    sock: Optional[socket.socket]

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        _attach(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self.sock)
        super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Watched, HTTPConnection):
    pass


class _HTTPSConnection(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class WatchedAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections (direct or through an HTTP proxy) report their sockets to
    the current request's Deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS pools bring their own connections
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager
