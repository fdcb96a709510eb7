"""Per-source lanes: which accounts of one refresh go to the pool now, and which wait for a
call slot of their proxy to free up. Pure bookkeeping, no I/O.

A remote proxy takes at most `workers` calls at once. If the tracker handed all its accounts to
the pool, the surplus would sit in pool threads waiting for a slot, and a slow proxy would end up
holding every thread while the other sources' accounts queue behind it. So a proxy's accounts
enter the pool only as its earlier ones finish: a thread is never spent waiting, and a slow proxy
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
    """The accounts of one refresh, by position: `first` go to the pool at once; each finished
    one lets the next waiting account of its source in (`follow`)."""

    def __init__(self, accounts: Sequence[AuthAccount]):
        self._lock = threading.Lock()
        self._source: List[str] = [account.source for account in accounts]
        self._waiting: Dict[str, Deque[Item]] = {}
        self.first: List[Item] = []
        running: Dict[str, int] = {}
        for index, account in enumerate(accounts):
            limit = slots(account)
            if limit is None or running.get(account.source, 0) < limit:
                running[account.source] = running.get(account.source, 0) + 1
                self.first.append((index, account))
            else:
                self._waiting.setdefault(account.source, deque()).append((index, account))

    def follow(self, index: int) -> Optional[Item]:
        """Given the position of an account that finished, return the next waiting account of
        its source (taken off the queue), or None."""
        with self._lock:
            queue = self._waiting.get(self._source[index])
            return queue.popleft() if queue else None

    def drain(self) -> List[Item]:
        """Take every waiting account off the queues (the refresh was superseded)."""
        with self._lock:
            items = [item for queue in self._waiting.values() for item in queue]
            self._waiting.clear()
            return items
