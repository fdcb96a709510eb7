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
import hashlib
import json
import logging
import os
import re
from datetime import datetime, timedelta
from typing import (
    TYPE_CHECKING,
    AbstractSet,
    Any,
    BinaryIO,
    Callable,
    Dict,
    Iterable,
    Mapping,
    Optional,
    Tuple,
    TypeVar,
    Union,
)

from . import files, models, pace
from .authdir import LOCK_SUFFIX, locked_directory
from .models import LOCAL_SOURCE, AuthAccount
from .parsing import format_timestamp
from .state_file import (
    HELD_STATE_BYTES,
    MAX_STATE_BYTES,
    SEAL_ATTRIBUTE,
    STATE_FILE,
    FileSeen,
    Key,
    Spool,
    StoredEntries,
    file_stamp,
    iter_members,
    key_to_name,
    layout_lines,
    member_bytes,
    name_to_key,
    pack_span,
    parse_member,
)
from .state_file import VERSION as VERSION  # state.VERSION, as it was before the split
from .stored import AccountState, Stored, StoredEntry, entry_from_json, entry_to_json

if TYPE_CHECKING:  # made once an answer arrives (usage.py): looked up through models when made
    from .models import AccountDetails, AccountUsage, UsageWindow

logger = logging.getLogger(__name__)

EVENTS_FILE = "events.json"
MIN_COOLDOWN = 60.0
DEFAULT_COOLDOWN = 300.0
MAX_COOLDOWN = 3600.0
LOCK_TIMEOUT = 10.0

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
                    check: bool = False) -> bool:
        """_each_member for the state file open as `handle`, offsets passed on.

        With `check`, every line is also checked to be one JSON member, so that a corrupt line
        makes the whole file corrupt (load() finds it by parsing each). A file whose seal
        (SEAL_ATTRIBUTE) matches its lines is not parsed for that: the save that sealed it wrote
        it whole, of lines it had made or checked. A file without a seal has each line parsed
        as it is read; one whose seal does not match (edited in place) is read again from the
        start, every line parsed (a name that comes twice included)."""
        seal = files.read_attribute(handle.fileno(), SEAL_ATTRIBUTE) if check else None
        digest = hashlib.sha256() if seal is not None else None
        try:
            for name, member, offset in iter_members(handle, MAX_STATE_BYTES, wanted, digest):
                if check and digest is None and offset is not None:
                    parse_member(member)
                visit(name, member, offset)
            if digest is not None and digest.digest() != seal:
                handle.seek(0)
                for _, member, _ in iter_members(handle, MAX_STATE_BYTES, lambda name: True):
                    parse_member(member)
        except OSError as error:
            logger.warning("Ignoring the state file %s (%s); it will be rewritten", self.path,
                           error.strerror or error)
            return False
        except (ValueError, RecursionError):
            logger.warning("Ignoring the corrupt state file %s; it will be rewritten", self.path)
            return False
        return True

    def make_directory(self) -> None:
        """Create the state directory (0700) unless it exists. Raise OSError. One mkdir when the
        directory exists (as os.makedirs ends, without looking at its parent first)."""
        try:
            os.mkdir(self.directory, 0o700)
        except FileNotFoundError:  # a parent is missing too
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError:  # EEXIST, or what a file server may say of one (EACCES, EROFS)
            if not os.path.isdir(self.directory):
                raise

    def load(self) -> Dict[Key, AccountState]:
        """Return every stored account state; a missing, unreadable or corrupt file gives {}
        (with a warning for the last two)."""
        result: Dict[Key, AccountState] = {}

        def visit(name: str, member: bytes) -> None:
            key = name_to_key(name)
            entry = entry_from_json(parse_member(member))
            if entry is not None and key is not None:
                result[key] = entry
        return result if self._each_member(visit) else {}

    def open_entries(self) -> "StoredEntries":
        """Return the stored account states as a StoredEntries, which reads each one when it is
        asked for: what load() gives, without every entry parsed and held at once. The file is
        checked whole now (a missing, unreadable or corrupt file gives no entries, with a
        warning for the last two, as load() does) and stays open until the StoredEntries is
        closed, unless it is small (HELD_STATE_BYTES): its lines are then kept from this read,
        and it is closed at once. A file in an older layout (one line) is parsed now, as load()
        does."""
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
        held: Dict[str, bytes] = {}
        info = os.fstat(handle.fileno())
        small = info.st_size <= HELD_STATE_BYTES

        def visit(name: str, member: bytes, offset: Optional[int]) -> None:
            if offset is not None:  # checked by _visit_open: a corrupt line, a corrupt file
                if small:
                    held[name] = member
                else:
                    spans[name] = pack_span(offset, len(member))
                return
            key, entry = name_to_key(name), entry_from_json(parse_member(member))
            if key is not None and entry is not None:
                parsed[key] = entry
        if not self._visit_open(handle, visit, check=True):
            handle.close()
            return StoredEntries()
        if not spans:
            handle.close()
            seen = FileSeen(file_stamp(info), frozenset(held)) if not parsed else None
            return StoredEntries(parsed=parsed, path=self.path, held=held, seen=seen)
        return StoredEntries(handle, spans, parsed, self.path)

    def save(self, changes: Union[Iterable[Tuple[Key, AccountState]], "Spool"],
             seen: Optional[FileSeen] = None) -> None:
        """Given (key, state) pairs, or a Spool of them, store them: under the lock, re-read the
        file, replace those entries, write atomically. Other processes' entries are kept.
        Failures are logged, never raised: state is an optimisation, not a reason to fail a run.

        The file is read and written one account at a time: only the entries this save does
        not replace are held (and parsed, to check them), as the bytes they were stored as; a
        spool's lines are copied into the new file one at a time (from its memory, or from its
        file read in blocks), never all held.

        `seen`, the file as the refresh's StoredEntries read it: when the file under the lock is
        still that file, unchanged (its stamp), and this save replaces every name it held, none
        of it is kept, and it is not read again."""
        if isinstance(changes, Spool):
            names = changes.names()
            if names:
                self._write(names, changes.member, seen)
            return
        changed = {key_to_name(key): entry for key, entry in changes}
        if changed:
            self._write(changed.keys(),
                        lambda name: member_bytes(name, entry_to_json(changed[name])), seen)

    def _write(self, names: AbstractSet[str], member_of: Callable[[str], bytes],
               seen: Optional[FileSeen] = None) -> None:
        """save() of the entries `names`, each one's line given by member_of(name)."""
        try:
            self.make_directory()
            with locked_directory(self.directory, STATE_FILE + LOCK_SUFFIX,
                                  LOCK_TIMEOUT) as dir_fd:
                kept: Dict[str, bytes] = {}

                # Only the lines kept are parsed, to check them: hashing every line to match
                # the seal would cost more whenever this save replaces most of them.
                def visit(name: str, member: bytes) -> None:
                    parse_member(member)
                    kept[name] = member
                if not _replaces_all(seen, names, dir_fd) and \
                        not self._each_member(visit, lambda name: name not in names, dir_fd):
                    kept.clear()
                digest = hashlib.sha256()
                files.atomic_write(STATE_FILE, layout_lines(names, member_of, kept, digest),
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


def _replaces_all(seen: Optional[FileSeen], names: AbstractSet[str], dir_fd: int) -> bool:
    """Given the file as a reader saw it, the names a save writes and the state directory's
    descriptor (its lock held), return True when the state file there is still the one seen,
    unchanged, and every name it held is among `names`: nothing of it would be kept."""
    if seen is None or not all(name in names for name in seen.names):
        return False
    try:
        info = os.stat(STATE_FILE, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return file_stamp(info) == seen.stamp


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
