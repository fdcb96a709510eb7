"""State across runs: per account, the last good windows and a cooldown after 429. Never a token.

Cron runs every few minutes, often several jobs at once, and Claude's usage endpoint answers 429
per access token, sometimes for hours once provoked. So a 429 starts a cooldown during which no
request is sent for that account, and the report shows the last good values, marked stale.

One JSON file (`state.json`) in the state directory, rewritten atomically under a sidecar lock by
read-modify-write, so two processes that record at once both keep their entries. It holds one
account per line and is read and written a line at a time: its size never sits in memory twice.
"""
from __future__ import annotations

import enum
import errno
import functools
import hashlib
import json
import logging
import os
import re
import sys
import threading
from array import array
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from operator import itemgetter
from typing import (
    TYPE_CHECKING,
    AbstractSet,
    Any,
    BinaryIO,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Tuple,
    TypeVar,
    Union,
)

from . import files, models, pace
from .authdir import LOCK_SUFFIX, locked_directory
from .json_forms import (
    details_from_json,
    details_to_json,
    is_window_json,
    time_json,
    window_from_json,
    window_to_json,
)
from .models import LOCAL_SOURCE, SLOTS, AuthAccount, Provider
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
    from .models import AccountDetails, AccountUsage, UsageWindow

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
EVENTS_FILE = "events.json"
VERSION = 1
MIN_COOLDOWN = 60.0
DEFAULT_COOLDOWN = 300.0
MAX_COOLDOWN = 3600.0
MAX_STATE_BYTES = 16 * 1024 * 1024
LOCK_TIMEOUT = 10.0

Key = Tuple[str, str]  # (provider value, credential file id)
T = TypeVar("T")


def default_state_dir(environ: Optional[Mapping[str, str]] = None) -> str:
    """Return $XDG_STATE_HOME/oauth-usage-tracker, else ~/.local/state/oauth-usage-tracker."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_STATE_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "oauth-usage-tracker")


def cooldown_seconds(retry_after: Optional[float], previous: Optional[float]) -> float:
    """Given a 429's Retry-After (seconds, or None) and the cooldown that the account's previous
    429 started (None if the last fetch was not a 429), return the new cooldown: a positive
    Retry-After clamped to 60 s – 1 h; otherwise 5 minutes, doubling on repeats up to 1 h.
    `Retry-After: 0` is not sensible here: obeying it is what keeps a token rate-limited."""
    if retry_after is not None and retry_after > 0:
        return min(MAX_COOLDOWN, max(MIN_COOLDOWN, retry_after))
    if previous:
        return min(MAX_COOLDOWN, max(DEFAULT_COOLDOWN, previous * 2))
    return DEFAULT_COOLDOWN


@dataclass(frozen=True, **SLOTS)
class AccountState:
    """What is remembered about one account."""

    windows: Tuple[UsageWindow, ...] = ()
    fetched_at: Optional[datetime] = None
    """When `windows` were fetched (None: never)."""
    cooldown_until: Optional[datetime] = None
    cooldown_seconds: Optional[float] = None
    """The length of the running (or last) 429 cooldown, for doubling."""
    details: AccountDetails = field(default_factory=lambda: models.AccountDetails())
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


def _stored_entry(raw: Any) -> Optional[StoredEntry]:
    """An entry's JSON as a StoredEntry, its parts parsed when asked for; None when it is no
    JSON object."""
    return StoredEntry(raw) if isinstance(raw, dict) else None


def _entry_from_json(raw: Any) -> Optional[AccountState]:
    entry = _stored_entry(raw)
    return entry.whole() if entry is not None else None


def _entry_to_json(entry: AccountState) -> Dict[str, Any]:
    return {"windows": [window_to_json(w) for w in entry.windows],
            "fetched_at": time_json(entry.fetched_at),
            "cooldown_until": time_json(entry.cooldown_until),
            "cooldown_seconds": entry.cooldown_seconds, "extra": details_to_json(entry.details),
            "readings": {key: _history_to_json(value) for key, value in entry.readings.items()}}


def state_key(account: Union[AuthAccount, AccountUsage]) -> Key:
    """Given an account (or its result), return its key in the store: (provider, file id), the
    id replaced by `<source>/<id>` for a remote proxy's account, so that two sources' files of
    the same name never share an entry. Both parts of a remote key are escaped (`%` and `/`),
    so that its one `/` splits it unambiguously: `h:443` + `x/a.json` and `h:443/x` + `a.json`
    are two keys. A local id is a file name (never a `/`), stored as it is."""
    if account.source == LOCAL_SOURCE:
        return (account.provider.value, account.id)
    return (account.provider.value, remote_key(account.source, account.id))


def remote_key(source: str, file_id: str) -> str:
    """Given a proxy's source and a file id it listed, return the id part of its state key."""
    return "%s/%s" % (_escape(source), _escape(file_id))


def split_remote_key(text: str) -> Optional[Tuple[str, str]]:
    """Given the id part of a state key, return (source, file id) for a remote key, or None
    for a local one (or a remote key written before escaping, which is ambiguous)."""
    if text.count("/") != 1:
        return None
    source, _, file_id = text.partition("/")
    return _unescape(source), _unescape(file_id)


def _escape(text: str) -> str:
    return text.replace("%", "%25").replace("/", "%2F")


def _unescape(text: str) -> str:
    return re.sub("%(25|2F)", lambda match: "%" if match.group(1) == "25" else "/", text)


def _key_text(key: Key) -> str:
    return "%s/%s" % key


class StateStore:
    """The state file in one directory."""

    def __init__(self, directory: str):
        self.directory = os.path.abspath(os.path.expanduser(directory))
        self.path = os.path.join(self.directory, STATE_FILE)

    def _each_member(self, visit: Callable[[str, bytes], None],
                     wanted: Callable[[str], bool] = lambda name: True,
                     dir_fd: Optional[int] = None) -> bool:
        """Call visit(name, member bytes) for every stored account whose name is `wanted`,
        reading one line at a time (in the directory open as `dir_fd`, when given); return False
        (with a warning) when the file is unreadable, a symlink or corrupt, so that the caller
        drops what it gathered. A missing file visits nothing."""
        try:
            with files.open_regular(STATE_FILE if dir_fd is not None else self.path, dir_fd,
                                    follow=False) as handle:
                return self._visit_open(handle, lambda name, member, _: visit(name, member),
                                        wanted)
        except FileNotFoundError:
            return True
        except OSError as error:
            logger.warning("Ignoring the state file %s (%s); it will be rewritten", self.path,
                           error.strerror or error)
            return False

    def _visit_open(self, handle: BinaryIO,
                    visit: Callable[[str, bytes, Optional[int]], None],
                    wanted: Callable[[str], bool] = lambda name: True,
                    held: Optional[Callable[[], Iterable[bytes]]] = None) -> bool:
        """_each_member for the state file open as `handle`, offsets passed on.

        With `held` (which gives the lines visited, as the caller holds them), every line
        visited is also checked to be one JSON member, so that a corrupt line makes the whole
        file corrupt (load() finds it by parsing each). A file whose seal (SEAL_ATTRIBUTE)
        matches its lines is not parsed for that: the save that sealed it wrote it whole, of
        lines it had made or checked. A file without a seal has each line parsed as it is read;
        one whose seal does not match (edited in place) has the held lines parsed at the end."""
        seal = files.read_attribute(handle.fileno(), SEAL_ATTRIBUTE) if held else None
        digest = hashlib.sha256() if seal is not None else None
        try:
            for name, member, offset in _members(handle, MAX_STATE_BYTES, wanted, digest):
                if held is not None and digest is None and offset is not None:
                    _parse_member(member)
                visit(name, member, offset)
            if held is not None and digest is not None and digest.digest() != seal:
                for member in held():
                    _parse_member(member)
        except OSError as error:
            logger.warning("Ignoring the state file %s (%s); it will be rewritten", self.path,
                           error.strerror or error)
            return False
        except (ValueError, RecursionError):
            logger.warning("Ignoring the corrupt state file %s; it will be rewritten", self.path)
            return False
        return True

    def make_directory(self) -> None:
        """Create the state directory (0700) unless it exists. Raise OSError."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)

    def load(self) -> Dict[Key, AccountState]:
        """Return every stored account state; a missing, unreadable or corrupt file gives {}
        (with a warning for the last two)."""
        result: Dict[Key, AccountState] = {}

        def visit(name: str, member: bytes) -> None:
            key = _key(name)
            entry = _entry_from_json(_parse_member(member))
            if entry is not None and key is not None:
                result[key] = entry
        return result if self._each_member(visit) else {}

    def open_entries(self) -> "StoredEntries":
        """Return the stored account states as a StoredEntries, which reads each one when it is
        asked for: what load() gives, without every entry parsed and held at once. The file is
        checked whole now (a missing, unreadable or corrupt file gives no entries, with a
        warning for the last two, as load() does) and stays open until the StoredEntries is
        closed. A file in an older layout (one line) is parsed now, as load() does."""
        try:
            handle = files.open_regular(self.path, follow=False)
        except FileNotFoundError:
            return StoredEntries()
        except OSError as error:
            logger.warning("Ignoring the state file %s (%s); it will be rewritten", self.path,
                           error.strerror or error)
            return StoredEntries()
        spans: Dict[str, int] = {}
        parsed: Dict[Key, AccountState] = {}

        def visit(name: str, member: bytes, offset: Optional[int]) -> None:
            if offset is not None:  # checked by _visit_open: a corrupt line, a corrupt file
                spans[name] = _span(offset, len(member))
                return
            key, entry = _key(name), _entry_from_json(_parse_member(member))
            if key is not None and entry is not None:
                parsed[key] = entry

        def held() -> Iterator[bytes]:
            return (_read_span(handle.fileno(), span) for span in spans.values())
        if not self._visit_open(handle, visit, held=held):
            handle.close()
            return StoredEntries()
        if not spans:
            handle.close()
            return StoredEntries(parsed=parsed)
        return StoredEntries(handle, spans, parsed, self.path)

    def save(self, changes: Union[Iterable[Tuple[Key, AccountState]], "Spool"]) -> None:
        """Given (key, state) pairs, or a Spool of them, store them: under the lock, re-read the
        file, replace those entries, write atomically. Other processes' entries are kept.
        Failures are logged, never raised: state is an optimisation, not a reason to fail a run.

        The file is read and written one account at a time: only the entries this save does
        not replace are held (and parsed, to check them), as the bytes they were stored as; a
        spool's lines are copied into the new file one at a time, never all held."""
        if isinstance(changes, Spool):
            names = changes.names()
            if names:
                self._write(names, changes.member)
            return
        changed = {_key_text(key): entry for key, entry in changes}
        if changed:
            self._write(changed.keys(),
                        lambda name: _member(name, _entry_to_json(changed[name])))

    def _write(self, names: AbstractSet[str], member_of: Callable[[str], bytes]) -> None:
        """save() of the entries `names`, each one's line given by member_of(name)."""
        try:
            self.make_directory()
            with locked_directory(self.directory, STATE_FILE + LOCK_SUFFIX,
                                  LOCK_TIMEOUT) as dir_fd:
                kept: Dict[str, bytes] = {}

                # Only the lines kept are parsed, to check them: hashing every line to match
                # the seal would cost more whenever this save replaces most of them.
                def visit(name: str, member: bytes) -> None:
                    _parse_member(member)
                    kept[name] = member
                if not self._each_member(visit, lambda name: name not in names, dir_fd):
                    kept.clear()
                digest = hashlib.sha256()
                files.atomic_write(STATE_FILE, _layout(names, member_of, kept, digest),
                                   default_mode=0o600, dir_fd=dir_fd,
                                   attributes=lambda: {SEAL_ATTRIBUTE: digest.digest()})
        except Exception as error:  # state is an optimisation: never fail a run for it
            logger.warning("Cannot write the state file %s (%s)", self.path, files.why(error))

    def update_events(self, change: Callable[[Dict[str, Any]], Tuple[T, Dict[str, Any]]]) -> T:
        """Given change(stored) -> (result, new stored), apply it to the events memory file
        (`events.json`) under its own lock: read, change, write atomically; return the result.
        Two processes recording at once run one after the other, so each sees the other's
        memory. Failures to lock or write are logged, never raised: the result is returned
        anyway (an event announced twice is better than one lost)."""
        path = os.path.join(self.directory, EVENTS_FILE)
        decided = []
        try:
            self.make_directory()
            with locked_directory(self.directory, EVENTS_FILE + LOCK_SUFFIX,
                                  LOCK_TIMEOUT) as dir_fd:
                result, stored = change(_read_object(EVENTS_FILE, dir_fd))
                decided.append(result)
                data = json.dumps(stored, separators=(",", ":"), sort_keys=True)
                files.atomic_write(EVENTS_FILE, data.encode("utf-8"), default_mode=0o600,
                                   dir_fd=dir_fd)
        except Exception as error:  # memory is bookkeeping: never fail a run for it
            logger.warning("Cannot update the events memory %s (%s); events may repeat", path,
                           files.why(error))
        # Without the lock, decide against what can be read: better than a blank memory.
        return decided[0] if decided else change(_read_object(path))[0]


#: A stored member's place in the state file, packed in one int: offset << _SPAN_SHIFT | length.
_SPAN_SHIFT = 32


def _span(offset: int, length: int) -> int:
    """Pack a line's place in a file (where it starts, how long it is) into one int."""
    return offset << _SPAN_SHIFT | length


def _read_span(fd: int, span: int) -> bytes:
    """Given the file open as `fd` and a line's packed place in it, return the line. Raise
    OSError when the file no longer holds the whole of it."""
    offset, length = span >> _SPAN_SHIFT, span & ((1 << _SPAN_SHIFT) - 1)
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise OSError(errno.EIO, "the file is shorter than the line read from it")
    return data


class StoredEntries:
    """The stored account states a refresh starts from, read one at a time, as each account's
    turn comes (`pop`), from the state file kept open by `StateStore.open_entries`.

    Thousands of accounts' entries are never parsed and held at once: only where each one's line
    starts and how long it is (one int per account). The open descriptor keeps reading the file
    that was checked: a save by another process replaces the file (a new inode, `os.replace`)
    and leaves this one as it was. A file edited in place meanwhile (truncated, rewritten by
    hand) can only cost the accounts whose lines changed their stored state, with a warning.
    Entries laid over with `update` (saved by nobody yet) win over the file's. Thread-safe."""

    def __init__(self, handle: Optional[BinaryIO] = None, spans: Optional[Dict[str, int]] = None,
                 parsed: Optional[Dict[Key, AccountState]] = None, path: str = ""):
        self._handle = handle
        self._spans = spans or {}
        self._parsed = parsed or {}
        self._path = path
        self._lock = threading.Lock()

    def update(self, entries: Mapping[Key, AccountState]) -> None:
        """Lay `entries` over the stored ones: pop() returns these for their keys."""
        with self._lock:
            self._parsed.update(entries)

    def pop(self, key: Key) -> Optional[Stored]:
        """Return the stored state of `key` (None: none, or its line no longer reads as its
        entry) and forget it: each account asks once. A line is read and checked now (one JSON
        member, of this account), and given as a StoredEntry: its parts are parsed as the
        account's turn needs them."""
        with self._lock:
            entry = self._parsed.pop(key, None)
            span = self._spans.pop(_key_text(key), None)
            handle = self._handle
        if entry is not None or span is None or handle is None:
            return entry
        try:
            member = _read_span(handle.fileno(), span)
            raw = _parse_member(member)
            if _member_name(member) != _key_text(key):
                raise ValueError("another account's line")
        except (OSError, ValueError, RecursionError):
            logger.warning("Ignoring the stored state of %s: the state file %s changed while it "
                           "was read", _key_text(key), self._path)
            return None
        return _stored_entry(raw)

    def close(self) -> None:
        """Forget every entry and close the file (pop() returns None from now on)."""
        with self._lock:
            handle, self._handle = self._handle, None
            self._spans, self._parsed = {}, {}
        if handle is not None:
            handle.close()


class Spool:
    """A refresh's new entries, written out as each account's result comes in and stored
    together by `StateStore.save_spool` when the refresh ends: thousands of accounts' new
    entries are never held at once, only where each one's line is (one int per account).

    The lines go, in the state file's own form, to an unnamed temporary file in the state
    directory (O_TMPFILE: nothing to clean up, nothing another process can open by name); where
    none can be made (another system, a directory that cannot be created or written), the
    entries are held in memory instead. Thread-safe; close() lets the file go."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._fd: Optional[int] = None
        self._tried = False
        self._closed = False
        self._size = 0
        self._spans: Dict[str, int] = {}
        self._held: Dict[str, AccountState] = {}

    def add(self, key: Key, entry: AccountState) -> None:
        """Given an account's key and new entry, keep the entry (a later one for the same key
        replaces it)."""
        name = _key_text(key)
        member = _member(name, _entry_to_json(entry))
        with self._lock:
            self._spans.pop(name, None)
            self._held.pop(name, None)
            fd = self._file_locked()
            if fd is not None:
                try:
                    _write_at(fd, member, self._size)
                except OSError as error:  # a full disk: hold this one instead
                    logger.debug("Cannot spool state entries (%s); holding them", error)
                else:
                    self._spans[name] = _span(self._size, len(member))
                    self._size += len(member)
                    return
            self._held[name] = entry

    def _file_locked(self) -> Optional[int]:
        """The spool file's descriptor, made by the first entry (None: none can be made)."""
        if self._fd is None and not self._tried and not self._closed:
            self._tried = True
            try:
                os.makedirs(self._directory, mode=0o700, exist_ok=True)
                # Without O_TMPFILE (not Linux) this opens a directory for writing: EISDIR.
                self._fd = os.open(self._directory,
                                   getattr(os, "O_TMPFILE", 0) | os.O_RDWR | os.O_CLOEXEC, 0o600)
            except OSError as error:
                logger.debug("Cannot spool state entries in %s (%s); holding them",
                             self._directory, error)
        return self._fd

    def __len__(self) -> int:
        """How many entries are kept."""
        with self._lock:
            return len(self._spans) + len(self._held)

    def __iter__(self) -> Iterator[Tuple[Key, AccountState]]:
        """Yield (key, state) for every entry kept, read back one at a time (save() takes the
        spool itself: its lines are copied, never parsed again)."""
        for name in sorted(self.names()):
            key = _key(name)
            entry = _entry_from_json(_parse_member(self.member(name)))
            if key is not None and entry is not None:
                yield key, entry

    def names(self) -> AbstractSet[str]:
        """The names (`claude/<file id>`) of the entries kept (once the refresh has ended: no
        copy of them is made when every entry is spooled)."""
        with self._lock:
            return self._spans.keys() | self._held.keys() if self._held else self._spans.keys()

    def member(self, name: str) -> bytes:
        """The state file's line (without its comma) for the entry named `name`. Raise KeyError
        for another name, OSError if the spool cannot be read (or was closed)."""
        with self._lock:
            return self._member_locked(name)

    def _member_locked(self, name: str) -> bytes:
        if name in self._held:
            return _member(name, _entry_to_json(self._held[name]))
        span = self._spans[name]
        if self._fd is None:
            raise OSError(errno.EBADF, "the spool is closed")
        return _read_span(self._fd, span)

    def entries(self, keys: Iterable[Key]) -> Optional[Dict[Key, AccountState]]:
        """Given keys, return the entries kept for those that have one; None once closed (its
        entries are in the state file by then, unless its save failed)."""
        found: Dict[Key, AccountState] = {}
        with self._lock:
            if self._closed:
                return None
            for key in keys:
                name = _key_text(key)
                if name in self._held:
                    found[key] = self._held[name]
                elif name in self._spans:
                    entry = _entry_from_json(_parse_member(self._member_locked(name)))
                    if entry is not None:
                        found[key] = entry
        return found

    def close(self) -> None:
        """Let the entries and the spool file go."""
        with self._lock:
            fd, self._fd, self._closed = self._fd, None, True
            self._spans, self._held = {}, {}
        if fd is not None:
            os.close(fd)


def _write_at(fd: int, data: bytes, offset: int) -> None:
    """Write all of `data` at `offset` of the file open as `fd`. Raise OSError."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _read_object(path: str, dir_fd: Optional[int] = None) -> Dict[str, Any]:
    """Given a state file's path (relative to `dir_fd` when given), return its JSON object; {}
    when it is missing, and (with a warning) when it is a symlink, cannot be read or is not a
    JSON object."""
    try:
        data = files.read_capped(path, MAX_STATE_BYTES, dir_fd, follow=False)
    except FileNotFoundError:
        return {}
    except OSError as error:
        logger.warning("Ignoring the state file %s (%s); it will be rewritten", path,
                       error.strerror or error)
        return {}
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        logger.warning("Ignoring the corrupt state file %s; it will be rewritten", path)
        return {}
    return parsed


# The layout `save` writes: still one JSON object, {"accounts": {name: entry, ...}, "version": 1}
# with sorted keys, but one account per line, so that it is read and written line by line.
_HEAD = b'{"accounts":{\n'
_TAIL = b'},"version":%d}\n' % VERSION
#: The extended attribute a save sets on the state file it writes: the SHA-256 of the file's
#: member lines as written (every line but the first and the last). A reader whose lines hash
#: to it knows the file is the one a save wrote whole, and need not parse every line to find a
#: corrupt one (`StateStore._visit_open`). The file's bytes are what they were without it.
SEAL_ATTRIBUTE = "user.oauth_usage_tracker.lines_sha256"
_PROVIDERS = frozenset(p.value for p in Provider)


#: json.dumps(..., separators=(",", ":"), sort_keys=True), made once: json.dumps builds a new
#: JSONEncoder for every call with arguments of its own. An encoder keeps no state between
#: calls (each encode makes its own C encoder), so the workers share this one.
_COMPACT = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def _member(name: str, raw: Any) -> bytes:
    """One account's line (without its comma): `"name":{...}`, compact, keys sorted."""
    return (json.dumps(name) + ":" + _COMPACT.encode(raw)).encode("utf-8")


def _layout(names: AbstractSet[str], member_of: Callable[[str], bytes],
            kept: Dict[str, bytes], digest: Any) -> Iterator[bytes]:
    """Yield the state file in pieces: the new entries (`names`, each one's line given by
    member_of) and the kept members, by name; each member line is also fed to `digest` (a
    hashlib object: the file's seal)."""
    yield _HEAD
    ordered = sorted(names | kept.keys() if kept else names)
    for position, name in enumerate(ordered):
        member = kept[name] if name in kept else member_of(name)
        line = member + (b",\n" if position + 1 < len(ordered) else b"\n")
        digest.update(line)
        yield line
    yield _TAIL


def _members(handle: BinaryIO, limit: int, wanted: Callable[[str], bool], digest: Any = None
             ) -> Iterator[Tuple[str, bytes, Optional[int]]]:
    """Given the state file open for reading, yield (name, member bytes, offset) for every
    stored account whose name is `wanted`, a line at a time in the layout `save` writes, without
    parsing the entries (only their names); `offset` is where the member starts in the file.
    Every member line (wanted or not) is fed to `digest` when one is given (a hashlib object).
    A file in another layout (an older version's one line, or a file edited by hand) is parsed
    whole, and its members have no offset (None). Raise ValueError or RecursionError if it is
    not a state file, FileTooLarge past `limit` bytes."""
    first = handle.readline(limit + 1)
    if first != _HEAD:
        data = first + handle.read(limit + 1 - len(first))
        _check_size(len(data), limit)
        parsed = json.loads(data)
        if not isinstance(parsed, dict) or not isinstance(parsed.get("accounts"), dict):
            raise ValueError("not a state object")
        for name, raw in parsed["accounts"].items():
            if wanted(name):
                yield name, _member(name, raw), None
        return
    size = len(first)
    while True:
        offset = size
        line = handle.readline(limit + 1 - size)
        size += len(line)
        _check_size(size, limit)
        if line.startswith(b"}"):  # the last line closes the accounts and holds the version
            if not isinstance(json.loads(b'{"accounts":{' + line), dict) or handle.read(1):
                raise ValueError("not a state object")
            return
        if not line.endswith(b"\n") or not line.startswith(b'"'):
            raise ValueError("not a line of the state file")
        if digest is not None:
            digest.update(line)
        member = line[:-2] if line.endswith(b",\n") else line[:-1]
        name = _member_name(member)
        if wanted(name):
            yield name, member, offset


def _member_name(member: bytes) -> str:
    """Given a member's bytes (`"name":{...}`), return its name without parsing the entry.
    Raise ValueError if it does not start with a JSON string and a colon."""
    text = member.decode("utf-8")
    # scanstring is the json module's own string reader; the type stubs leave it out.
    name, end = json.decoder.scanstring(text, 1)  # type: ignore[attr-defined]
    if not text.startswith(":", end):
        raise ValueError("not a line of the state file")
    return str(name)


def _parse_member(member: bytes) -> Any:
    """Given a member's bytes (`"name":{...}`), return its entry as JSON. Raise ValueError or
    RecursionError if it is not one JSON member."""
    parsed = json.loads(b"{" + member + b"}")
    if len(parsed) != 1:
        raise ValueError("not one member")
    return next(iter(parsed.values()))


def _key(name: str) -> Optional[Key]:
    """The key of a stored name (`claude/<file id>`), or None when it names no account."""
    provider, _, file_id = name.partition("/")
    return (sys.intern(provider), file_id) if provider in _PROVIDERS and file_id else None


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise files.FileTooLarge("larger than %d KiB" % (limit // 1024))


def next_state(previous: Optional[Stored], now: datetime,
               windows: Optional[Iterable[UsageWindow]] = None,
               details: Optional[AccountDetails] = None, rate_limited: bool = False,
               retry_after: Optional[float] = None) -> AccountState:
    """Given an account's previous state and the outcome of a fetch, return its new state:
    good windows replace the stored ones and end any cooldown (only the stored readings are
    read then); a 429 starts (or doubles) one; any other failure keeps what was stored."""
    windows = tuple(windows or ())
    if windows:
        readings = previous.readings if previous is not None else {}
        return AccountState(windows=windows, fetched_at=now,
                            details=details or models.AccountDetails(),
                            readings=pace.record(readings, windows, now))
    if isinstance(previous, StoredEntry):
        previous = previous.whole()
    previous = previous or AccountState()
    if rate_limited:
        seconds = cooldown_seconds(retry_after, previous.cooldown_seconds)
        return AccountState(previous.windows, previous.fetched_at,
                            now + timedelta(seconds=seconds), seconds, previous.details,
                            previous.readings)
    return previous


class Plan(enum.Enum):
    """What to do about one account before asking its server, given what is stored."""

    ASK = "ask"
    """Send the request."""
    REUSE = "reuse"
    """Show the stored windows as fresh: they are younger than the max age."""
    COOL_DOWN = "cool_down"
    """Send nothing: a 429 cooldown is running (the stored windows, if any, are shown stale)."""


def plan_fetch(entry: Optional[Stored], now: datetime, max_age: float) -> Plan:
    """Given an account's stored state (None: nothing stored, or no store), now, and the age
    under which a stored result is reused (0: never), return what to do: reuse windows fetched
    less than `max_age` seconds ago, else hold back while a cooldown runs, else ask. Only the
    entry's moments are read, and whether it has windows (a StoredEntry makes none)."""
    if entry is None:
        return Plan.ASK
    if max_age and entry.has_windows and entry.fetched_at is not None \
            and (now - entry.fetched_at).total_seconds() < max_age:
        return Plan.REUSE
    if entry.cooling_down(now):
        return Plan.COOL_DOWN
    return Plan.ASK


def after_failure(previous: Optional[Stored], now: datetime, status: Optional[int],
                  retry_after: Optional[float]) -> AccountState:
    """Given an account's stored state, now, and a failed fetch's HTTP status and Retry-After
    (None when it had none), return the state to store: a 429 starts or doubles a cooldown,
    any other failure keeps what was stored (see next_state)."""
    return next_state(previous, now, rate_limited=status == 429, retry_after=retry_after)


def from_store(account: AuthAccount, entry: Stored, now: datetime, stale: bool,
               error: Optional[str] = None, login_problem: bool = False,
               token_refreshed: bool = False) -> AccountUsage:
    """Given an account and its stored state, return the AccountUsage that shows the stored
    windows as they stand now (`stale` when they stand in for a failed or skipped fetch), each
    with the pace it had when it was read (none for a window that has rolled over since)."""
    windows = entry.windows_at(now)
    if entry.fetched_at is not None:
        windows = pace.attach(windows, entry.fetched_at, entry.readings)
    return entry.details.apply(models.AccountUsage(
        id=account.id, provider=account.provider, email=account.email, windows=windows,
        error=error, updated_at=entry.fetched_at, token_refreshed=token_refreshed,
        stale=stale and bool(entry.windows), fetched_at=entry.fetched_at,
        login_problem=login_problem))


def cooldown_message(entry: Stored) -> str:
    """The sentence for an account whose requests are paused after a 429."""
    until = entry.cooldown_until
    return ("Rate limited (429) earlier; no request for this account until %s (cooldown)"
            % (format_timestamp(until) if until is not None else "now"))
