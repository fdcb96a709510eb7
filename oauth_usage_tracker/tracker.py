"""The tracker: fetch every account in parallel, publish the results, let a newer refresh win.

A plain thread-safe class for legacy synchronous code. Each `refresh()` takes a new generation
number; pending fetches of older generations are cancelled, and whatever an older generation still
returns is dropped: only the newest generation ever publishes.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime, timezone
from functools import partial
from operator import attrgetter
from typing import (
    TYPE_CHECKING,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

from . import http, models, outcome
from .account_fetch import Fetcher, fetch_account
from .accounts import select_accounts
from .config import DEFAULT_TIMEOUT, DEFAULT_WORKERS, Settings
from .credentials import directories_held
from .errors import RefreshSuperseded
from .lanes import Lanes, interleaved
from .models import AuthAccount, Provider, Skipped
from .state import StateStore, default_state_dir, state_key
from .state_file import FileSeen, Spool, StoredEntries
from .stored import AccountState, Stored

if TYPE_CHECKING:
    import requests

    from .models import AccountUsage  # made by the first result (result.py)

if TYPE_CHECKING:  # imported by the first subscribe_events()
    from .events import Event, EventLedger, Thresholds

logger = logging.getLogger(__name__)

Listener = Callable[[List["AccountUsage"], bool], None]
#: An account whose loading placeholder is published but not made yet: (id, provider, e-mail,
#: source), what the placeholder shows.
Loading = Tuple[str, Provider, Optional[str], str]
EventListener = Callable[["Event"], None]
C = TypeVar("C")


def sort_key(usage: AccountUsage) -> Tuple[str, str, str, str]:
    """Order: provider (`claude` before `codex`), then e-mail case-insensitively, then id, then
    source."""
    return (Provider(usage.provider).value, (usage.email or "").casefold(), usage.id, usage.source)


def sort_by_key(usages: List[AccountUsage]) -> None:
    """Sort `usages` in place into sort_key's order, one part of the key a pass, the least
    significant first (the sort is stable, so the order is the same): a finished refresh of
    thousands of accounts holds no tuple per account at its peak, only one part at a time."""
    usages.sort(key=attrgetter("source"))
    usages.sort(key=attrgetter("id"))
    usages.sort(key=lambda usage: (usage.email or "").casefold())
    usages.sort(key=lambda usage: Provider(usage.provider).value)


def placeholders(loading: Sequence[Loading]) -> List[AccountUsage]:
    """Given accounts as (id, provider, e-mail, source), return their loading placeholders in
    sort_key's order."""
    return sorted((models.AccountUsage(id=id_, provider=provider, email=email, is_loading=True,
                                       source=source)
                   for id_, provider, email, source in loading), key=sort_key)


class RefreshHandle:
    """What `refresh()` returns: wait on it for that generation's published list."""

    def __init__(self, generation: int, skipped: Sequence[Skipped] = ()):
        self.generation = generation
        #: The accounts this refresh left out (`disabled`, `expired`), decided once, at its start.
        self.skipped: Tuple[Skipped, ...] = tuple(skipped)
        self._event = threading.Event()
        self._accounts: Optional[List[AccountUsage]] = None

    def done(self) -> bool:
        """True once this generation published, or was superseded."""
        return self._event.is_set()

    @property
    def superseded(self) -> bool:
        """True when a newer refresh (or close()) replaced this one before it published."""
        return self._event.is_set() and self._accounts is None

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait up to `timeout` seconds (None: until then) for this generation to publish or be
        superseded; return done()."""
        return self._event.wait(timeout)

    def result(self, timeout: Optional[float] = None) -> List[AccountUsage]:
        """Wait for this generation's published list and return it. Raise RefreshSuperseded if
        a newer refresh replaced it, concurrent.futures.TimeoutError after `timeout` seconds."""
        if not self._event.wait(timeout):
            raise FutureTimeout("refresh %d still running after %s s" % (self.generation, timeout))
        if self._accounts is None:
            raise RefreshSuperseded("Refresh %d was superseded by a newer one" % self.generation)
        return list(self._accounts)

    def _finish(self, accounts: List[AccountUsage]) -> None:
        self._accounts = accounts
        self._event.set()

    def _supersede(self) -> None:
        self._event.set()  # a handle that already finished keeps its result


class _Batch:
    """One generation's fetches: the accounts still to fetch, drained by at most W workers, and
    the results collected in the order the accounts came.

    Memory stays flat in the number of accounts: no Future per account is queued up front,
    each account's stored state is read only at its turn (`stored`), each account is let go
    once a worker takes it, and each new entry goes to the spool as it comes."""

    def __init__(self, generation: int, handle: RefreshHandle, accounts: Sequence[AuthAccount],
                 stored: StoredEntries, spool: Optional[Spool]):
        self.generation = generation
        self.handle = handle
        #: Each account's usage (None: not fetched).
        self.usages: List[Optional[AccountUsage]] = [None] * len(accounts)
        #: The new entries to store (None: no state kept).
        self.spool = spool
        #: The accounts not yet taken, by source: a proxy's enter only as its calls finish.
        self.lanes = Lanes(accounts)
        self.stored = stored
        #: Workers submitted and not yet finished (or cancelled); under `lock`.
        self.workers = 0
        self.lock = threading.Lock()

    def take(self) -> Optional[Tuple[int, AuthAccount, Optional[Stored]]]:
        """The next account to fetch with its stored state, or None when none can start now."""
        item = self.lanes.take()
        if item is None:
            return None
        index, account = item
        return index, account, self.stored.pop(state_key(account))


# Every live tracker, so that a forked child can give each one fresh locks, pool and session.
_TRACKERS: "weakref.WeakSet[OAuthUsageTracker]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for tracker in list(_TRACKERS):
        tracker._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class OAuthUsageTracker:
    """Fetches quota windows for Claude and Codex accounts on a thread pool and publishes them.

    Thread-safe; use it as a context manager or call close(). Endpoints come from `settings`, else
    from the OAUTH_USAGE_TRACKER_* environment variables, else the real services.

    The concurrency contract:

    - Threads. Any thread may call the public methods. Fetches run on the pool, where at most
      `workers` workers drain one batch (one refresh's accounts). A batch is finished by the
      thread that ends its last worker: a pool thread, or the thread that cancelled the last
      pending worker (refresh() or close()). That thread announces the batch's events,
      publishes it, then saves its state.
    - Locks, taken in this order only: `_publish_lock`, then `_lock`. `_publish_lock` (re-entrant,
      so that a listener may call refresh()) is held while a state is published and its listeners
      run, so every listener sees states in the order they were published. `_lock` guards every
      field below; it is held for bookkeeping only, never while a listener, a fetch or a file
      operation runs. A batch's own lock and its lanes' lock are leaves: never held while taking
      another lock.
    - The generation. `_generation` only grows: refresh() and close() add one under `_lock`, and
      it is only ever read under `_lock` (`_is_current`). A batch whose generation is no longer
      the tracker's is superseded: its pending workers are cancelled, fetches not yet started
      return without asking anyone, and it never announces or publishes. `_publish` checks the
      generation and completes the handle in one critical section, so no newer refresh slips in
      between. Because the counter only grows, a batch found current when its last worker ends
      was current all along: none of its fetches was skipped, its results are complete.
    - Published state. `_accounts` and `_is_refreshing` are replaced whole under `_lock`; readers
      get copies. A refresh that nobody listens to publishes its loading placeholders as
      `_loading` (what each shows), made into `_accounts` by the first reader of `accounts`,
      under `_lock`; every later publish clears it.
    - The state store. A batch's new entries go to its spool as they come; a finished batch
      publishes first and saves its spool after (the store's file lock may wait for another
      process). From before it publishes until its save has finished, its spool is also in
      `_unsaved`, which refresh() lays over what it reads: a refresh started the moment the
      previous one returned still sees that one's cooldowns. A superseded batch's outcomes are
      saved too (a 429 above all: a cooldown must not be forgotten).
    - Fork. A forked child starts over (`_after_fork`): fresh locks, no pool or session, a new
      generation (the parent's refresh in flight is superseded there) and no unsaved entries
      (the parent saves them).
    """

    def __init__(self, workers: Optional[int] = None, timeout: float = DEFAULT_TIMEOUT,
                 allow_token_refresh: bool = True, include_expired: bool = False,
                 settings: Optional[Settings] = None,
                 environ: Optional[Mapping[str, str]] = None,
                 fetchers: Optional[Mapping[Provider, Fetcher]] = None,
                 state_dir: Union[str, "os.PathLike[str]", bool, None] = True,
                 max_age: float = 0.0, event_thresholds: Optional["Thresholds"] = None):
        self.settings = settings or Settings.from_environ(
            environ, workers=workers, timeout=timeout, allow_token_refresh=allow_token_refresh,
            include_expired=include_expired)
        if state_dir is True:
            state_dir = default_state_dir(environ)
        #: Cooldowns after 429 and last good values across runs (None: no state kept).
        self.state: Optional[StateStore] = StateStore(os.fspath(state_dir)) if state_dir else None
        #: A stored result younger than this many seconds is reused instead of asking again.
        self.max_age = max_age
        # What earlier refreshes announced: in the state store (shared with the script and other
        # processes on the same directory) or, without one, in this object. Made by the first
        # subscribe_events(): a run nobody asks events of does not import them.
        self._event_thresholds = event_thresholds
        self._ledger: Optional["EventLedger"] = None
        self._event_listeners: List[EventListener] = []
        if fetchers is None:
            from .providers import FETCHERS
            fetchers = FETCHERS
        self._fetchers: Dict[Provider, Fetcher] = dict(fetchers)
        self._lock = threading.Lock()
        # Held while publishing, so listeners see states in the order they were published.
        self._publish_lock = threading.RLock()
        self._generation = 0
        self._accounts: List[AccountUsage] = []
        self._loading: Optional[List[Loading]] = None
        self._is_refreshing = False
        self._listeners: List[Listener] = []
        self._futures: List[Future] = []
        self._handle: Optional[RefreshHandle] = None
        self._pool: Optional[ThreadPoolExecutor] = None
        self._session: Optional[requests.Session] = None
        self._closed = False
        #: Spools of finished batches not yet on disk, oldest first (see the class docstring).
        self._unsaved: List[Spool] = []
        # A forked child's copies of the parent's pool and session: never used, never closed
        # (closing could wait on a lock a parent thread held at the fork), only kept alive.
        self._inherited: List[object] = []
        _TRACKERS.add(self)

    # --- published state ----------------------------------------------------------------------

    @property
    def accounts(self) -> List[AccountUsage]:
        """A snapshot of the last published list."""
        with self._lock:
            if self._loading is not None:
                self._accounts, self._loading = placeholders(self._loading), None
            return list(self._accounts)

    @property
    def is_refreshing(self) -> bool:
        """True while the newest refresh has not published its results."""
        with self._lock:
            return self._is_refreshing

    def subscribe(self, callback: Listener) -> Callable[[], None]:
        """Given a callback(accounts, is_refreshing), call it with every published state; return
        a function that unsubscribes it. A callback that raises is logged and ignored."""
        return self._add_listener(self._listeners, callback)

    def _add_listener(self, listeners: List[C], callback: C) -> Callable[[], None]:
        """Add `callback` to `listeners` under the lock; return the function that removes it."""
        with self._lock:
            listeners.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in listeners:
                    listeners.remove(callback)
        return remove

    def subscribe_events(self, callback: EventListener) -> Callable[[], None]:
        """Given a callback(event), call it with each event (SPEC §15) of every refresh that
        finishes, decided against what earlier refreshes announced; return a function that
        unsubscribes it. Events are decided only while someone is subscribed. Callbacks run on
        the tracker's threads, in event order, before the refresh publishes its results (so
        they have all run when refresh_and_wait returns); a callback that raises is logged and
        ignored."""
        from .events import EventLedger, Thresholds
        with self._lock:
            if self._ledger is None:
                self._ledger = EventLedger(self.state, self._event_thresholds or Thresholds())
        return self._add_listener(self._event_listeners, callback)

    def _is_current(self, generation: int) -> bool:
        """True while `generation` is the newest (read under the lock; see the class
        docstring)."""
        with self._lock:
            return generation == self._generation

    def _announce(self, generation: int, usages: List[AccountUsage],
                  skipped: Sequence[Skipped]) -> None:
        """Decide and deliver the events of a finished, still current refresh."""
        with self._lock:
            callbacks = list(self._event_listeners)
            current = generation == self._generation
            ledger = self._ledger
        if not callbacks or not current or ledger is None:
            return
        for event in ledger.record(usages, skipped, datetime.now(timezone.utc)):
            for callback in callbacks:
                try:
                    callback(event)
                except BaseException:  # a worker thread must survive even SystemExit
                    logger.exception("An event callback raised; ignoring it")

    def _publish(self, generation: int, accounts: List[AccountUsage], is_refreshing: bool,
                 handle: Optional[RefreshHandle] = None) -> bool:
        """Publish a state if `generation` is still the newest; a final state also completes
        its handle, under the same lock, so no newer refresh can slip in between."""
        with self._publish_lock:
            with self._lock:
                if generation != self._generation:
                    return False
                self._accounts, self._loading = list(accounts), None
                self._is_refreshing = is_refreshing
                if handle is not None:
                    handle._finish(list(accounts))
                listeners = list(self._listeners)
            for listener in listeners:
                try:
                    listener(list(accounts), is_refreshing)
                except BaseException as error:  # SystemExit too: it would kill a pool worker
                    logger.exception("A tracker listener raised %s; ignoring it",
                                     type(error).__name__)
            return True

    def _publish_loading(self, generation: int, accounts: Sequence[AuthAccount]) -> None:
        """Publish the loading placeholders of a refresh's accounts, if `generation` is still
        the newest. They are made now only for listeners; otherwise by the first reader of
        `accounts`, if any: making and sorting 200 of them held a refresh's first request back
        by half a millisecond."""
        with self._publish_lock:
            with self._lock:
                if self._listeners:
                    listening = True
                elif generation == self._generation:
                    listening = False
                    self._accounts = []
                    self._loading = [(a.id, a.provider, a.email, a.source) for a in accounts]
                    self._is_refreshing = True
                else:
                    return
            if listening:
                self._publish(generation, placeholders(
                    [(a.id, a.provider, a.email, a.source) for a in accounts]), True)

    # --- refreshing ---------------------------------------------------------------------------

    def refresh(self, codex_accounts: Sequence[AuthAccount] = (),
                claude_accounts: Sequence[AuthAccount] = ()) -> RefreshHandle:
        """Start fetching the given accounts (enabled, and not expired unless include_expired),
        superseding any refresh in flight, and return at once with a RefreshHandle."""
        kept, skipped = select_accounts(list(codex_accounts) + list(claude_accounts),
                                        self.settings.include_expired)
        kept = interleaved(kept)
        with self._lock:
            if self._closed:
                raise RuntimeError("This OAuthUsageTracker is closed")
            self._generation += 1
            generation = self._generation
            stale_futures, self._futures = self._futures, []
            previous, self._handle = self._handle, RefreshHandle(generation, skipped)
            handle = self._handle
        for future in stale_futures:
            future.cancel()
        for left_out in skipped:
            if left_out.state is not None:
                outcome.log_state(left_out.id, left_out.state)
        if previous is not None:
            previous._supersede()
        if not kept:
            self._announce(generation, [], handle.skipped)
            self._publish(generation, [], False, handle)
            return handle
        self._publish_loading(generation, kept)
        stored = self._stored_entries(kept)
        spool = Spool(self.state.directory) if self.state is not None else None
        batch = _Batch(generation, handle, kept, stored, spool)
        with self._lock:
            if self._closed or generation != self._generation:
                stored.close()
                return handle
            pool = self._ensure_pool_locked()
            batch.workers = min(len(kept), self.settings.workers or DEFAULT_WORKERS)
            futures: List[Future] = []
            self._futures = futures
        self._submit(pool, batch, futures)
        return handle

    def _submit(self, pool: ThreadPoolExecutor, batch: _Batch, futures: List[Future]) -> None:
        """Start the batch's workers, each future added to `futures` (the tracker's, for
        cancelling) as it is submitted.

        Not under `_lock`: submitting starts a thread and waits for it to run, and every worker
        reads the generation under `_lock` before its first fetch, so submitting under it held
        the first request back until the last of W threads had started. Timeline of the races
        this leaves: a newer refresh() or a close() that gets in meanwhile cancels the futures
        submitted so far; the ones submitted later find the batch superseded and return at
        once. Once close() has shut the pool down, submit() raises: the workers never
        submitted count as finished (`_drained`), so the batch still ends exactly once, by
        whichever thread ends its last worker."""
        workers = batch.workers  # read once: each worker that ends counts it down
        for submitted in range(workers):
            try:
                future = pool.submit(self._work, batch)
            except RuntimeError as error:  # close() shut the pool down, or no thread starts
                with self._lock:
                    closed = self._closed
                if not closed and not submitted:
                    raise  # not one worker: the refresh cannot run at all
                if not closed:
                    logger.warning("Fetching with %d of %d workers: %s", submitted, workers,
                                   error)
                for _ in range(workers - submitted):
                    self._drained(batch, None)
                return
            with self._lock:
                futures.append(future)
            future.add_done_callback(partial(self._cancelled, batch))

    def _stored_entries(self, accounts: Sequence[AuthAccount]) -> StoredEntries:
        """The stored states a refresh of `accounts` starts from: the state file's, read
        account by account as the workers take them (never all parsed at once), with the
        entries of finished batches not saved yet laid over them. A spool closed while it was
        read has been saved meanwhile: the file is read again, so that its entries count."""
        while True:
            # The spools first, then the file: a spool saved in between is closed by the time
            # it is read (and the file is read again); one saved before is in the file.
            with self._lock:
                spools = list(self._unsaved)  # published, perhaps not saved yet
            stored = self.state.open_entries() if self.state is not None else StoredEntries()
            keys = [state_key(account) for account in accounts] if spools else []
            for spool in spools:
                entries = spool.entries(keys)
                if entries is None:
                    break
                stored.update(entries)
            else:
                return stored
            stored.close()

    def refresh_and_wait(self, codex_accounts: Sequence[AuthAccount] = (),
                         claude_accounts: Sequence[AuthAccount] = ()) -> List[AccountUsage]:
        """Refresh and block until done; return the sorted list. If another thread superseded
        this refresh meanwhile, wait for and return the newest published list instead."""
        handle = self.refresh(codex_accounts, claude_accounts)
        while True:
            try:
                return handle.result()
            except RefreshSuperseded:
                with self._lock:
                    newest, closed = self._handle, self._closed
                if closed or newest is None or newest is handle:
                    return self.accounts
                handle = newest

    def _ensure_pool_locked(self) -> ThreadPoolExecutor:
        """Return the pool, creating it (and the HTTP session) first; self._lock is held."""
        if self._pool is None:
            size = self.settings.workers or DEFAULT_WORKERS
            # Threads start only as work arrives, so n accounts use min(size, n) of them.
            self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="oauth-usage")
            self._session = http.make_session(size)
        return self._pool

    def _fetch_one(self, generation: int, account: AuthAccount, entry: Optional[Stored]
                   ) -> Optional[Tuple[AccountUsage, Optional[AccountState]]]:
        """Fetch one account (or reuse or fall back to its stored state); return its usage and
        its new state, or None when this generation was superseded before it started. Never
        raises: every failure becomes the account's error."""
        if not self._is_current(generation):
            return None
        # An account a proxy listed is read through that proxy, never from a file (imported
        # then: a run of local accounts does not pay for the management API client).
        fetch: Fetcher = self._fetchers[account.provider]
        if account.remote is not None:
            from . import remote
            fetch = remote.fetch_usage
        return fetch_account(account, entry, fetch, self._session, self.settings,
                             self.state is not None, self.max_age)

    def _work(self, batch: _Batch) -> None:
        """One worker's whole life: drain the batch, then count itself finished (the last one
        finishes the batch) on this pool thread. Counted here rather than by a done callback:
        a callback attached after its future had finished would run on the thread attaching
        it, and refresh(), which returns at once, would then publish and save (and wait for
        the state file's lock) itself. The auth directories its credential reads open stay
        open while it drains (credentials.directories_held), and are closed before the batch
        may be finished."""
        try:
            with directories_held():
                self._drain(batch)
        finally:
            self._drained(batch, None)

    def _cancelled(self, batch: _Batch, future: Future) -> None:
        """A worker's future is done: count it finished if it was cancelled before it ran
        (one that ran counted itself, in _work)."""
        if future.cancelled():
            self._drained(batch, future)

    def _drain(self, batch: _Batch) -> None:
        """One worker: fetch the batch's accounts one after the other until none is left, none
        can start now (every proxy still waiting has its calls in flight: the workers making
        them take its next accounts), or a newer generation superseded this one (the accounts
        left are then never fetched)."""
        while True:
            item = batch.take()
            if item is None:
                return
            index, account, entry = item
            try:
                result = self._fetch_one(batch.generation, account, entry)
            finally:
                batch.lanes.done(account)  # always: a worker may wait for this account's probe
            if result is None:
                return
            # Each index is written by the one worker that took it.
            batch.usages[index], new_entry = result
            if new_entry is not None and batch.spool is not None:
                try:
                    batch.spool.add(state_key(result[0]), new_entry)
                except Exception as error:  # state is an optimisation: the worker goes on
                    logger.warning("Cannot keep the state of %s (%s)", result[0].id, error)

    def _drained(self, batch: _Batch, _future: Optional[Future]) -> None:
        """A worker finished (None), was cancelled (its future) or never started (None); the
        last one publishes the batch, then saves it."""
        with batch.lock:
            batch.workers -= 1
            if batch.workers:
                return
        # The futures (kept for cancelling) hold the batch: let go of what it holds now.
        usages, batch.usages = batch.usages, []
        spool, batch.spool = batch.spool, None
        seen = batch.stored.seen  # the state file as the batch read it: see StateStore.save
        batch.stored.close()
        if self.state is not None and spool is not None and len(spool):
            with self._lock:
                self._unsaved.append(spool)
            # The directory exists by the time results are published, as when the state was
            # saved first (a report written into it, as the README's cron line does, needs it);
            # a failure is logged by the save.
            with contextlib.suppress(OSError):
                self.state.make_directory()
        # Superseded or not is decided here, once, from the generation (never from a missing
        # result): current now means current all along, so no fetch was skipped.
        if self._is_current(batch.generation):
            done = [usage for usage in usages if usage is not None]
            del usages
            sort_by_key(done)
            self._announce(batch.generation, done, batch.handle.skipped)
            self._publish(batch.generation, done, False, batch.handle)
        if spool is not None:
            self._save(spool, seen)

    def _save(self, spool: Spool, seen: Optional[FileSeen] = None) -> None:
        """Store a finished batch's spool (a superseded batch's too), then drop it from
        `_unsaved` and let it go."""
        try:
            if self.state is not None and len(spool):
                self.state.save(spool, seen)
        finally:
            with self._lock:
                if spool in self._unsaved:
                    self._unsaved.remove(spool)
            spool.close()

    # --- lifetime -----------------------------------------------------------------------------

    def stop_reads(self) -> None:
        """End the usage reads in flight now (each becomes its account's error) and refuse new
        ones; token exchanges, and the credential writes after them, run on. For a program that
        is stopping: call it, then close()."""
        with self._lock:
            session = self._session
        if session is not None:
            http.stop_reads(session)

    def close(self) -> None:
        """Cancel pending fetches, wait for running ones (token writes finish), shut the pool
        down and close the HTTP session. A closed tracker cannot refresh again."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._generation += 1
            futures, self._futures = self._futures, []
            handle = self._handle
            pool, session = self._pool, self._session
        for future in futures:
            future.cancel()
        if handle is not None:
            handle._supersede()
        if pool is not None:
            pool.shutdown(wait=True)
        if session is not None:
            session.close()

    def _after_fork(self) -> None:
        """In a forked child, where only the forking thread lives: the pool's workers, the
        session's connections and any lock another thread held at the fork did not come along
        usefully. Start over with fresh locks and no pool or session (made again by the next
        refresh); a refresh the parent had in flight is superseded here, so nothing in the child
        waits for workers that do not exist."""
        self._lock = threading.Lock()
        self._publish_lock = threading.RLock()
        if self._ledger is not None:
            self._ledger._lock = threading.Lock()  # its memory stays; its lock may be a parent's
        self._inherited.append((self._pool, self._session))
        self._pool, self._session = None, None
        self._futures = []
        self._generation += 1
        self._is_refreshing = False
        self._unsaved = []  # the parent saves them
        handle, self._handle = self._handle, None
        if handle is not None and not handle.done():
            handle._event = threading.Event()  # its old lock may be held by a parent thread
            handle._supersede()

    def __enter__(self) -> "OAuthUsageTracker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

