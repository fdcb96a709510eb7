"""The state file's layout and the readers and writers that keep it off the heap: one JSON
object (`{"accounts": {...}, "version": 1}`, what older versions read) with one account per
line, read by offset (`StoredEntries`: one int per account until its turn; a small file's
lines kept from the read at open), new entries kept as they come (`Spool`: in memory up to a
bound, then in an unnamed file), written back in pieces with a seal that spares the next reader
a check of every line. No policy: state.py decides what to keep."""
from __future__ import annotations

import errno
import json
import logging
import os
import sys
import threading
from typing import (
    TYPE_CHECKING,
    AbstractSet,
    Any,
    BinaryIO,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Tuple,
    Union,
)

from . import files
from .models import Provider
from .stored import (
    AccountState,
    Stored,
    entry_from_json,
    entry_to_json,
    stored_entry,
)

if TYPE_CHECKING:  # imported by the first buffer (see SPOOL_FIRST_LINES)
    import mmap

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
VERSION = 1
MAX_STATE_BYTES = 16 * 1024 * 1024
#: A state file up to this size keeps its lines from the read at open (StoredEntries), instead of
#: where each one is: they were in memory then anyway, and an account's turn then reads no file
#: (a system call per account, in the worker, is a moment the interpreter lock can go to another
#: thread). About 400 accounts; a larger file is read line by line as its accounts come.
HELD_STATE_BYTES = 512 * 1024

Key = Tuple[str, str]  # (provider value, credential file id)


def key_to_name(key: Key) -> str:
    """Given a store key, return its name in the file: `<provider>/<file id>`."""
    return "%s/%s" % key


#: A stored member's place in the state file, packed in one int: offset << _SPAN_SHIFT | length.
_SPAN_SHIFT = 32
_SPAN_MASK = (1 << _SPAN_SHIFT) - 1


def pack_span(offset: int, length: int) -> int:
    """Pack a line's place in a file (where it starts, how long it is) into one int."""
    return offset << _SPAN_SHIFT | length


def read_packed(fd: int, span: int) -> bytes:
    """Given the file open as `fd` and a line's packed place in it, return the line. Raise
    OSError when the file no longer holds the whole of it."""
    offset, length = span >> _SPAN_SHIFT, span & _SPAN_MASK
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise OSError(errno.EIO, "the file is shorter than the line read from it")
    return data


def file_stamp(info: os.stat_result) -> Tuple[int, int, int, int, int]:
    """A file's identity and the moments it last changed, from its stat: equal stamps, the same
    file unchanged (a save replaces the file, a new inode; an edit in place changes its size
    or its modification and change times)."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class FileSeen:
    """The state file as StoredEntries read it: its stamp (file_stamp) and every name it held.
    A save that replaces all those names in that same file, unchanged, keeps nothing of it, so
    it need not read it again (StateStore.save)."""

    __slots__ = ("stamp", "names")

    def __init__(self, stamp: Tuple[int, int, int, int, int], names: FrozenSet[str]) -> None:
        self.stamp = stamp
        self.names = names


class StoredEntries:
    """The stored account states a refresh starts from, read one at a time, as each account's
    turn comes (`pop`), from the state file kept open by `StateStore.open_entries`, or from the
    lines of a small one (HELD_STATE_BYTES) kept from the read at open.

    Thousands of accounts' entries are never parsed and held at once: only where each one's line
    starts and how long it is (one int per account). The open descriptor keeps reading the file
    that was checked: a save by another process replaces the file (a new inode, `os.replace`)
    and leaves this one as it was. A file edited in place meanwhile (truncated, rewritten by
    hand) can only cost the accounts whose lines changed their stored state, with a warning (a
    small file's lines are the ones checked at open: an edit afterwards changes nothing).
    Entries laid over with `update` (saved by nobody yet) win over the file's. Thread-safe."""

    def __init__(self, handle: Optional[BinaryIO] = None, spans: Optional[Dict[str, int]] = None,
                 parsed: Optional[Dict[Key, AccountState]] = None, path: str = "",
                 held: Optional[Dict[str, bytes]] = None, seen: Optional[FileSeen] = None):
        #: The file as it was read (None: not known; a larger file's names are not kept).
        self.seen = seen
        self._handle = handle
        self._spans = spans or {}
        self._parsed = parsed or {}
        #: Lines kept as they were read at open (a small file's: see HELD_STATE_BYTES), by name.
        self._held = held or {}
        self._path = path
        self._lock = threading.Lock()

    def update(self, entries: Mapping[Key, AccountState]) -> None:
        """Lay `entries` over the stored ones: pop() returns these for their keys."""
        with self._lock:
            self._parsed.update(entries)

    def pop(self, key: Key) -> Optional[Stored]:
        """Return the stored state of `key` (None: none, or its line no longer reads as its
        entry) and forget it: each account asks once. A line is read (unless it was kept from
        the open) and checked now (one JSON member, of this account), and given as a
        StoredEntry: its parts are parsed as the account's turn needs them."""
        name = key_to_name(key)
        with self._lock:
            entry = self._parsed.pop(key, None)
            member = self._held.pop(name, None)
            span = self._spans.pop(name, None)
            handle = self._handle
        if entry is not None:
            return entry
        try:
            if member is None:
                if span is None or handle is None:
                    return None
                member = read_packed(handle.fileno(), span)
            raw = parse_member(member)
            if _member_name(member) != name:
                raise ValueError("another account's line")
        except (OSError, ValueError, RecursionError):
            logger.warning("Ignoring the stored state of %s: the state file %s changed while it "
                           "was read", name, self._path)
            return None
        return stored_entry(raw)

    def close(self) -> None:
        """Forget every entry and close the file (pop() returns None from now on)."""
        with self._lock:
            handle, self._handle = self._handle, None
            self._spans, self._parsed, self._held = {}, {}, {}
        if handle is not None:
            handle.close()


#: A spool keeps its lines in a buffer of this many bytes, and makes its file only once the
#: buffer is full: a 200-account refresh (about 230 KB of new entries, 1.15 KB each) then makes
#: no system call for its state until the save, which copies the lines from the buffer (issue
#: 19: each system call lets another of the 32 workers take the interpreter lock). Past it, each
#: full buffer goes to the file in one write. A quarter MiB, because the buffer adds to the
#: run's peak memory (the target is 36 MiB at 1,000 accounts), and the same at 10,000 accounts:
#: the memory stays flat in the number of accounts.
SPOOL_MEMORY = 256 * 1024
#: The file is read back in blocks of this many bytes, the last SPOOL_BLOCKS of them kept. The
#: save asks for the lines by name, and they were written nearly in that order (the workers take
#: the accounts in the order they were found, one provider after the other, and finish a few
#: dozen apart at most), so two blocks serve nearly every line: 18 reads for the 1.07 MB of a
#: 1,000-account refresh, 201 for 10,000 accounts (177 with four blocks, 128 KiB more).
SPOOL_BLOCK = 64 * 1024
SPOOL_BLOCKS = 2
#: A spool's first lines are held as they are, without a buffer: a refresh of a few accounts (a
#: shell prompt's, a status line's) never maps one, nor imports mmap for it (a shared library
#: loaded, about a third of a millisecond of a one-account run's start-up).
SPOOL_FIRST_LINES = 8


class Spool:
    """A refresh's new entries, kept as each account's result comes in and stored together by
    `StateStore.save` when the refresh ends: thousands of accounts' new entries are never held
    at once, only where each one's line is (one int per account).

    The lines, in the state file's own form, go to a buffer of SPOOL_MEMORY bytes; each time it
    is full, it is written in one piece to an unnamed temporary file in the state directory
    (O_TMPFILE: nothing to clean up, nothing another process can open by name), made by the
    first such write, and lines are read back from it in blocks of SPOOL_BLOCK bytes. Where no
    such file can be made (another system, a directory that cannot be created or written) or a
    write fails (a full disk), those lines are held in memory instead. Thread-safe; close()
    lets the lines, the buffer and the file go.

    The first SPOOL_FIRST_LINES lines are held as bytes objects, without a buffer.

    The buffer is an anonymous memory map, not a bytes object or a list of them: its pages are
    taken as lines fill them and given back to the system by close(), whichever thread made or
    filled them. Lines kept as bytes objects until a write, made by 32 workers in the malloc
    arenas of their threads (which keep what is freed), added about 0.5 MiB to the peak RSS of a
    1,000-account run for 64 KiB of lines; joining them for the write, another 1 MiB."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._fd: Optional[int] = None
        self._tried = False
        self._closed = False
        #: The bytes written to the file (where the buffer's bytes go next).
        self._size = 0
        #: Every entry's line by name: its place (pack_span) in the file and the buffer, one
        #: after the other (the buffer's first byte is the file's byte `_size`), else its bytes
        #: (held: one of the first lines, its write failed, or no file can be made).
        self._members: Dict[str, Union[int, bytes]] = {}
        #: The buffer (made by the first line), how many of its bytes are lines, and the names
        #: whose lines went to it since it was last written (some replaced since, perhaps).
        self._buffer: Optional["mmap.mmap"] = None
        self._used = 0
        self._buffered: List[str] = []
        #: The blocks of the file read last, oldest first: (offset, bytes).
        self._blocks: List[Tuple[int, bytes]] = []

    def add(self, key: Key, entry: AccountState) -> None:
        """Given an account's key and new entry, keep the entry (a later one for the same key
        replaces it)."""
        name = key_to_name(key)
        member = member_bytes(name, entry_to_json(entry))
        with self._lock:
            if self._closed or (self._buffer is None and self._fd is None
                                and len(self._members) < SPOOL_FIRST_LINES):
                # No buffer, no file any more (closed): held, as a line no file could take; or
                # one of the first lines: held as it is.
                self._members[name] = member
                return
            if self._used + len(member) > SPOOL_MEMORY:
                self._flush_locked()
            if len(member) > SPOOL_MEMORY:  # larger than the buffer: written on its own
                self._members[name] = pack_span(self._size, len(member))
                self._write_locked([name], member)
                return
            buffer = self._buffer if self._buffer is not None else self._make_buffer_locked()
            if buffer is None:
                self._members[name] = member  # no buffer to be had: held as it is
                return
            # Its place only once the buffer holds it: a line whose place was recorded first
            # would name whatever line went there next.
            buffer[self._used:self._used + len(member)] = member
            self._members[name] = pack_span(self._size + self._used, len(member))
            self._used += len(member)
            self._buffered.append(name)

    def _make_buffer_locked(self) -> Optional["mmap.mmap"]:
        """Make the buffer (an anonymous memory map) and return it; None when none can be made
        (no memory, an address-space limit, too many maps): the lines are then held."""
        import mmap  # the first buffer: see SPOOL_FIRST_LINES
        try:
            self._buffer = mmap.mmap(-1, SPOOL_MEMORY, flags=mmap.MAP_PRIVATE)
        except OSError as error:
            logger.debug("Cannot map a buffer for state entries (%s); holding them", error)
        return self._buffer

    def _flush_locked(self) -> None:
        """Write the buffer's lines to the file (or hold them), and empty the buffer."""
        if self._buffer is None or not self._used:
            return
        names, self._buffered = self._buffered, []
        with memoryview(self._buffer) as whole, whole[:self._used] as lines:
            self._write_locked(names, lines)
        self._used = 0

    def _write_locked(self, names: List[str], lines: Union[bytes, memoryview]) -> None:
        """Write `lines` (the lines of `names`, from the file's byte `_size` on) to the file.
        When the write fails (a full disk) or no file can be made, hold those lines instead."""
        fd = self._file_locked()
        if fd is not None:
            try:
                _write_at(fd, lines, self._size)
            except OSError as error:  # a full disk: hold these lines instead
                logger.debug("Cannot spool state entries (%s); holding them", error)
            else:
                self._size += len(lines)
                return
        for name in names:
            where = self._members.get(name)
            if isinstance(where, int) and where >> _SPAN_SHIFT >= self._size:  # not replaced
                start = (where >> _SPAN_SHIFT) - self._size
                self._members[name] = bytes(lines[start:start + (where & _SPAN_MASK)])

    def _file_locked(self) -> Optional[int]:
        """The spool file's descriptor, made by the first write (None: none can be made)."""
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
            return len(self._members)

    def __iter__(self) -> Iterator[Tuple[Key, AccountState]]:
        """Yield (key, state) for every entry kept, read back one at a time (save() takes the
        spool itself: its lines are copied, never parsed again)."""
        for name in sorted(self.names()):
            key = name_to_key(name)
            entry = entry_from_json(parse_member(self.member(name)))
            if key is not None and entry is not None:
                yield key, entry

    def names(self) -> AbstractSet[str]:
        """The names (`claude/<file id>`) of the entries kept (once the refresh has ended: this
        is no copy)."""
        with self._lock:
            return self._members.keys()

    def member(self, name: str) -> bytes:
        """The state file's line (without its comma) for the entry named `name`. Raise KeyError
        for a name it does not keep (any name, once closed), OSError if its file cannot be
        read."""
        with self._lock:
            return self._member_locked(name)

    def _member_locked(self, name: str) -> bytes:
        where = self._members[name]
        if isinstance(where, bytes):
            return where
        offset, length = where >> _SPAN_SHIFT, where & _SPAN_MASK
        if offset >= self._size:  # in the buffer
            if self._buffer is None:
                raise OSError(errno.EBADF, "the spool is closed")
            return self._buffer[offset - self._size:offset - self._size + length]
        for start, block in reversed(self._blocks):  # the save's usual case, kept short
            if start <= offset and offset + length <= start + len(block):
                return block[offset - start:offset + length - start]
        return self._read_locked(offset, length)

    def _read_locked(self, offset: int, length: int) -> bytes:
        """The `length` bytes of the file at `offset`, from the blocks that hold them."""
        parts = []
        at, end = offset, offset + length
        while at < end:  # a line may run on into the next block
            start = at - at % SPOOL_BLOCK
            block = self._block_locked(start, at)
            if start + len(block) <= at:
                raise OSError(errno.EIO, "the file is shorter than the line read from it")
            parts.append(block[at - start:end - start])
            at = start + len(block)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _block_locked(self, start: int, at: int) -> bytes:
        """The block of the file that starts at `start` (a multiple of SPOOL_BLOCK), holding
        `at` unless the file is shorter: one kept, else read and kept. A block is never read
        past the bytes written, and the file is only ever appended to, so what a block holds
        stays true."""
        for kept_start, block in reversed(self._blocks):
            if kept_start == start and at < start + len(block):
                return block
        if self._fd is None:
            raise OSError(errno.EBADF, "the spool is closed")
        block = os.pread(self._fd, min(SPOOL_BLOCK, self._size - start), start)
        self._blocks.append((start, block))
        del self._blocks[:-SPOOL_BLOCKS]
        return block

    def entries(self, keys: Iterable[Key]) -> Optional[Dict[Key, AccountState]]:
        """Given keys, return the entries kept for those that have one; None once closed (its
        entries are in the state file by then, unless its save failed)."""
        found: Dict[Key, AccountState] = {}
        with self._lock:
            if self._closed:
                return None
            for key in keys:
                name = key_to_name(key)
                if name in self._members:
                    entry = entry_from_json(parse_member(self._member_locked(name)))
                    if entry is not None:
                        found[key] = entry
        return found

    def close(self) -> None:
        """Let the entries and the spool file go."""
        with self._lock:
            fd, self._fd, self._closed = self._fd, None, True
            buffer, self._buffer, self._used, self._buffered = self._buffer, None, 0, []
            self._members, self._blocks = {}, []
        if buffer is not None:
            buffer.close()
        if fd is not None:
            os.close(fd)


def _write_at(fd: int, data: Union[bytes, memoryview], offset: int) -> None:
    """Write all of `data` at `offset` of the file open as `fd`. Raise OSError. Every view
    made of `data` is released, even when a write fails (a view left to the failure's traceback
    would keep a spool's buffer from being closed)."""
    with memoryview(data) as view:
        written = 0
        while written < len(view):
            with view[written:] as rest:
                written += os.pwrite(fd, rest, offset + written)


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


def member_bytes(name: str, raw: Any) -> bytes:
    """One account's line (without its comma): `"name":{...}`, compact, keys sorted."""
    return (json.dumps(name) + ":" + _COMPACT.encode(raw)).encode("utf-8")


def layout_lines(names: AbstractSet[str], member_of: Callable[[str], bytes],
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


def iter_members(handle: BinaryIO, limit: int, wanted: Callable[[str], bool],
                 digest: Any = None) -> Iterator[Tuple[str, bytes, Optional[int]]]:
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
                yield name, member_bytes(name, raw), None
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


def parse_member(member: bytes) -> Any:
    """Given a member's bytes (`"name":{...}`), return its entry as JSON. Raise ValueError or
    RecursionError if it is not one JSON member."""
    parsed = json.loads(b"{" + member + b"}")
    if len(parsed) != 1:
        raise ValueError("not one member")
    return next(iter(parsed.values()))


def name_to_key(name: str) -> Optional[Key]:
    """The key of a stored name (`claude/<file id>`), or None when it names no account."""
    provider, _, file_id = name.partition("/")
    return (sys.intern(provider), file_id) if provider in _PROVIDERS and file_id else None


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise files.FileTooLarge("larger than %d KiB" % (limit // 1024))
