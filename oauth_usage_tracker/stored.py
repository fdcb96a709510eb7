"""What the state store remembers of one account (`AccountState`), as a stored line reads
(`StoredEntry`, parsed as far as each path needs), and its JSON form: the windows, the
details and the pace readings of the last good fetch, and the running 429 cooldown. Pure: no
file is read or written here (state_file.py does that, state.py decides with it). Never a
token."""
from __future__ import annotations

import functools
import sys
from array import array
from dataclasses import dataclass, field, replace
from datetime import datetime
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

from . import models, pace
from .json_forms import (
    details_from_json,
    details_to_json,
    is_window_json,
    time_json,
    window_from_json,
    window_to_json,
)
from .models import SLOTS
from .pace import WindowHistory
from .parsing import (
    clamp_percent,
    format_timestamp,
    number_value,
    parse_timestamp,
    reset_text,
    roll_over,
)

if TYPE_CHECKING:  # made once an answer arrives (usage.py): looked up through models when made
    from .models import AccountDetails, UsageWindow


@dataclass(frozen=True, **SLOTS)
class AccountState:
    """What is remembered about one account."""

    windows: Tuple[models.UsageWindow, ...] = ()
    fetched_at: Optional[datetime] = None
    """When `windows` were fetched (None: never)."""
    cooldown_until: Optional[datetime] = None
    cooldown_seconds: Optional[float] = None
    """The length of the running (or last) 429 cooldown, for doubling."""
    details: models.AccountDetails = field(default_factory=lambda: models.AccountDetails())
    """Account details from the last good fetch (plan, credits…)."""
    readings: Dict[str, WindowHistory] = field(default_factory=dict)
    """Earlier readings of each window's current period, by window key, for the pace."""

    def cooling_down(self, now: datetime) -> bool:
        """True while a cooldown is running."""
        return self.cooldown_until is not None and now < self.cooldown_until

    @property
    def has_windows(self) -> bool:
        """True when windows are stored."""
        return bool(self.windows)

    def windows_at(self, now: datetime) -> Tuple[UsageWindow, ...]:
        """The stored windows as they stand now: reset texts recomputed, passed resets rolled
        over to 0 % used."""
        return tuple(roll_over(replace(window, reset_text=reset_text(window.reset_date, now)
                                       if window.reset_date else None), now)
                     for window in self.windows)


class StoredEntry:
    """One account's stored entry as its line reads (a JSON object), each part parsed when a
    path asks for it, and once: deciding whether to ask (`plan_fetch`) needs only the moments
    and whether windows are stored, a success only the readings (`next_state`), a reuse, a
    cooldown or a failure the whole entry (`whole`). Before its request goes out, a run makes
    none of an answer's objects (windows, details) for it, nor their classes (usage.py).

    Read as an AccountState is (the same attributes and methods), and equal to the AccountState
    it reads as. One account's worker owns it: not thread-safe."""

    __slots__ = ("_raw", "fetched_at", "cooldown_until", "cooldown_seconds", "_readings",
                 "_whole")

    def __init__(self, raw: Dict[str, Any]) -> None:
        self._raw = raw
        self.fetched_at = parse_timestamp(raw.get("fetched_at"))
        self.cooldown_until = parse_timestamp(raw.get("cooldown_until"))
        self.cooldown_seconds = number_value(raw.get("cooldown_seconds"))
        self._readings: Optional[Dict[str, WindowHistory]] = None
        self._whole: Optional[AccountState] = None

    def cooling_down(self, now: datetime) -> bool:
        """True while a cooldown is running."""
        return self.cooldown_until is not None and now < self.cooldown_until

    @property
    def has_windows(self) -> bool:
        """True when windows are stored (told from the JSON: none is made)."""
        if self._whole is not None:
            return bool(self._whole.windows)
        return any(map(is_window_json, _stored_windows(self._raw)))

    @property
    def readings(self) -> Dict[str, WindowHistory]:
        """The stored readings by window key (parsed by the first ask)."""
        if self._readings is None:
            self._readings = _readings_from_json(self._raw)
        return self._readings

    def whole(self) -> AccountState:
        """The whole entry, as load() reads it (parsed by the first ask; the readings once)."""
        if self._whole is None:
            raw = self._raw
            self._whole = AccountState(
                windows=tuple(w for w in map(window_from_json, _stored_windows(raw))
                              if w is not None),
                fetched_at=self.fetched_at, cooldown_until=self.cooldown_until,
                cooldown_seconds=self.cooldown_seconds,
                details=details_from_json(raw.get("extra")), readings=self.readings)
        return self._whole

    @property
    def windows(self) -> Tuple[UsageWindow, ...]:
        """The stored windows (the whole entry parsed)."""
        return self.whole().windows

    @property
    def details(self) -> AccountDetails:
        """The stored account details (the whole entry parsed)."""
        return self.whole().details

    def windows_at(self, now: datetime) -> Tuple[UsageWindow, ...]:
        """AccountState.windows_at of the whole entry."""
        return self.whole().windows_at(now)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StoredEntry):
            other = other.whole()
        return self.whole() == other if isinstance(other, AccountState) else NotImplemented

    def __repr__(self) -> str:
        return "StoredEntry(%r)" % (self.whole(),)


#: An account's stored state: parsed whole (AccountState), or as its line reads (StoredEntry).
Stored = Union[AccountState, StoredEntry]


@functools.lru_cache(maxsize=64)
def _reading_moment(text: str) -> Optional[Tuple[datetime, float]]:
    """parse_timestamp for stored reading times, with the unix seconds a history keeps: the
    times repeat across an account's windows (one fetch reads them all), so each is parsed
    once."""
    at = parse_timestamp(text)
    return None if at is None else (at, at.timestamp())


_first = itemgetter(0)


def _reading_values(raw: Any) -> Optional[Tuple[datetime, float, float]]:
    """A stored reading `[time, percent]` as (moment, its unix seconds, percent), or None when
    it is not one."""
    if not isinstance(raw, list) or len(raw) != 2:
        return None
    if isinstance(raw[0], str):
        moment = _reading_moment(raw[0])
    else:
        at = parse_timestamp(raw[0])
        moment = None if at is None else (at, at.timestamp())
    used = clamp_percent(number_value(raw[1]))
    return (moment[0], moment[1], used) if moment is not None and used is not None else None


@functools.lru_cache(maxsize=256)
def _moment_text(seconds: float) -> str:
    """format_timestamp of a moment as a WindowHistory keeps it. The readings of one fetch
    repeat across an account's windows: each is formatted once, with no datetime kept."""
    return format_timestamp(pace.moment(seconds))


def _history_to_json(history: WindowHistory) -> Dict[str, Any]:
    reset, readings, previous = history.as_seconds()
    return {"reset": _moment_text(reset),
            "readings": [[_moment_text(at), used] for at, used in readings],
            "previous": [_moment_text(previous[0]), previous[1]] if previous else None}


def _history_from_json(raw: Any) -> Optional[WindowHistory]:
    """A stored history as the WindowHistory of its reset, its last MAX_READINGS valid
    readings (oldest first) and its previous period's last reading. Packed straight into the
    history's floats: no Reading object is made for a reading only to be packed."""
    reset = parse_timestamp(raw.get("reset")) if isinstance(raw, dict) else None
    if reset is None:
        return None
    readings = raw.get("readings") if isinstance(raw.get("readings"), list) else []
    kept = [r for r in map(_reading_values, readings[-pace.MAX_READINGS:]) if r is not None]
    kept.sort(key=_first)
    values = [reset.timestamp(), float(len(kept))]
    for _, seconds, used in kept:
        values += (seconds, used)
    previous = _reading_values(raw.get("previous"))
    if previous is not None:
        values += (previous[1], previous[2])
    return WindowHistory._packed_from(array("d", values))


def _stored_windows(raw: Dict[str, Any]) -> List[Any]:
    """An entry's stored windows as JSON (none when they are not a list)."""
    windows = raw.get("windows")
    return windows if isinstance(windows, list) else []


def _readings_from_json(raw: Dict[str, Any]) -> Dict[str, WindowHistory]:
    """An entry's stored histories by window key; those that do not read as one left out."""
    readings: Dict[Any, Any] = raw["readings"] if isinstance(raw.get("readings"), dict) else {}
    histories = {sys.intern(key): _history_from_json(value) for key, value in readings.items()
                 if isinstance(key, str)}
    return {key: value for key, value in histories.items() if value is not None}


def stored_entry(raw: Any) -> Optional[StoredEntry]:
    """An entry's JSON as a StoredEntry, its parts parsed when asked for; None when it is no
    JSON object."""
    return StoredEntry(raw) if isinstance(raw, dict) else None


def entry_from_json(raw: Any) -> Optional[AccountState]:
    """Given a stored entry's JSON, return the whole AccountState it reads as; None when it is
    no JSON object."""
    entry = stored_entry(raw)
    return entry.whole() if entry is not None else None


def entry_to_json(entry: AccountState) -> Dict[str, Any]:
    """Given an account's state, return the JSON form the state file stores."""
    return {"windows": [window_to_json(w) for w in entry.windows],
            "fetched_at": time_json(entry.fetched_at),
            "cooldown_until": time_json(entry.cooldown_until),
            "cooldown_seconds": entry.cooldown_seconds, "extra": details_to_json(entry.details),
            "readings": {key: _history_to_json(value) for key, value in entry.readings.items()}}
