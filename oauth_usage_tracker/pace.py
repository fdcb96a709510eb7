"""Pace: how fast a quota window is being used against how much of it has elapsed. Pure.

A window of known length L that resets at R started at R − L. At the moment `at` of a reading,
the elapsed share is (at − (R − L)) / L; an even pace would have used that share. The projection
runs the usage on to 100 % at a rate: the rate since the window started (basis `window`), or,
when the state store holds earlier readings of the same period, the rate since the oldest of
them (basis `recent`, which follows a burst or a pause sooner).

Awkward cases, decided here once:
- unknown length, no reset moment, no percentage: no pace;
- a reset moment in the past (the reading is of a period that has ended, or a stored window
  rolled over): no pace;
- a reset further away than one window length (the stated length does not fit): no pace;
- less than 5 % of the window elapsed (it just reset): no pace, too early to tell;
- usage 0: a pace (expected and delta), but no projected moment: nothing is being used;
- usage already at 100 %: it ran out now, before its reset;
- the rollover artefact: right after a reset the endpoint can answer with the old period's high
  utilisation and the new reset moment. A reading in the first 5 % of a period that is at
  least as high as the last reading of the period before is taken for that artefact: it gets
  no pace (as any reading that early) and is not stored as a reading, so it never skews the
  recent rate later. The figure itself is reported as the server sent it.
"""
from __future__ import annotations

from array import array
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Tuple

from . import models

if TYPE_CHECKING:  # made once an answer arrives (usage.py): looked up through models when used
    from .models import Pace, UsageWindow
    from .usage import Reading

#: Below this elapsed share of a window, a projection says nothing useful.
MIN_ELAPSED_SHARE = 0.05
#: Readings kept per window and period (about an hour at a 5-minute cron for a 5-hour window).
MAX_READINGS = 12
#: Stored readings are at least this share of the window apart (5 minutes for a 5-hour window,
#: 2.8 hours for a weekly one), and the recent rate spans at least that much.
READING_SPACING_SHARE = 1.0 / 60
#: Two reset moments this close are the same period (Claude's `resets_at` jitters by a fraction
#: of a second between reads, a Codex reset computed from `reset_after_seconds` by a second or two).
SAME_PERIOD_SECONDS = 300.0
#: A reading this many points below the previous period's last one still counts as the artefact.
ARTEFACT_TOLERANCE = 0.5
#: Projections further than this many window lengths away are no projection at all.
MAX_PROJECTION_LENGTHS = 100


class WindowHistory:
    """The earlier readings of one window (by key) in its current period. Never a token.

    Immutable, compared by value. Thousands of accounts each keep a few windows with up to
    MAX_READINGS readings, so the moments and percentages are packed as floats into one array
    (unix seconds and percent: reset, reading count, the readings oldest first, then `previous`
    if any) rather than kept as a Reading object and a datetime each; `readings` and `previous`
    are built when asked for.
    """

    __slots__ = ("_packed",)
    _packed: "array[float]"

    def __init__(self, reset: datetime, readings: Iterable[Reading] = (),
                 previous: Optional[Reading] = None) -> None:
        """`reset` is the reset moment that identifies the period; `readings` oldest first
        (only the last MAX_READINGS are kept), about READING_SPACING_SHARE of the window apart;
        `previous` the last reading of the period before, to recognise the rollover artefact."""
        kept = tuple(readings)[-MAX_READINGS:]
        values = [reset.timestamp(), float(len(kept))]
        for reading in kept + ((previous,) if previous is not None else ()):
            values += (reading.at.timestamp(), reading.used_percent)
        packed = array("d", values)  # built whole: appending would over-allocate
        object.__setattr__(self, "_packed", packed)

    @classmethod
    def _packed_from(cls, packed: "array[float]") -> "WindowHistory":
        """The history whose packed floats are `packed` (laid out as __init__ lays them out)."""
        history: WindowHistory = object.__new__(cls)
        object.__setattr__(history, "_packed", packed)
        return history

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("WindowHistory is immutable")

    @property
    def reset(self) -> datetime:
        """The reset moment that identifies the period."""
        return moment(self._packed[0])

    @property
    def readings(self) -> Tuple[Reading, ...]:
        """The readings of this period, oldest first."""
        packed = self._packed
        reading = _reading_class()
        return tuple(reading(moment(packed[i]), packed[i + 1])
                     for i in range(2, 2 + 2 * int(packed[1]), 2))

    @property
    def previous(self) -> Optional[Reading]:
        """The last reading of the period before, or None."""
        packed = self._packed
        start = 2 + 2 * int(packed[1])
        return _reading_class()(moment(packed[start]), packed[start + 1]) \
            if len(packed) > start else None

    def as_seconds(self) -> Tuple[float, List[Tuple[float, float]], Optional[Tuple[float, float]]]:
        """Return the reset, the readings (oldest first) and the previous period's last reading
        as they are kept: unix seconds and percent, with no datetime made for any of them."""
        packed = self._packed
        end = 2 + 2 * int(packed[1])
        readings = [(packed[i], packed[i + 1]) for i in range(2, end, 2)]
        return packed[0], readings, (packed[end], packed[end + 1]) if len(packed) > end else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WindowHistory):
            return NotImplemented
        return self._packed == other._packed

    def __hash__(self) -> int:
        return hash(tuple(self._packed))

    def __repr__(self) -> str:
        return "WindowHistory(reset=%r, readings=%r, previous=%r)" % (
            self.reset, self.readings, self.previous)


def _reading_class() -> "type[Reading]":
    """Reading, from usage.py (imported by the first use)."""
    from .usage import Reading
    return Reading


def __getattr__(name: str) -> Any:
    """`pace.Reading`, from usage.py on first use: a run's request goes out before any Reading
    is made (stored histories are packed floats), and each dataclass costs about half a
    millisecond to create."""
    if name == "Reading":
        return _reading_class()
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def __dir__() -> List[str]:
    """The module's names, Reading among them."""
    return sorted(set(globals()) | {"Reading"})


def moment(seconds: float) -> datetime:
    """Given unix seconds as a history keeps them, return the aware UTC datetime they stand for."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def elapsed_share(window: UsageWindow, at: datetime) -> Optional[float]:
    """Given a window and the moment it was read, return the share (0–1) of its period that had
    elapsed, or None when its length or reset is unknown, the reset is not after `at`, or the
    reset is further away than one length (the length cannot be right)."""
    length = window.length_seconds
    if length is None or not length > 0 or window.reset_date is None:
        return None
    left = (window.reset_date - at).total_seconds()
    if left <= 0 or left > length:
        return None
    return 1.0 - left / length


def same_period(history: Optional[WindowHistory], window: UsageWindow) -> bool:
    """True when `history` belongs to the period that `window` reports on."""
    return (history is not None and window.reset_date is not None
            and abs((history.reset - window.reset_date).total_seconds()) <= SAME_PERIOD_SECONDS)


def _last_of_previous_period(history: Optional[WindowHistory],
                             window: UsageWindow) -> Optional[Reading]:
    if history is None or window.reset_date is None:
        return None
    if same_period(history, window):
        # Only while the new period has no reading of its own yet (the artefact may repeat).
        return None if history.readings else history.previous
    if history.reset < window.reset_date:
        return history.readings[-1] if history.readings else history.previous
    return None


def is_rollover_artefact(window: UsageWindow, at: datetime,
                         history: Optional[WindowHistory]) -> bool:
    """Given a reading and the window's stored history, return True when it looks like the
    rollover artefact: in the first 5 % of a new period, usage at least as high as the last
    reading of the period before (which was above 0)."""
    share = elapsed_share(window, at)
    used = window.used_percent
    if share is None or share >= MIN_ELAPSED_SHARE or used is None or not used > 0:
        return False
    last = _last_of_previous_period(history, window)
    return last is not None and last.used_percent > 0 \
        and used >= last.used_percent - ARTEFACT_TOLERANCE


def _recent_rate(window: UsageWindow, at: datetime, used: float, length: float,
                 history: Optional[WindowHistory]) -> Optional[float]:
    """Percentage points per second since the oldest stored reading of this period that is at
    least one spacing older than `at`, or None when there is none."""
    if not same_period(history, window):
        return None
    assert history is not None
    spacing = length * READING_SPACING_SHARE
    # Oldest first, so the first one old enough is the one; the others are never made into
    # datetimes.
    packed = history._packed
    for index in range(2, 2 + 2 * int(packed[1]), 2):
        elapsed = (at - moment(packed[index])).total_seconds()
        if elapsed >= spacing:
            return (used - packed[index + 1]) / elapsed
    return None


def pace(window: UsageWindow, at: datetime,
         history: Optional[WindowHistory] = None) -> Optional[Pace]:
    """Given a window, the moment it was read and its stored history, return its Pace, or None
    when it cannot be told (see the module docstring for every case)."""
    used = window.used_percent
    share = elapsed_share(window, at)
    if window.rolled_over or used is None or share is None or share < MIN_ELAPSED_SHARE:
        return None
    assert window.length_seconds is not None and window.reset_date is not None
    length = window.length_seconds
    expected = share * 100.0
    rate = used / (share * length)
    basis = "window"
    recent = _recent_rate(window, at, used, length, history)
    if recent is not None:
        rate, basis = recent, "recent"
    projected: Optional[datetime] = None
    if used >= 100.0:
        projected = at
    elif rate > 0:
        seconds = (100.0 - used) / rate
        if seconds <= MAX_PROJECTION_LENGTHS * length:
            projected = at + timedelta(seconds=seconds)
    return models.Pace(expected_used_percent=expected, delta_percent=used - expected,
                       projected_exhaustion=projected, basis=basis,
                       runs_out_before_reset=projected is not None
                       and projected < window.reset_date)


def attach(windows: Iterable[UsageWindow], at: datetime,
           histories: Mapping[str, WindowHistory]) -> Tuple[UsageWindow, ...]:
    """Given windows read at `at` and the stored histories by window key, return the windows
    with their `pace` filled in (None where it cannot be told)."""
    return tuple(_with_pace(window, pace(window, at, histories.get(window.key)))
                 for window in windows)


def _with_pace(window: UsageWindow, value: Optional[Pace]) -> UsageWindow:
    """`dataclasses.replace(window, pace=value)` without replace's walk over the fields on every
    call (every window of every account goes through here; test_pace checks that each field is
    carried over)."""
    return models.UsageWindow(key=window.key, title=window.title,
                              used_percent=window.used_percent, reset_date=window.reset_date,
                              reset_text=window.reset_text, severity=window.severity,
                              is_active=window.is_active, locked_reason=window.locked_reason,
                              pace=value, length_seconds=window.length_seconds,
                              rolled_over=window.rolled_over)


def remember(history: Optional[WindowHistory], window: UsageWindow,
             at: datetime) -> Optional[WindowHistory]:
    """Given a window's stored history and a new reading of it at `at`, return the history to
    store: a new period starts a new one (keeping the old period's last reading as `previous`);
    the newest stored reading is replaced while it is less than one spacing after the one
    before it, so stored readings stay a spacing apart and the newest is always the latest; at
    most MAX_READINGS are kept; the rollover artefact and readings older than the newest stored
    one are not stored. None when the window has no reset moment or percentage (nothing ties a
    reading to a period)."""
    if window.reset_date is None or window.used_percent is None or window.rolled_over:
        return None
    if history is not None and same_period(history, window):
        # The same period goes on from the stored history itself: it already holds at most
        # MAX_READINGS readings, and its floats are what packing its moments again would give.
        base = history
    else:
        base = WindowHistory(reset=window.reset_date,
                             previous=_last_of_previous_period(history, window))
    if is_rollover_artefact(window, at, history):
        return base
    # The readings are worked on as the packed floats (moment, percent pairs, oldest first):
    # only the newest one or two moments are made into datetimes, for the comparisons.
    packed = base._packed
    count = int(packed[1])
    newest = 2 * count  # index of the newest reading's moment
    if count and at <= moment(packed[newest]):
        return base
    spacing = (window.length_seconds or 0.0) * READING_SPACING_SHARE
    if count >= 2 and (moment(packed[newest]) - moment(packed[newest - 2])).total_seconds() \
            < spacing:
        count -= 1  # the newest was only a stand-in for the latest reading
    readings = packed[2:2 + 2 * count]
    readings.extend((at.timestamp(), window.used_percent))
    readings = readings[-2 * MAX_READINGS:]
    return WindowHistory._packed_from(array("d", (packed[0], len(readings) // 2)) + readings
                                      + packed[2 + 2 * int(packed[1]):])


def record(histories: Mapping[str, WindowHistory], windows: Iterable[UsageWindow],
           at: datetime) -> Dict[str, WindowHistory]:
    """Given the stored histories and the windows just read at `at`, return the histories to
    store: one per window key that has a reset moment; keys no longer reported are dropped."""
    result = {}
    for window in windows:
        updated = remember(histories.get(window.key), window, at)
        if updated is not None:
            result[window.key] = updated
    return result
