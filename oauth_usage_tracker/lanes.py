"""Per-source lanes: which account of one refresh a worker takes next, and which wait for a call
slot of their proxy to free up. Pure bookkeeping, no I/O.

A remote proxy takes at most `workers` calls at once. If the tracker's workers took its accounts
regardless, the surplus would sit in pool threads waiting for a slot, and a slow proxy would end
up holding every thread while the other sources' accounts queue behind it. So a proxy's accounts
are taken only as its earlier ones finish: a thread is never spent waiting, and a slow proxy
slows only itself. Local accounts have no lane limit.

One exception, the probe gate: a proxy whose key has not yet been accepted for an api-call in
this run takes one account at a time. The key may have been accepted for the listing and be
rejected from then on (the operator changed it), and the proxy locks this host out after 5
failed logins; with `workers` calls let in at once, one run could spend them all. So:

    worker 1: take A1 (the probe) ......... api-call answered (not 401/403) -> gate open, done()
    worker 2: take() -> nothing else startable, A gated -> wait ............ wake: take A2
    worker 3: take() -> wait ............................................... wake: take A3

A worker waits only when nothing else can start and a gated proxy has a probe in flight, and
only until that probe's account is done(): the probe's call has a deadline, so no worker waits
longer than one request. A 401/403 or no answer stops the proxy, which opens the gate too: the
accounts left are then taken at once and fail without a request (a dead proxy costs one
timeout). A probe that sends nothing (a cooldown, a bad account id) leaves the gate closed and
the next account of that proxy becomes the probe.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

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


def _gate(account: AuthAccount) -> Optional[Any]:
    """The proxy whose probe gate this account's source passes (None: a local account)."""
    return account.remote.proxy if account.remote is not None else None


class Lanes:
    """The accounts of one refresh not yet fetched, by source. `take()` gives the next account
    whose source has a call slot free, the sources taking turns; `done()` frees the slot. A
    worker that finds every waiting proxy busy stops rather than wait: the workers making that
    proxy's calls take its next accounts as they finish."""

    def __init__(self, accounts: Sequence[AuthAccount]):
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiting: Dict[str, Deque[Item]] = {}
        self._limits: Dict[str, Optional[int]] = {}
        self._gates: Dict[str, Optional[Any]] = {}
        self._running: Dict[str, int] = {}
        for index, account in enumerate(accounts):
            queue = self._waiting.get(account.source)
            if queue is None:  # a source's first account: its limit and gate, once
                queue = self._waiting[account.source] = deque()
                self._limits[account.source] = slots(account)
                self._gates[account.source] = _gate(account)
                self._running[account.source] = 0
            queue.append((index, account))
        self._sources = list(self._waiting)
        self._turn = 0

    def _limit(self, source: str) -> Optional[int]:
        gate = self._gates[source]
        if gate is not None and not gate.gate_open:
            return 1
        return self._limits[source]

    def _probing(self) -> bool:
        """True when a gated proxy has accounts waiting that only its gate holds back (its
        probe is in flight, and it has slots for more)."""
        for source, gate in self._gates.items():
            limit, running = self._limits[source], self._running[source]
            if gate is not None and self._waiting[source] and running \
                    and (limit is None or running < limit) and not gate.gate_open:
                return True
        return False

    def take(self) -> Optional[Item]:
        """Return the next account that may start now (taken off its queue, its slot held),
        or None when none is waiting or every source still waiting is at its limit. While a
        gated proxy's probe is in flight and nothing else can start, wait for it (see above)."""
        with self._lock:
            while True:
                for _ in range(len(self._sources)):
                    source = self._sources[self._turn % len(self._sources)]
                    self._turn += 1
                    queue, limit = self._waiting[source], self._limit(source)
                    if queue and (limit is None or self._running[source] < limit):
                        self._running[source] += 1
                        return queue.popleft()
                if not self._probing():
                    return None
                self._changed.wait(1.0)  # woken by done(); the timeout only re-checks

    def done(self, account: AuthAccount) -> None:
        """Given an account that was taken and has finished, free its source's slot."""
        with self._lock:
            self._running[account.source] -= 1
            self._changed.notify_all()
