"""The credential store, read side: tolerant reads of CLIProxyAPI's credential files, and the
pure merge of new tokens into a file's content.

CLIProxyAPI rewrites a file in place (truncate, then write), so a read may catch it empty or cut
off; such a read is tried again before it is reported. Rewriting a file (the token refresh) is
`refresh.py`'s alone.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import threading
import time
from datetime import datetime, timedelta
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Hashable,
    Iterable,
    Iterator,
    Optional,
    Tuple,
    TypeVar,
    Union,
)

from . import files
from .authdir import NOT_REGULAR, AuthDirectory, DirectoryId, UnsafeFile
from .errors import CredentialError
from .parsing import format_timestamp

if TYPE_CHECKING:  # made by a token refresh only: see __getattr__
    from .grant import TokenGrant

MAX_FILE_BYTES = 1024 * 1024
#: A file that does not parse is read this many times in all, READ_PAUSE seconds apart (the one
#: pause every torn-file re-read uses; tests patch it here).
READ_TRIES = 5
READ_PAUSE = 0.1
#: The most auth directories one thread holds open inside `directories_held` (a run has one or
#: a few; past this many the first one opened is closed).
HELD_DIRECTORIES = 4
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")
_held = threading.local()  # .directories: this thread's, inside directories_held (else None)


class UnparsedFile(CredentialError):
    """A credential file that does not parse (empty, cut off, not UTF-8, not JSON): it may be
    caught mid-rewrite, so it is worth reading again."""


def read_capped(path: str, limit: int, directory: Optional[DirectoryId] = None) -> bytes:
    """Given a credential file's path, as discovery found it, a byte limit and the identity
    discovery recorded for its directory (None: not checked), return the file's bytes. The
    directory at that path may have been replaced since (DirectoryReplaced), and the name
    swapped (for a symlink out of the directory, a FIFO, a device), so it is resolved again
    through its directory: a symlink only to a regular file inside it, nothing opened through a
    symlink, only a regular file read. Inside `directories_held`, the directory is the one this
    thread holds open (see there). Raise files.FileTooLarge over `limit` bytes,
    CredentialError or OSError otherwise."""
    if os.open not in os.supports_dir_fd:  # pragma: no cover - not POSIX
        return files.read_capped(path, limit)
    parent, name = os.path.split(os.path.abspath(path))
    held: Optional[Dict[Tuple[str, Optional[DirectoryId]], AuthDirectory]]
    held = getattr(_held, "directories", None)
    if held is None:
        with AuthDirectory(parent, directory, "reading the credential file") as auth:
            return read_in(auth, name, limit)
    key = (parent, None if directory is None else tuple(directory))
    auth = held.get(key)
    if auth is None:
        auth = AuthDirectory(parent, directory, "reading the credential file")
        if len(held) >= HELD_DIRECTORIES:
            held.pop(next(iter(held))).close()
        held[key] = auth
    try:
        return read_in(auth, name, limit)
    except CredentialError:
        # The name is gone, swapped, or the directory with it: let the held one go, and say
        # what a read of its own says (the directory replaced, or gone, or the file's fault).
        held.pop(key).close()
    with AuthDirectory(parent, directory, "reading the credential file") as again:
        return read_in(again, name, limit)


@contextlib.contextmanager
def directories_held() -> Iterator[None]:
    """For the body, on this thread: the auth directory each credential read opens (checked
    against the identity discovery recorded, as a read of its own checks it) stays open, and
    the next reads of files in it go through that descriptor; all are closed at the end. A
    worker that reads hundreds of files of one directory opens it once, not once per file:
    three system calls fewer per account, each a moment the interpreter lock could go to another
    thread.

    The descriptor pins the directory that was checked when it was opened: a directory put at
    the path later is never read through it, and the files of the one checked are read on
    (before, each read checked the path again, and refused a replaced directory from then on).
    A read that fails through a held directory (a name gone or swapped, the directory removed)
    lets it go and is made again as a read of its own makes it, which checks the path: the
    sentence is the one it always was (a replaced directory, one that cannot be opened, the
    file's own fault). Nested scopes share the outer one's directories."""
    if getattr(_held, "directories", None) is not None:
        yield
        return
    _held.directories = {}
    try:
        yield
    finally:
        held, _held.directories = _held.directories, None
        for auth in held.values():
            auth.close()


def read_in(auth: AuthDirectory, name: str, limit: int) -> bytes:
    """Given an open auth directory, a name in it and a byte limit, return the regular file's
    bytes (see read_capped). `auth` itself never moves: a symlink (whose target may be in a
    sub-directory) is followed on a handle of its own, so that one handle can serve many
    reads, on several threads."""
    mode = auth.lstat(name).st_mode
    if stat.S_ISLNK(mode):
        with auth.again() as own:
            return _read_regular(own, own.resolve(name), limit)
    if not stat.S_ISREG(mode):
        raise UnsafeFile(NOT_REGULAR)
    return _read_regular(auth, name, limit)


def _read_regular(auth: AuthDirectory, name: str, limit: int) -> bytes:
    fd, info = auth.open_regular(name, single_link=False)
    try:
        data = auth.read(fd, limit, info.st_size)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise files.FileTooLarge("larger than %d KiB" % (limit // 1024))
    return data


def read_json_once(path: str, directory: Optional[DirectoryId] = None,
                   auth: Optional[AuthDirectory] = None) -> Dict[str, Any]:
    """Given a credential file's path and its directory's identity (see read_capped), or an
    open directory `auth` to read the path's name in, read it once and return its JSON object.
    Raise UnparsedFile when it does not parse, CredentialError with a short reason otherwise."""
    try:
        if auth is None:
            data = read_capped(path, MAX_FILE_BYTES, directory)
        else:
            data = read_in(auth, os.path.basename(path), MAX_FILE_BYTES)
    except files.FileTooLarge as error:
        raise CredentialError(str(error), unreadable=True) from None
    except OSError as error:
        raise CredentialError(error.strerror or type(error).__name__, unreadable=True) from None
    return parse_json(data)


def parse_json(data: bytes) -> Dict[str, Any]:
    """Given a credential file's bytes, return its JSON object. Raise UnparsedFile when they do
    not parse (perhaps caught mid-rewrite), CredentialError with a short reason otherwise."""
    if not data.strip():
        raise UnparsedFile("file is empty", unreadable=True)
    try:
        parsed = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise UnparsedFile("not UTF-8 text", unreadable=True) from None
    except RecursionError:
        raise CredentialError("JSON nested too deeply", unreadable=True) from None
    except ValueError:
        raise UnparsedFile("not valid JSON", unreadable=True) from None
    if not isinstance(parsed, dict):
        raise CredentialError("not a JSON object", unreadable=True)
    return parsed


def read_in_rounds(keys: Iterable[K], read: Callable[[K], V], tries: int = READ_TRIES,
                   pause: Optional[float] = None) -> Dict[K, Union[V, UnparsedFile]]:
    """Given keys and read(key), return each key's value. CLIProxyAPI rewrites files in place
    (truncate, then write), so the reads that raise UnparsedFile are made again together, in up
    to `tries` rounds `pause` (default READ_PAUSE) apart: many torn files cost one pause, not
    one each. A key still unparsed after the last round maps to its UnparsedFile; any other
    exception propagates."""
    results: Dict[K, Union[V, UnparsedFile]] = {}
    pending = list(keys)
    for attempt in range(tries):
        if attempt:
            time.sleep(READ_PAUSE if pause is None else pause)
        retry = []
        for key in pending:
            try:
                results[key] = read(key)
            except UnparsedFile as error:
                results[key] = error
                retry.append(key)
        pending = retry
        if not pending:
            break
    return results


def read_json_object(path: str, tries: int = READ_TRIES, pause: Optional[float] = None,
                     directory: Optional[DirectoryId] = None) -> Dict[str, Any]:
    """Given a credential file's path (and its directory's identity, see read_capped), return
    its JSON object, read again while it does not parse (see read_in_rounds). Raise
    CredentialError with a short reason."""
    result = read_in_rounds([path], lambda name: read_json_once(name, directory), tries,
                            pause)[path]
    if isinstance(result, UnparsedFile):
        raise result
    return result


def token_field(data: Dict[str, Any], name: str) -> Optional[str]:
    """Given a credential object, return the named token when it is a non-empty string, or None.
    Raise CredentialError when it holds characters no token has (they could not be sent in a
    header, and the error would quote them)."""
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        return None
    if not _TOKEN_RE.fullmatch(value):
        raise CredentialError("The credential file's %s holds characters a token cannot have; "
                              "log in again with CLIProxyAPI" % name)
    return value


def __getattr__(name: str) -> Any:
    """`credentials.TokenGrant`, imported from grant.py on first use: most runs refresh no
    token, and each dataclass costs about a millisecond to create."""
    if name == "TokenGrant":
        from .grant import TokenGrant
        return TokenGrant
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def merge_grant(data: Dict[str, Any], grant: "TokenGrant", now: datetime) -> Dict[str, Any]:
    """Given the credential object, a grant and now, return the object with the new tokens,
    `expired` and `last_refresh` set; every other key keeps its value, type and place."""
    merged = dict(data)
    merged["access_token"] = grant.access_token
    merged["refresh_token"] = grant.refresh_token or data.get("refresh_token")
    merged["expired"] = format_timestamp(now + timedelta(seconds=grant.expires_in))
    merged["last_refresh"] = format_timestamp(now)
    return merged


def serialize_like(data: Dict[str, Any], original: bytes) -> bytes:
    """Given an object and the file's previous bytes, return JSON in the same style: compact as
    CLIProxyAPI writes it, or indented as other tools do, with the trailing newline kept. Text
    that UTF-8 cannot carry (a lone surrogate from a `\\ud800` escape) is written escaped.
    Raise ValueError for a number JSON cannot carry (`1e400` reads as infinity, and `NaN`):
    written back as `Infinity` or `NaN`, the file would no longer parse for a strict reader."""
    text = original.decode("utf-8", "replace")
    lines = text.strip().split("\n")
    indent = (len(lines[1]) - len(lines[1].lstrip(" "))) or 2 if len(lines) > 1 else None
    separators = (",", ":") if indent is None else None
    tail = b"\n" if text.endswith("\n") else b""
    try:
        body = json.dumps(data, indent=indent, separators=separators, ensure_ascii=False,
                          allow_nan=False)
        return body.encode("utf-8") + tail
    except UnicodeEncodeError:
        return json.dumps(data, indent=indent, separators=separators,
                          allow_nan=False).encode("ascii") + tail
