"""Per-source lanes: which account of one refresh a worker takes next, and which wait for a call
slot of their proxy to free up. Pure bookkeeping, no I/O.

A remote proxy takes at most `workers` calls at once. If the tracker's workers took its accounts
regardless, the surplus would sit in pool threads waiting for a slot, and a slow proxy would end
up holding every thread while the other sources' accounts queue behind it. So a proxy's accounts
are taken only as its earlier ones finish: a thread is never spent waiting, and a slow proxy
slows only itself. Local accounts have no lane limit.
"""
import threading
from collections import deque
from typing import Deque, Dict, List, Optional, Sequence, Tuple

from .models import AuthAccount

Item = Tuple[int, AuthAccount]


def interleaved(accounts: Sequence[AuthAccount]) -> List[AuthAccount]:
    """Given accounts, return them with their sources taking turns (local, proxy A, proxy B,
    local…), so that no source waits behind a long run of another's."""
    by_source: Dict[str, List[AuthAccount]] = {}
    for account in accounts:
        by_source.setdefault(account.source, []).append(account)
    lanes = list(by_source.values())
    return [lane[turn] for turn in range(max(map(len, lanes), default=0))
            for lane in lanes if turn < len(lane)]


def slots(account: AuthAccount) -> Optional[int]:
    """How many of this account's source may be in the pool at once (None: no limit)."""
    return account.remote.proxy.workers if account.remote is not None else None


class Lanes:
    """The accounts of one refresh not yet fetched, by source. `take()` gives the next account
    whose source has a call slot free, the sources taking turns; `done()` frees the slot. A
    worker that finds every waiting proxy busy stops rather than wait: the workers making that
    proxy's calls take its next accounts as they finish."""

    def __init__(self, accounts: Sequence[AuthAccount]):
        self._lock = threading.Lock()
        self._waiting: Dict[str, Deque[Item]] = {}
        self._limits: Dict[str, Optional[int]] = {}
        self._running: Dict[str, int] = {}
        for index, account in enumerate(accounts):
            self._waiting.setdefault(account.source, deque()).append((index, account))
            self._limits.setdefault(account.source, slots(account))
            self._running.setdefault(account.source, 0)
        self._sources = list(self._waiting)
        self._turn = 0

    def take(self) -> Optional[Item]:
        """Return the next account that may start now (taken off its queue, its slot held),
        or None when none is waiting or every source still waiting is at its limit."""
        with self._lock:
            for _ in range(len(self._sources)):
                source = self._sources[self._turn % len(self._sources)]
                self._turn += 1
                queue, limit = self._waiting[source], self._limits[source]
                if queue and (limit is None or self._running[source] < limit):
                    self._running[source] += 1
                    return queue.popleft()
            return None

    def done(self, account: AuthAccount) -> None:
        """Given an account that was taken and has finished, free its source's slot."""
        with self._lock:
            self._running[account.source] -= 1
