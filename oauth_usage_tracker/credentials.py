"""The credential store: tolerant reads, and the one place that rewrites a credential file.

Anthropic refresh tokens are single-use and rotate. If two programs send the same refresh token,
the second gets `invalid_grant` and, by reports, the whole token family can be revoked: the user is
logged out of the proxy. So a refresh here is always:

    lock <file>.lock  ->  re-read the file  ->  (changed since we read it? use those tokens)
                      ->  exchange the refresh token  ->  atomic write  ->  unlock

The timeline this prevents, with two of our processes A and B and no lock:

    A reads RT1            B reads RT1
    A sends RT1 -> RT2     B sends RT1 -> invalid_grant (and maybe the family is revoked)
    A writes RT2           B reports "log in again", or worse

With the lock, B waits for A, re-reads the file, sees RT2 and uses A's access token without sending
anything. CLIProxyAPI itself does not lock: the re-read still catches its rotations that landed
before ours, and `invalid_grant` triggers a short re-read poll for the ones that land during ours.
"""
import hashlib
import json
import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Dict, Iterator, Optional, Set

from . import files
from .errors import CredentialError, LockTimeout, TokenRefreshError
from .parsing import format_timestamp, parse_timestamp

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 1024 * 1024
READ_TRIES = 5
READ_PAUSE = 0.1
INVALID_GRANT_WAIT = 2.0
LOCK_SUFFIX = ".lock"
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")


class UnparsedFile(CredentialError):
    """A credential file that does not parse (empty, cut off, not UTF-8, not JSON): it may be
    caught mid-rewrite, so it is worth reading again."""


def read_json_once(path: str) -> Dict[str, Any]:
    """Given a credential file's path, read it once and return its JSON object. Raise
    UnparsedFile when it does not parse, CredentialError with a short reason otherwise."""
    try:
        data = files.read_capped(path, MAX_FILE_BYTES)
    except files.FileTooLarge as error:
        raise CredentialError(str(error), unreadable=True) from None
    except OSError as error:
        raise CredentialError(error.strerror or type(error).__name__, unreadable=True) from None
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


def read_json_object(path: str, tries: int = READ_TRIES,
                     pause: Optional[float] = None) -> Dict[str, Any]:
    """Given a credential file's path, return its JSON object. CLIProxyAPI rewrites files in
    place (truncate, then write), so a file that does not parse is read again, `tries` times
    `pause` apart, before it is reported. Raise CredentialError with a short reason."""
    for attempt in range(tries):
        try:
            return read_json_once(path)
        except UnparsedFile:
            if attempt >= tries - 1:
                raise
        time.sleep(READ_PAUSE if pause is None else pause)
    raise AssertionError("unreachable")  # pragma: no cover


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


@dataclass(frozen=True)
class TokenGrant:
    """What the token endpoint gave back."""

    access_token: str = field(repr=False)
    refresh_token: Optional[str] = field(repr=False, default=None)
    """None means: keep the old refresh token."""
    expires_in: float = 3600.0


@dataclass(frozen=True)
class RefreshResult:
    """The access token to use after a refresh, and whether we rotated it ourselves."""

    access_token: str = field(repr=False)
    rotated: bool
    """True when we exchanged the refresh token and wrote the file; False when another writer
    had already rotated it and we took its tokens."""


# In-flight refreshes: from just before the refresh token is sent until the new tokens are on
# disk. A process must not exit inside this span, or the spent token's successor is lost.
_inflight = 0
_refusing = False
_inflight_changed = threading.Condition()
# Refresh tokens (as hashes) whose exchange got no clear answer (a timeout after sending, a 5xx,
# a garbage body): the server may have spent them, so this process never sends them again.
_unclear: Set[str] = set()


@contextmanager
def _critical_section() -> Iterator[None]:
    global _inflight
    with _inflight_changed:
        if _refusing:
            raise CredentialError("Stopping: no new token refresh is started during shutdown")
        _inflight += 1
    try:
        yield
    finally:
        with _inflight_changed:
            _inflight -= 1
            _inflight_changed.notify_all()


def refuse_new_refreshes(refuse: bool = True) -> None:
    """From now on, refuse to start a token refresh (those in flight finish); the script calls
    this when it is asked to stop. `refuse=False` allows them again."""
    global _refusing
    with _inflight_changed:
        _refusing = refuse


def writes_in_flight() -> int:
    """Return how many token refreshes are between sending and writing back right now."""
    with _inflight_changed:
        return _inflight


def wait_for_writes(timeout: Optional[float] = None) -> bool:
    """Block until no token refresh is between sending and writing back; return False if
    `timeout` seconds passed first."""
    with _inflight_changed:
        return _inflight_changed.wait_for(lambda: _inflight == 0, timeout)


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def refresh_tokens(path: str, seen: Dict[str, Any], exchange: Callable[[str], TokenGrant],
                   now: Callable[[], datetime], lock_timeout: float,
                   invalid_grant_wait: Optional[float] = None) -> RefreshResult:
    """Given a credential file, the object this process read from it earlier, and an `exchange`
    that trades a refresh token for a TokenGrant, return the access token to use.

    Under the file's lock, the file is read again; if its refresh token or expiry changed since
    `seen` was read, those tokens are taken and nothing is sent. Otherwise the refresh token is
    exchanged and the new tokens are written back atomically before anything else happens, every
    other key kept. Raise LockTimeout, CredentialError or TokenRefreshError (the file is then
    left as it was)."""
    import filelock  # only a refresh needs it; keeps start-up light

    # A symlinked credential file is rewritten where it really lives (os.replace on the link
    # would swap the link for a copy), and both names share one lock.
    path = os.path.realpath(path)
    lock = filelock.FileLock(path + LOCK_SUFFIX, timeout=lock_timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LockTimeout("Another process has been refreshing this account's token for over "
                          "%d s; try again later" % lock_timeout) from None
    except OSError as error:
        raise CredentialError("Cannot lock the credential file (%s)" % (error.strerror or error)) \
            from None
    try:
        _share_lock_file(path)
        current = read_json_object(path)
        if _rotated_since(seen, current):
            access = token_field(current, "access_token")
            if access is None:
                raise CredentialError("The credential file has no access_token; log in again "
                                      "with CLIProxyAPI", login_problem=True)
            logger.info("%s: tokens were already refreshed by another writer; using them",
                        _name(path))
            return RefreshResult(access_token=access, rotated=False)
        if current.get("disabled") is True:
            raise CredentialError("The account was disabled meanwhile; its token is not refreshed")
        refresh_token = token_field(current, "refresh_token")
        if refresh_token is None:
            raise CredentialError("The credential file has no refresh_token; log in again with "
                                  "CLIProxyAPI", login_problem=True)
        if _fingerprint(refresh_token) in _unclear:
            raise TokenRefreshError(
                "An earlier refresh of this token got no clear answer, so it is not sent again; "
                "check the account in CLIProxyAPI, or log in again")
        # Make sure the write-back cannot fail on the file's content before the token is spent.
        serialize_like(merge_grant(current, TokenGrant("x", "y"), now()), _read_bytes(path))
        with _critical_section():
            try:
                grant = exchange(refresh_token)
            except TokenRefreshError as error:
                if error.outcome_unknown:
                    _unclear.add(_fingerprint(refresh_token))
                if not error.invalid_grant:
                    raise
                wait = INVALID_GRANT_WAIT if invalid_grant_wait is None else invalid_grant_wait
                adopted = _await_rotation(path, refresh_token, wait)
                if adopted is None:
                    raise
                logger.info("%s: refresh token was rotated by another writer meanwhile; using "
                            "its tokens", _name(path))
                return RefreshResult(access_token=adopted, rotated=False)
            _write_back(path, current, grant, now())
        return RefreshResult(access_token=grant.access_token, rotated=True)
    finally:
        lock.release()


def _share_lock_file(path: str) -> None:
    """When root refreshes another user's file, the lock file it created belongs to that user
    too, so the proxy's own account can still take the lock later."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    try:
        owner = os.stat(path)
        lock_stat = os.stat(path + LOCK_SUFFIX)
        if (lock_stat.st_uid, lock_stat.st_gid) != (owner.st_uid, owner.st_gid):
            os.chown(path + LOCK_SUFFIX, owner.st_uid, owner.st_gid)
    except OSError:
        pass


def _rotated_since(seen: Dict[str, Any], current: Dict[str, Any]) -> bool:
    if current.get("refresh_token") != seen.get("refresh_token"):
        return True
    # Compare moments, not strings: a writer may reformat the same expiry.
    before, after = seen.get("expired"), current.get("expired")
    return before != after and parse_timestamp(before) != parse_timestamp(after)


def _await_rotation(path: str, sent_token: str, wait: float) -> Optional[str]:
    """After invalid_grant: poll the file briefly; return the new access token if someone else
    rotated the refresh token we sent, else None."""
    deadline = time.monotonic() + wait
    while True:
        try:
            current = read_json_object(path)
            access = token_field(current, "access_token")
        except CredentialError:
            current, access = {}, None
        if current.get("refresh_token") not in (None, sent_token) and access is not None:
            return access
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def merge_grant(data: Dict[str, Any], grant: TokenGrant, now: datetime) -> Dict[str, Any]:
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
    that UTF-8 cannot carry (a lone surrogate from a `\\ud800` escape) is written escaped."""
    text = original.decode("utf-8", "replace")
    lines = text.strip().split("\n")
    indent = (len(lines[1]) - len(lines[1].lstrip(" "))) or 2 if len(lines) > 1 else None
    separators = (",", ":") if indent is None else None
    tail = b"\n" if text.endswith("\n") else b""
    try:
        body = json.dumps(data, indent=indent, separators=separators, ensure_ascii=False)
        return body.encode("utf-8") + tail
    except UnicodeEncodeError:
        return json.dumps(data, indent=indent, separators=separators).encode("ascii") + tail


def _read_bytes(path: str) -> bytes:
    try:
        return files.read_capped(path, MAX_FILE_BYTES)
    except OSError:
        return b""


def _write_back(path: str, current: Dict[str, Any], grant: TokenGrant, now: datetime) -> None:
    """Write the grant into the file. The old refresh token is spent: the new one exists only
    here, so every way of keeping it is tried, and nothing may raise past this but a sentence."""
    original = _read_bytes(path)
    try:
        # Merge into the file as it is now, so an edit made during the exchange survives.
        latest = read_json_once(path)
        if latest.get("refresh_token") == current.get("refresh_token"):
            current = latest
    except CredentialError:
        pass
    data = serialize_like(merge_grant(current, grant, now), original)
    try:
        files.atomic_write(path, data, preserve_owner=True)
        return
    except Exception as error:  # anything: the fallback below must still run
        logger.warning("%s: atomic write failed (%s); writing in place so the new tokens are kept",
                       _name(path), getattr(error, "strerror", None) or type(error).__name__)
    # If the directory refuses a temporary file (or the owner cannot be kept) but the file itself
    # is writable, an in-place write keeps the login, the inode and its owner.
    try:
        with open(path, "r+b") as handle:
            handle.write(data)
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise CredentialError(
            "New tokens could not be written back (%s); the old refresh token is spent: log in "
            "again with CLIProxyAPI" % (error.strerror or type(error).__name__)) from None


def _name(path: str) -> str:
    return os.path.basename(path)
