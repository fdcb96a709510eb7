"""Events: what changed since the previous run, decided by one pure function (SPEC §15).

A cron job every five minutes, a systemd timer and `--watch` all see the same accounts again and
again; people want to hear about a change once, not on every run. So each run's results are
compared with a small memory of what was already announced (kept in the state store between
runs, or in the process for the library without one):

- `quota_low` when a window's remaining percent is below the threshold, once per window period
  (the period is named by the window's reset moment); `quota_reset` when such a window reset;
- `runs_out_before_reset` when the pace projection starts saying so, once per window period;
- `login_failed` when an account enters `login_failed`, `expired` or `unreadable`, and
  `login_recovered` when it is next `ok`;
- `account_failing` when a state other than `ok`, `stale` or `disabled` has lasted the
  threshold, once per episode, and `account_recovered` when it ends in `ok` or `stale`.

An account seen for the first time has no history: a broken login, a low window or a pace
warning is announced at once; nothing is announced as recovered or reset. Disabling an account
closes its open episodes silently (whoever disabled it knows).

`decide` is pure (`now` is a parameter). `EventLedger` keeps the memory (through a state store
when it has one) and is the only part that touches a disk.
"""
from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .event_memory import (
    MAX_MARKS,
    AccountMemory,
    Key,
    Mark,
    Memory,
    memory_from_json,
    memory_to_json,
)
from .models import AccountState, AccountUsage, Provider, Skipped, UsageWindow
from .options import DEFAULT_BELOW, DEFAULT_FAILING_AFTER
from .parsing import format_timestamp
from .text import printable

if TYPE_CHECKING:
    from .state import StateStore

VERSION = 1
#: Two reset moments this close name the same window period (Codex computes `reset_at` from
#: `reset_after_seconds` when it must, and the result moves by a few seconds between runs).
PERIOD_TOLERANCE = timedelta(minutes=10)
#: A window without a reset moment counts as reset once it is this many points above the threshold.
REARM_POINTS = 10.0
#: Memory bounds: accounts not seen for this long are forgotten; of those the latest run did
#: not see, only the most recent are kept, up to this many accounts in all. Every account the
#: latest run saw is kept whatever their number (a run holds them all anyway), so that none
#: is announced again as new next run because a big run pushed it out.
FORGET_AFTER = timedelta(days=30)
MAX_ACCOUNTS = 10000
#: Marks whose period ended this long ago belong to windows no longer reported: dropped.
MARK_EXPIRY = timedelta(days=8)

NEEDS_HUMAN = frozenset({AccountState.LOGIN_FAILED, AccountState.EXPIRED, AccountState.UNREADABLE})
NOT_FAILING = frozenset({AccountState.OK, AccountState.STALE, AccountState.DISABLED})


class EventType(str, enum.Enum):
    """The kinds of event (SPEC §15); the value is what `OAUTH_USAGE_EVENT` holds."""

    QUOTA_LOW = "quota_low"
    QUOTA_RESET = "quota_reset"
    RUNS_OUT_BEFORE_RESET = "runs_out_before_reset"
    LOGIN_FAILED = "login_failed"
    LOGIN_RECOVERED = "login_recovered"
    ACCOUNT_FAILING = "account_failing"
    ACCOUNT_RECOVERED = "account_recovered"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Thresholds:
    """When quota counts as low, and how long a failure lasts before it is announced."""

    below: float = DEFAULT_BELOW
    """`quota_low` when a window has less than this many percent left."""
    failing_after: float = DEFAULT_FAILING_AFTER
    """`account_failing` once a failing state has lasted this many seconds."""


@dataclass(frozen=True)
class Event:
    """One change worth telling someone about. Holds no token."""

    type: EventType
    at: datetime
    account_id: str
    """The credential file's name."""
    provider: Optional[Provider]
    email: Optional[str]
    source: str
    state: Optional[AccountState]
    previous_state: Optional[AccountState]
    window: Optional[UsageWindow] = None
    """The window concerned (quota events), else None."""
    detail: Optional[str] = None
    """The account's error or skip reason, when it has one."""
    failing_since: Optional[datetime] = None

    def to_json(self) -> Dict[str, Any]:
        """Return the event as the JSON object commands and the events log receive."""
        window = None
        if self.window is not None:
            window = {"key": self.window.key, "title": self.window.title,
                      "remaining_percent": self.window.remaining_percent,
                      "reset_date": _stamp(self.window.reset_date)}
        return {"version": VERSION, "event": self.type.value, "at": format_timestamp(self.at),
                "account": {"id": self.account_id,
                            "provider": self.provider.value if self.provider else None,
                            "email": self.email, "source": self.source},
                "state": _value(self.state), "previous_state": _value(self.previous_state),
                "window": window, "error": self.detail,
                "failing_since": _stamp(self.failing_since), "message": self.message}

    @property
    def message(self) -> str:
        """One sentence for people (a push title, a mail subject), printable: no control
        character from a file or a server can forge a line or a header in it."""
        return printable(self._sentence())

    def _sentence(self) -> str:
        who = "%s %s" % (self.provider.label if self.provider else "File",
                         self.email or self.account_id)
        window, state = self.window, _value(self.state)
        if self.type is EventType.QUOTA_LOW and window is not None:
            text = "%s window has %s%% left" % (window.title, _percent(window.remaining_percent))
            return "%s: %s%s" % (who, text, ", resets " + window.reset_text
                                 if window.reset_text else "")
        if self.type is EventType.QUOTA_RESET and window is not None:
            return "%s: %s window has reset (%s%% left)" % (
                who, window.title, _percent(window.remaining_percent))
        if self.type is EventType.RUNS_OUT_BEFORE_RESET and window is not None:
            return "%s: %s window runs out before it resets at this pace (%s%% left)" % (
                who, window.title, _percent(window.remaining_percent))
        if self.type is EventType.LOGIN_FAILED:
            return "%s: login needs attention (%s)%s" % (who, state, _tail(self.detail))
        if self.type is EventType.LOGIN_RECOVERED:
            return "%s: login works again" % who
        if self.type is EventType.ACCOUNT_FAILING:
            return "%s: failing (%s) since %s%s" % (
                who, state, _stamp(self.failing_since), _tail(self.detail))
        return "%s: working again (%s)" % (who, state)


def _value(item: Optional[enum.Enum]) -> Optional[str]:
    return item.value if item is not None else None


def _stamp(moment: Optional[datetime]) -> Optional[str]:
    return format_timestamp(moment) if moment is not None else None


def _percent(value: Optional[float]) -> str:
    return "?" if value is None else "%g" % round(value, 1)


def _tail(detail: Optional[str]) -> str:
    return ": " + detail if detail else ""


# --- the decision -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Seen:
    """One account as this run saw it."""

    key: Key
    provider: Optional[Provider]
    email: Optional[str]
    state: AccountState
    windows: Tuple[UsageWindow, ...] = field(default=())
    detail: Optional[str] = None


def _observations(accounts: Iterable[AccountUsage], skipped: Iterable[Skipped]) -> List[_Seen]:
    seen: Dict[Key, _Seen] = {}
    # Only entries with a state count (outcome.py decides it): a result still loading and a
    # file that is no account (an unsupported type) have none.
    for usage in accounts:
        if usage.state is None:
            continue
        key = (usage.source, usage.id)
        seen.setdefault(key, _Seen(key, usage.provider, usage.email, usage.state,
                                   usage.windows, usage.error))
    for item in skipped:
        state = item.state
        if state is not None:
            key = (item.source, item.id)
            seen.setdefault(key, _Seen(key, item.provider, item.email, state,
                                       detail=item.reason))
    return list(seen.values())


def _mark_for(marks: Tuple[Mark, ...], key: str) -> Optional[Mark]:
    return next((mark for mark in marks if mark[0] == key), None)


def _period_over(mark: Mark, window: UsageWindow, now: datetime, rearm: float) -> bool:
    """True when `window` is no longer in the period `mark` was set in: its reset moment has
    passed, or the server names a later one; without a reset moment, when it climbed back to
    `rearm` percent left."""
    moment = mark[1]
    if moment is None:
        remaining = window.remaining_percent
        return window.reset_date is not None or (remaining is not None and remaining >= rearm)
    return now >= moment or (window.reset_date is not None
                             and window.reset_date > moment + PERIOD_TOLERANCE)


def _current(window: UsageWindow, now: datetime) -> bool:
    """True when the window describes a period that has not ended (a server that still reports
    a passed reset moment must not start a new period's announcement)."""
    return window.reset_date is None or window.reset_date > now


def _windows(seen: _Seen, previous: AccountMemory, now: datetime, thresholds: Thresholds,
             emit: "_Emitter") -> Tuple[Tuple[Mark, ...], Tuple[Mark, ...]]:
    """Decide the quota events of one account; return its new (low, runs_out) marks."""
    rearm = min(100.0, thresholds.below + REARM_POINTS)
    low = {key: moment for key, moment in previous.low}
    runs_out = {key: moment for key, moment in previous.runs_out}
    reported = set()
    for window in seen.windows:
        if window.key in reported:
            continue
        reported.add(window.key)
        mark = _mark_for(previous.low, window.key)
        if mark is not None and _period_over(mark, window, now, rearm):
            emit(EventType.QUOTA_RESET, window)
            del low[window.key]
        elif mark is not None:
            low[window.key] = window.reset_date or mark[1]  # follow small drifts of the moment
        remaining = window.remaining_percent
        if window.key not in low and remaining is not None and remaining < thresholds.below \
                and _current(window, now):
            emit(EventType.QUOTA_LOW, window)
            low[window.key] = window.reset_date
        _runs_out(window, runs_out, now, rearm, emit)
    return _bounded(low, reported, seen, now), _bounded(runs_out, reported, seen, now)


def _runs_out(window: UsageWindow, marks: Dict[str, Optional[datetime]], now: datetime,
              rearm: float, emit: "_Emitter") -> None:
    says = window.pace is not None and window.pace.runs_out_before_reset
    if window.key in marks:
        mark = (window.key, marks[window.key])
        over = _period_over(mark, window, now, rearm) if mark[1] is not None else not says
        if not over:
            return
        del marks[window.key]
    if says and _current(window, now):
        emit(EventType.RUNS_OUT_BEFORE_RESET, window)
        marks[window.key] = window.reset_date


def _bounded(marks: Dict[str, Optional[datetime]], reported: set, seen: _Seen,
             now: datetime) -> Tuple[Mark, ...]:
    """Drop marks of windows the server stopped reporting (once their period is long over, or at
    once when they had no reset moment), and keep at most MAX_MARKS."""
    kept = [(key, moment) for key, moment in marks.items()
            if key in reported or not seen.windows
            or (moment is not None and moment > now - MARK_EXPIRY)]
    return tuple(kept[:MAX_MARKS])


class _Emitter:
    """Collects the events of one account, filling in who, when and which state."""

    def __init__(self, seen: _Seen, previous: Optional[AccountMemory], now: datetime):
        self.seen, self.now = seen, now
        self.events: List[Event] = []
        self.previous_state = previous.state if previous is not None else None
        self.failing_since: Optional[datetime] = None

    def __call__(self, kind: EventType, window: Optional[UsageWindow] = None) -> None:
        seen = self.seen
        self.events.append(Event(
            kind, self.now, seen.key[1], seen.provider, seen.email, seen.key[0], seen.state,
            self.previous_state, window,
            detail=None if window is not None or kind in _GOOD_NEWS else seen.detail,
            failing_since=self.failing_since if kind is EventType.ACCOUNT_FAILING else None))


_GOOD_NEWS = frozenset({EventType.LOGIN_RECOVERED, EventType.ACCOUNT_RECOVERED})


def _account(seen: _Seen, previous: Optional[AccountMemory], now: datetime,
             thresholds: Thresholds) -> Tuple[List[Event], AccountMemory]:
    """Decide the events of one account against its memory; return them and its new memory."""
    emit = _Emitter(seen, previous, now)
    before = previous or AccountMemory(seen_at=now)
    state = seen.state
    login_announced = before.login_announced
    if state in NEEDS_HUMAN and not login_announced:
        emit(EventType.LOGIN_FAILED)
        login_announced = True
    elif login_announced and state in (AccountState.OK, AccountState.DISABLED):
        if state is AccountState.OK:
            emit(EventType.LOGIN_RECOVERED)
        login_announced = False
    failing_since, failing_announced = before.failing_since, before.failing_announced
    if state in NOT_FAILING:
        if failing_announced and state is not AccountState.DISABLED:
            emit(EventType.ACCOUNT_RECOVERED)
        failing_since, failing_announced = None, False
    else:
        failing_since = failing_since or now
        if not failing_announced and \
                (now - failing_since).total_seconds() >= thresholds.failing_after:
            emit.failing_since = failing_since
            emit(EventType.ACCOUNT_FAILING)
            failing_announced = True
    low, runs_out = _windows(seen, before, now, thresholds, emit)
    return emit.events, AccountMemory(now, state, failing_since, failing_announced,
                                      login_announced, low, runs_out)


def decide(memory: Mapping[Key, AccountMemory], accounts: Sequence[AccountUsage],
           skipped: Sequence[Skipped], now: datetime,
           thresholds: Thresholds = Thresholds()) -> Tuple[List[Event], Memory]:
    """Given the memory of earlier runs, this run's finished results and skipped files, now
    (aware) and the thresholds, return this run's events (in account order) and the new memory.
    Accounts this run did not see keep their memory, until FORGET_AFTER; loading placeholders
    and files that are no account are ignored. Pure."""
    events: List[Event] = []
    current: Memory = {}
    for seen in _observations(accounts, skipped):
        found, current[seen.key] = _account(seen, memory.get(seen.key), now, thresholds)
        events.extend(found)
    older = [(key, entry) for key, entry in memory.items()
             if key not in current and entry.seen_at > now - FORGET_AFTER]
    older.sort(key=lambda item: item[1].seen_at, reverse=True)
    current.update(older[:max(0, MAX_ACCOUNTS - len(current))])
    return events, current


class EventLedger:
    """The memory behind `decide`, shared by the script and the tracker: kept in the state
    store's events file when there is a store (so that consecutive runs, and `--watch`, and other
    processes on the same state directory announce each change once), else in this object.
    Thread-safe: each record() reads, decides and writes under a lock (the store's file lock
    across processes), so two runs that finish together never both announce one change."""

    def __init__(self, store: "Optional[StateStore]" = None,
                 thresholds: Thresholds = Thresholds()):
        self.store = store
        self.thresholds = thresholds
        self._memory: Memory = {}
        self._lock = threading.Lock()

    def record(self, accounts: Sequence[AccountUsage], skipped: Sequence[Skipped],
               now: datetime) -> List[Event]:
        """Given a finished run's results and skipped files, return its events and remember
        them. Never raises for a bad or unwritable store (a warning is logged instead)."""
        with self._lock:
            if self.store is None:
                events, self._memory = decide(self._memory, accounts, skipped, now,
                                              self.thresholds)
                return events

            def change(raw: Any) -> Tuple[List[Event], Dict[str, Any]]:
                events, memory = decide(memory_from_json(raw), accounts, skipped, now,
                                        self.thresholds)
                return events, memory_to_json(memory)
            return self.store.update_events(change)

