"""Pure parsing helpers shared by the providers: numbers, timestamps, reset texts, generic windows.

Nothing here does I/O or reads the clock: `now` is always passed in.
"""
from __future__ import annotations

import math
import re
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from . import models
from .models import FIVE_HOUR_TITLE, FIVE_HOURS, ONE_WEEK, WEEKLY_TITLE

if TYPE_CHECKING:  # made once an answer arrives (usage.py): looked up through models when made
    from .models import UsageWindow

# Epoch numbers above this are milliseconds (10**10 s is the year 2286).
_MILLISECONDS_ABOVE = 10 ** 10

# What format_timestamp writes (and so most of what the state file holds) and what the usage
# endpoints write for their reset moments: RFC 3339 with `Z` or an offset, a fraction of 3 or 6
# digits or none. Read by the C parser (a `Z` given as `+00:00`, which every supported Python's
# fromisoformat takes) rather than the general pattern below: the same moment, or None where
# datetime() refuses the fields. Hours up to 23 only: newer Pythons' fromisoformat take 24:00 as
# the next midnight. Other fraction lengths, spaces and the rest go through the general pattern.
_FAST_ISO_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-9]{2}:[0-9]{2}"
    r"(?:\.[0-9]{3}(?:[0-9]{3})?)?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])")
_ISO_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-9]{2}:[0-9]{2}"
    r"(?:\.[0-9]{3}(?:[0-9]{3})?)?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])")
_ISO_RE = re.compile(
    r"^\s*(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*(Z|z|UTC|[+-]\d{2}(?::?\d{2})?)?\s*$"
)
_NUMBER_RE = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*%?\s*$")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def number_value(value: Any) -> Optional[float]:
    """Given a JSON value, return it as a finite float: ints, floats and numeric strings (a
    trailing `%` stripped) count; bools, NaN, infinities and anything else give None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            return None
    elif isinstance(value, str) and _NUMBER_RE.match(value):
        number = float(value.strip().rstrip("%"))
    else:
        return None
    return number if math.isfinite(number) else None


def clamp_percent(value: Optional[float]) -> Optional[float]:
    """Given a percentage or None, return it clamped to 0–100."""
    if value is None:
        return None
    return min(100.0, max(0.0, value))


def parse_timestamp(value: Any) -> Optional[datetime]:
    """Given an ISO 8601 / RFC 3339 string (`Z` or offset, fractions optional; no zone means UTC)
    or unix seconds / milliseconds (number or numeric string), return an aware UTC datetime.
    Anything unparseable or out of range gives None."""
    if isinstance(value, str):
        if _FAST_ISO_RE.fullmatch(value):
            try:
                if value[-1] == "Z":
                    return datetime.fromisoformat(value[:-1] + "+00:00")
                return datetime.fromisoformat(value).astimezone(timezone.utc)
            except (ValueError, OverflowError):
                return None
        match = _ISO_RE.match(value)
        if match:
            return _from_iso_match(match)
    number = number_value(value)
    if number is None or (isinstance(value, str) and value.strip().endswith("%")):
        return None
    if abs(number) > _MILLISECONDS_ABOVE:
        number /= 1000.0
    try:
        return datetime.fromtimestamp(number, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def _from_iso_match(match: "re.Match[str]") -> Optional[datetime]:
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        tz = timezone.utc
        if zone and zone not in ("Z", "z", "UTC"):
            digits = zone[1:].replace(":", "")
            offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
            tz = timezone(-offset if zone[0] == "-" else offset)
        moment = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0),
                          int(second or 0), micro, tzinfo=tz)
        return moment.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


def slug(text: str) -> str:
    """Given a name, return it as a stable machine key: lower case, runs of anything but letters
    and digits as one `_` (`GPT-5.3-Codex-Spark` is `gpt_5_3_codex_spark`)."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def unique_keys(windows: Sequence[UsageWindow]) -> List[UsageWindow]:
    """Given an account's windows in order, return them with every key unique within the
    account: a window whose key is already taken gets `~2` (then `~3`…) appended. Two limit
    names that differ only in case or punctuation ("GPT-5 Codex", "gpt-5-codex") slug to one
    key, and two series with the same labels would be dropped by node_exporter."""
    taken: Set[str] = set()
    result = []
    for window in windows:
        key, number = window.key, 2
        while key in taken:
            key, number = "%s~%d" % (window.key, number), number + 1
        taken.add(key)
        result.append(window if key == window.key else replace(window, key=key))
    return result


def format_timestamp(moment: datetime) -> str:
    """Given an aware datetime, return RFC 3339 in UTC with `Z` and whole seconds."""
    moment = moment.astimezone(timezone.utc)
    if moment.year >= 1000:
        # The state file holds a dozen moments per account: isoformat writes them several times
        # faster than strftime, and from the year 1000 on the same text (`+00:00` cut off; its
        # seconds are truncated, as strftime's are). strftime does not pad earlier years.
        return moment.isoformat(timespec="seconds")[:-6] + "Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def reset_text(date: datetime, now: datetime) -> str:
    """Given a reset moment and now, return e.g. `in 3 hours (Nov 24, 2026, 5:00 PM)`, or
    `3 minutes ago (…)` for a past moment. The absolute part is in the local time zone."""
    seconds = (date - now).total_seconds()
    relative = _relative(abs(seconds))
    if relative is None:
        phrase = "now"
    elif seconds > 0:
        phrase = "in " + relative
    else:
        phrase = relative + " ago"
    return "%s (%s)" % (phrase, _absolute(date))


def _relative(seconds: float) -> Optional[str]:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size:
            count = int(math.floor(seconds / size + 0.5))
            return "%d %s%s" % (count, unit, "" if count == 1 else "s")
    return None


def _absolute(date: datetime) -> str:
    try:
        local = date.astimezone()
    except (OverflowError, ValueError, OSError):  # the edge of the datetime range
        local = date.astimezone(timezone.utc)
    hour = local.hour % 12 or 12
    return "%s %d, %d, %d:%02d %s" % (_MONTHS[local.month - 1], local.day, local.year, hour,
                                      local.minute, "AM" if local.hour < 12 else "PM")


def make_window(key: str, title: str, used_percent: Optional[float],
                reset_date: Optional[datetime], now: datetime,
                length_seconds: Optional[float] = None, *, severity: Optional[str] = None,
                is_active: Optional[bool] = None,
                locked_reason: Optional[str] = None) -> Optional[UsageWindow]:
    """Given a window's parts, return the UsageWindow (percentage clamped, reset text made), or
    None when it has neither a usable percentage nor a reset moment. The flags a provider reads
    beside the reading (a limit's severity and activity, a lock's reason) are given here, so the
    window is made once, not made and then copied by `dataclasses.replace`."""
    used = clamp_percent(used_percent)
    if used is None and reset_date is None:
        return None
    text = None
    if reset_date is not None:
        reset_date, text = _shared_reset(reset_date, now)
    # Interned: every account repeats the same few keys, titles and lengths (decoded afresh
    # from each answer), and a pool of thousands keeps them all.
    return models.UsageWindow(key=sys.intern(key), title=sys.intern(title), used_percent=used,
                              reset_date=reset_date, reset_text=text,
                              length_seconds=shared_length(length_seconds), severity=severity,
                              is_active=is_active, locked_reason=locked_reason)


#: The reset moment the last window was made with, the `now` it was made at, and its text. The
#: windows of one answer often share a reset moment (Claude's weekly, its per-model weeklies and
#: its weekly limits), and a pool of thousands keeps them all: each then keeps the first
#: window's moment and text rather than equal copies. Replaced whole, so a worker thread reads
#: either the old triple or the new one, and one that does not match only costs a copy.
_last_reset: Tuple[Optional[datetime], Optional[datetime], str] = (None, None, "")


def _shared_reset(date: datetime, now: datetime) -> Tuple[datetime, str]:
    """Given a window's reset moment and now, return an equal moment (the last window's, when it
    is the same moment in the same zone read at the same `now`) and its reset text."""
    global _last_reset
    last, last_now, text = _last_reset
    if last is not None and last_now is now and last == date and last.tzinfo is date.tzinfo:
        return last, text
    text = reset_text(date, now)
    _last_reset = (date, now, text)
    return date, text


#: The window lengths people call by name, each with how far a stated length may be off and
#: still carry the name: the one home of these titles and bounds.
NAMED_LENGTHS = ((FIVE_HOUR_TITLE, FIVE_HOURS, 60), (WEEKLY_TITLE, ONE_WEEK, 3600))


#: One float object for each named length, shared by every window of that length.
_SHARED_LENGTHS: Dict[float, float] = {float(length): float(length)
                                       for _, length, _ in NAMED_LENGTHS}


def shared_length(seconds: Optional[float]) -> Optional[float]:
    """Given a window length, return an equal one: the shared object for a named length (five
    hours, a week: thousands of accounts keep one each), else `seconds` itself."""
    return _SHARED_LENGTHS.get(seconds, seconds) if isinstance(seconds, float) else seconds


def length_title(seconds: float) -> Optional[str]:
    """Given a window's length in seconds, return the name people use for it: "5-hour" within
    a minute of five hours, "Weekly" within an hour of a week; else None."""
    for title, length, slack in NAMED_LENGTHS:
        if abs(seconds - length) < slack:
            return title
    return None


def window_title(seconds: Optional[float], fallback: str) -> str:
    """Given a window's length in seconds, return its title: a named length (length_title),
    whole days "N-day", else "N-hour"; no usable length gives `fallback`."""
    if seconds is None or seconds <= 0:
        return fallback
    named = length_title(seconds)
    if named is not None:
        return named
    if seconds >= 86400 and seconds % 86400 == 0:
        return "%d-day" % (seconds // 86400)
    return "%d-hour" % max(1, round(seconds / 3600))


def title_length(title: str) -> Optional[float]:
    """Given a window title, return the window's length in seconds when the title states it
    ("5-hour", "Weekly", "Weekly (Opus)", "N-hour", "N-day"), else None."""
    for name, length, _ in NAMED_LENGTHS:
        if title == name or title.startswith(name + " ("):
            return _SHARED_LENGTHS[float(length)]
    match = re.fullmatch(r"(\d+)-(hour|day)", title)
    if match:
        return float(int(match.group(1)) * (3600 if match.group(2) == "hour" else 86400))
    return None


def roll_over(window: UsageWindow, now: datetime) -> UsageWindow:
    """Given a stored window and now, return it as it stands now: a window whose reset moment
    has passed since it was fetched has reset, so it reads 0 % used with a past-tense text."""
    if window.reset_date is None or window.reset_date > now:
        return window
    return models.UsageWindow(key=window.key, title=window.title, used_percent=0.0,
                              reset_date=window.reset_date,
                              reset_text="reset " + reset_text(window.reset_date, now),
                              length_seconds=window.length_seconds, rolled_over=True)


# --- the generic parser (for bodies of a shape we do not know) ---------------------------------

GENERIC_ORDER = ("5-hour", "Session", "Weekly", "Full")
_GENERIC_KEYS = {"5-hour": "five_hour", "Session": "session", "Weekly": "weekly", "Full": "full"}
_PERCENT_KEYS = ("used_percent", "usedpercent", "percent_used", "percentused", "utilization",
                 "used_fraction", "usedfraction", "usage_ratio", "used_ratio", "percent", "usage",
                 "used", "fraction", "ratio")
_RESET_AT_KEYS = ("reset_at", "resets_at", "resetsat", "resetat", "reset_time", "reset_date",
                  "resets", "reset", "next_reset")
_RESET_IN_KEYS = ("reset_after_seconds", "resets_in_seconds", "resetsinseconds",
                  "resetafterseconds", "reset_in_seconds", "reset_in", "resets_in")
_LABEL_KEYS = ("name", "label", "title", "window", "type", "kind", "period", "id")
_MAX_DEPTH = 12


def _norm(key: str) -> str:
    return re.sub(r"[^a-z0-9]", "", key.lower())


def _find(obj: Dict[str, Any], names: Tuple[str, ...]) -> Optional[Tuple[str, Any]]:
    normalized = {_norm(k): (k, v) for k, v in obj.items() if isinstance(k, str)}
    for name in names:
        if _norm(name) in normalized:
            return normalized[_norm(name)]
    return None


def _walk(obj: Any, path: Tuple[str, ...], depth: int) -> Iterator[Tuple[Tuple[str, ...], dict]]:
    if depth > _MAX_DEPTH:
        return
    if isinstance(obj, dict):
        yield path, obj
        for key, value in obj.items():
            if isinstance(value, (dict, list)):
                yield from _walk(value, path + (str(key),), depth + 1)
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            if isinstance(value, (dict, list)):
                yield from _walk(value, path + (str(index),), depth + 1)


def _title_for(path: Tuple[str, ...], obj: Dict[str, Any]) -> Optional[str]:
    # The window's length, when stated, beats any name: a "session" of 300 minutes is 5-hour.
    for key, scale in (("limit_window_seconds", 1), ("window_seconds", 1), ("windowseconds", 1),
                       ("window_minutes", 60), ("windowminutes", 60), ("window_hours", 3600)):
        found = _find(obj, (key,))
        length = number_value(found[1]) if found else None
        named = length_title(length * scale) if length else None
        if named is not None:
            return named
    words = " ".join(list(path) + [str(v) for k, v in obj.items()
                                   if isinstance(k, str) and _norm(k) in _LABEL_KEYS
                                   and isinstance(v, str)]).lower()
    if re.search(r"5[\s_-]*h|five[\s_-]*hour|primary", words):
        return "5-hour"
    if "session" in words:
        return "Session"
    if re.search(r"week|7[\s_-]*d|seven[\s_-]*day|secondary", words):
        return "Weekly"
    if re.search(r"\bfull\b|\btotal\b|overall|month|\ball\b", words):
        return "Full"
    return None


def _generic_percent(obj: Dict[str, Any]) -> Optional[float]:
    found = _find(obj, _PERCENT_KEYS)
    if found is None:
        return None
    key, value = found
    number = number_value(value)
    if number is None:
        return None
    is_fraction = bool(re.search(r"fraction|ratio", key.lower()))
    written_as_percent = isinstance(value, str) and value.strip().endswith("%")
    if is_fraction or (number <= 1 and not written_as_percent):
        number *= 100.0
    return clamp_percent(number)


def _generic_reset(obj: Dict[str, Any], now: datetime) -> Optional[datetime]:
    found = _find(obj, _RESET_AT_KEYS)
    if found is not None:
        moment = parse_timestamp(found[1])
        if moment is not None:
            return moment
    found = _find(obj, _RESET_IN_KEYS)
    seconds = number_value(found[1]) if found else None
    if seconds is not None and 0 <= seconds < 10 ** 9:
        return now + timedelta(seconds=seconds)
    return None


def parse_generic_windows(payload: Any, now: datetime) -> List[UsageWindow]:
    """Given any decoded JSON body, return the windows it seems to hold: every nested object with
    a usage figure or a reset moment, labelled from its keys and values, one window per title,
    ordered 5-hour, Session, Weekly, Full. Fractions (keys saying fraction/ratio, or values ≤ 1)
    become percentages."""
    found: Dict[str, UsageWindow] = {}
    for path, obj in _walk(payload, (), 0):
        used = _generic_percent(obj)
        reset = _generic_reset(obj, now)
        if used is None and reset is None:
            continue
        title = _title_for(path, obj)
        if title is None or title in found:
            continue
        window = make_window(_GENERIC_KEYS[title], title, used, reset, now, title_length(title))
        if window is not None:
            found[title] = window
    return [found[title] for title in GENERIC_ORDER if title in found]
