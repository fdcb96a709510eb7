"""The token refresh: the one place that rewrites a credential file.

Anthropic refresh tokens are single-use and rotate. If two programs send the same refresh token,
the second gets `invalid_grant` and, by reports, the whole token family can be revoked: the user is
logged out of the proxy. So a refresh here is always:

    lock <file>.lock -> re-read the file -> (changed since we read it? use those tokens)
                     -> check the write-back can succeed -> exchange the refresh token
                     -> atomic write -> unlock

The timeline the lock prevents, with two of our processes A and B and no lock:

    A reads RT1            B reads RT1
    A sends RT1 -> RT2     B sends RT1 -> invalid_grant (and maybe the family is revoked)
    A writes RT2           B reports "log in again", or worse

With the lock, B waits for A, re-reads the file, sees RT2 and uses A's access token without sending
anything. CLIProxyAPI itself does not lock: the re-read still catches its rotations that landed
before ours, and `invalid_grant` triggers a short re-read poll for the ones that land during ours.

The check before sending closes this timeline (a full disk, a file root may not rewrite):

    send RT1 -> RT2 (RT1 is now spent)    write RT2 -> ENOSPC    the login is gone
So the temporary file is created, given its owner and mode, and filled to the expected size and
fsynced *before* RT1 is sent; afterwards only an overwrite of blocks already allocated and a rename
remain. If even those fail, they are retried, and the new tokens are then kept in a 0600 recovery
file beside the credential file (never a `*.json` name, which CLIProxyAPI would load). A
credential file is never written in place, so it is never left cut off. Every file operation goes
through `authdir.AuthDirectory` (descriptor-relative, no symlink followed).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Dict, Iterator, NoReturn, Optional, Set, Tuple

from .authdir import AuthDirectory, DirectoryId, write_all
from .credentials import (
    MAX_FILE_BYTES,
    UnparsedFile,
    merge_grant,
    parse_json,
    read_in_rounds,
    serialize_like,
    token_field,
)
from .errors import CredentialError, TokenRefreshError
from .grant import TokenGrant
from .parsing import parse_timestamp

logger = logging.getLogger(__name__)

INVALID_GRANT_WAIT = 2.0
WRITE_TRIES = 3
WRITE_PAUSE = 0.2
ROOM_MARGIN = 4096
_SAMPLE_GRANT = TokenGrant("a" * 1024, "r" * 1024)


@dataclass(frozen=True)
class RefreshResult:
    """The access token to use after a refresh, and whether we rotated it ourselves."""

    access_token: str = field(repr=False)
    rotated: bool
    """True when we exchanged the refresh token and wrote the file; False when another writer
    had already rotated it and we took its tokens."""


class RefreshGuard:
    """The process-wide bookkeeping of token refreshes.

    Lifecycle: a process starts *open*: refreshes may start, and each one counts as *in flight*
    from just before its refresh token is sent until the new tokens are on disk (a process must
    not exit inside that span, or the spent token's successor is lost). On shutdown the script
    calls `refuse_new()` (*closing*: no new refresh starts, those in flight finish) and
    `wait_idle()`. Refresh tokens whose exchange got no clear answer (a timeout after sending, a
    5xx, a garbage body) are remembered as hashes for the life of the process and never sent
    again: the server may have spent them. `reset()` returns to a fresh process's state (for
    tests). A child made by fork() starts with nothing in flight and keeps the unclear tokens."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._in_flight = 0
        self._refusing = False
        self._unclear: Set[str] = set()

    @contextmanager
    def critical(self) -> Iterator[None]:
        """Count the body as a refresh in flight; raise CredentialError when closing."""
        with self._changed:
            if self._refusing:
                raise CredentialError("Stopping: no new token refresh is started during shutdown")
            self._in_flight += 1
        try:
            yield
        finally:
            with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()

    def refuse_new(self, refuse: bool = True) -> None:
        """From now on refuse to start a refresh (those in flight finish); False allows again."""
        with self._changed:
            self._refusing = refuse

    def in_flight(self) -> int:
        """Return how many refreshes are between sending and writing back right now."""
        with self._changed:
            return self._in_flight

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Block until no refresh is in flight; return False if `timeout` seconds passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: self._in_flight == 0, timeout)

    def mark_unclear(self, token: str) -> None:
        """Remember that this refresh token's exchange had an unknown outcome."""
        with self._changed:
            self._unclear.add(_fingerprint(token))

    def is_unclear(self, token: str) -> bool:
        """Return True when this refresh token's exchange had an unknown outcome."""
        with self._changed:
            return _fingerprint(token) in self._unclear

    def reset(self) -> None:
        """Back to a new process's state: open, nothing in flight, no token remembered."""
        self._changed = threading.Condition()
        self._in_flight = 0
        self._refusing = False
        self._unclear = set()

    def _after_fork(self) -> None:
        # Another thread may have held the condition's lock at fork(): it never unlocks here.
        self._changed = threading.Condition()
        self._in_flight = 0


GUARD = RefreshGuard()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=GUARD._after_fork)


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def refresh_tokens(path: str, seen: Dict[str, Any], exchange: Callable[[str], TokenGrant],
                   now: Callable[[], datetime], lock_timeout: float,
                   invalid_grant_wait: Optional[float] = None,
                   directory_id: Optional[DirectoryId] = None) -> RefreshResult:
    """Given a credential file, the object this process read from it earlier, and an `exchange`
    that trades a refresh token for a TokenGrant, return the access token to use.

    Under the file's lock, the file is read again; if its refresh token or expiry changed since
    `seen` was read, those tokens are taken and nothing is sent. Otherwise, once the write-back is
    known to be possible, the refresh token is exchanged and the new tokens are written back
    atomically before anything else happens, every other key kept. Given `directory_id` (what
    discovery recorded), a directory at the path that is not that one is refused before anything
    is locked, read or sent. Raise LockTimeout, CredentialError or TokenRefreshError (the file is
    then left as it was)."""
    if not hasattr(os, "pread") or not hasattr(os, "fchown"):
        raise CredentialError("Token refresh needs a POSIX system; use --no-token-refresh")
    directory, name = os.path.split(os.path.abspath(path))
    with AuthDirectory(directory, directory_id, "refreshing the token") as auth:
        name = auth.resolve(name)
        fd, info = auth.open_regular(name)
        os.close(fd)
        lock_fd = auth.lock(name, stat.S_IMODE(info.st_mode), (info.st_uid, info.st_gid),
                            lock_timeout)
        try:
            return _refresh_locked(auth, name, seen, exchange, now, invalid_grant_wait)
        finally:
            os.close(lock_fd)  # releases the lock; the file stays


def _refresh_locked(auth: AuthDirectory, name: str, seen: Dict[str, Any],
                    exchange: Callable[[str], TokenGrant], now: Callable[[], datetime],
                    invalid_grant_wait: Optional[float]) -> RefreshResult:
    current, original, info = _read(auth, name)
    if _rotated_since(seen, current):
        access = token_field(current, "access_token")
        if access is None:
            raise CredentialError("The credential file has no access_token; log in again with "
                                  "CLIProxyAPI", login_problem=True)
        logger.info("%s: tokens were already refreshed by another writer; using them", name)
        return RefreshResult(access_token=access, rotated=False)
    if current.get("disabled") is True:
        raise CredentialError("The account was disabled meanwhile; its token is not refreshed")
    refresh_token = token_field(current, "refresh_token")
    if refresh_token is None:
        raise CredentialError("The credential file has no refresh_token; log in again with "
                              "CLIProxyAPI", login_problem=True)
    if GUARD.is_unclear(refresh_token):
        raise TokenRefreshError(
            "An earlier refresh of this token got no clear answer, so it is not sent again; "
            "check the account in CLIProxyAPI, or log in again")
    temp, temp_fd = _prepare(auth, name, current, original, info, now())
    renamed = False
    try:
        with GUARD.critical():
            try:
                grant = exchange(refresh_token)
            except TokenRefreshError as error:
                if error.outcome_unknown:
                    GUARD.mark_unclear(refresh_token)
                if not error.invalid_grant:
                    raise
                wait = INVALID_GRANT_WAIT if invalid_grant_wait is None else invalid_grant_wait
                adopted = _await_rotation(auth, name, refresh_token, wait)
                if adopted is None:
                    raise
                logger.info("%s: refresh token was rotated by another writer meanwhile; using "
                            "its tokens", name)
                return RefreshResult(access_token=adopted, rotated=False)
            renamed = _write_back(auth, name, temp, temp_fd, current, original, info, grant,
                                  now())
        return RefreshResult(access_token=grant.access_token, rotated=True)
    finally:
        os.close(temp_fd)
        if not renamed:
            auth.unlink(temp)


def _read(auth: AuthDirectory, name: str) -> Tuple[Dict[str, Any], bytes, os.stat_result]:
    """Read the credential file through the directory, again while it does not parse (caught
    mid-rewrite); return its object, its bytes and its fstat."""
    def read_once(_: str) -> Tuple[Dict[str, Any], bytes, os.stat_result]:
        fd, info = auth.open_regular(name)
        try:
            data = auth.read(fd, MAX_FILE_BYTES, info.st_size)
        finally:
            os.close(fd)
        if len(data) > MAX_FILE_BYTES:
            raise CredentialError("The credential file is larger than %d KiB"
                                  % (MAX_FILE_BYTES // 1024))
        return parse_json(data), data, info

    result = read_in_rounds([name], read_once)[name]
    if isinstance(result, UnparsedFile):
        raise result
    return result


def _cannot_store(why: str) -> CredentialError:
    return CredentialError("Cannot store new tokens: %s; not refreshing" % why)


def preflight(auth: AuthDirectory, name: str, current: Dict[str, Any], original: bytes,
              info: os.stat_result, now: datetime) -> int:
    """Given the credential file as read under the lock, check everything the write-back will
    need, without creating anything: the file and the directory writable by this process, the
    owner keepable (we own the file, or we are root), the merged content serialisable, room on
    the disk. Return the bytes the temporary file should reserve; raise CredentialError
    (`Cannot store new tokens: …; not refreshing`) naming the first check that fails."""
    problem = auth.writable(name)
    if problem:
        raise _cannot_store(problem)
    euid = os.geteuid()
    if euid != 0 and (info.st_uid != euid or (info.st_gid != os.getegid()
                                              and info.st_gid not in os.getgroups())):
        raise _cannot_store("the credential file belongs to another user or group, which this "
                            "process cannot keep")
    try:
        sample = serialize_like(merge_grant(current, _SAMPLE_GRANT, now), original)
    except ValueError:
        raise _cannot_store("the file holds a number JSON cannot carry (Infinity or NaN, "
                            "such as 1e400)") from None
    except (TypeError, RecursionError):
        raise _cannot_store("the merged content cannot be written as JSON") from None
    need = len(sample) + ROOM_MARGIN
    free = auth.free_bytes()
    if free < need:
        raise _cannot_store("no room on the disk (%d bytes free, %d needed)" % (free, need))
    return need


def _prepare(auth: AuthDirectory, name: str, current: Dict[str, Any], original: bytes,
             info: os.stat_result, now: datetime) -> Tuple[str, int]:
    """Run the preflight, then prove it: create the temporary file with the credential's owner
    and mode, fill it to the size needed and fsync it. Return its name and descriptor."""
    need = preflight(auth, name, current, original, info, now)
    temp = auth.temporary_name(name)
    try:
        fd = auth.create(temp, stat.S_IMODE(info.st_mode) & 0o777, (info.st_uid, info.st_gid))
    except OSError as error:
        raise _cannot_store("cannot create a temporary file in the auth directory (%s)"
                            % (error.strerror or type(error).__name__)) from None
    try:
        write_all(fd, b" " * need)
    except OSError as error:
        os.close(fd)
        auth.unlink(temp)
        raise _cannot_store("no room for the temporary file (%s)"
                            % (error.strerror or type(error).__name__)) from None
    return temp, fd


def _rotated_since(seen: Dict[str, Any], current: Dict[str, Any]) -> bool:
    if current.get("refresh_token") != seen.get("refresh_token"):
        return True
    # Compare moments, not strings: a writer may reformat the same expiry.
    before, after = seen.get("expired"), current.get("expired")
    return before != after and parse_timestamp(before) != parse_timestamp(after)


def _await_rotation(auth: AuthDirectory, name: str, sent_token: str,
                    wait: float) -> Optional[str]:
    """After invalid_grant: poll the file briefly; return the new access token if someone else
    rotated the refresh token we sent, else None."""
    deadline = time.monotonic() + wait
    while True:
        try:
            current = _read(auth, name)[0]
            access = token_field(current, "access_token")
        except CredentialError:
            current, access = {}, None
        if current.get("refresh_token") not in (None, sent_token) and access is not None:
            return access
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def _write_back(auth: AuthDirectory, name: str, temp: str, temp_fd: int,
                current: Dict[str, Any], original: bytes, info: os.stat_result,
                grant: TokenGrant, now: datetime) -> bool:
    """Write the grant into the prepared temporary file and rename it over the credential file;
    return True. The old refresh token is spent: the new one exists only here, so a failure is
    retried, then the tokens are kept in a recovery file named in the CredentialError raised."""
    data = _merged(auth, name, current, original, grant, now)
    if data is None:
        # Not even the checked content merges with this grant: keep the tokens, at least.
        _keep(auth, name, _bare(current, grant), info, now, "the new tokens do not fit the file")
    why = ""
    for attempt in range(WRITE_TRIES):
        if attempt:
            time.sleep(WRITE_PAUSE)
        try:
            write_all(temp_fd, data)
            auth.replace(temp, name)
            return True
        except OSError as error:
            why = error.strerror or type(error).__name__
            logger.warning("%s: writing the new tokens failed (%s), attempt %d of %d", name, why,
                           attempt + 1, WRITE_TRIES)
    _keep(auth, name, data, info, now, why)


def _keep(auth: AuthDirectory, name: str, data: bytes, info: os.stat_result, now: datetime,
          why: str) -> NoReturn:
    """The write-back failed for `why`: keep `data` in a recovery file and raise the
    CredentialError that names it (or says that even that failed)."""
    kept = _recover(auth, name, data, info, now)
    if kept is None:
        raise CredentialError(
            "New tokens could not be written back (%s) nor kept in a recovery file; the old "
            "refresh token is spent: log in again with CLIProxyAPI" % why)
    raise CredentialError(
        "New tokens could not be written back (%s); they are kept in %s (mode 0600) in the auth "
        "directory: move it over %s, or log in again with CLIProxyAPI" % (why, kept, name))


def _merged(auth: AuthDirectory, name: str, current: Dict[str, Any], original: bytes,
            grant: TokenGrant, now: datetime) -> Optional[bytes]:
    """Return the credential file's next bytes: the grant merged into the file as it is now,
    so that an edit made during the exchange survives; else, when that re-read fails or does
    not serialise (the preflight never saw it), into the content the preflight checked; None
    when neither serialises. Never raises: the old refresh token is already spent."""
    try:
        latest, latest_bytes, _ = _read(auth, name)
        if latest.get("refresh_token") == current.get("refresh_token"):
            return serialize_like(merge_grant(latest, grant, now), latest_bytes)
    except Exception as error:  # whatever it is, the checked content below still holds
        logger.warning("%s: the file changed during the refresh into something that cannot be "
                       "written back (%s); writing the new tokens into the content read "
                       "before the refresh", name, type(error).__name__)
    try:
        return serialize_like(merge_grant(current, grant, now), original)
    except Exception as error:
        logger.error("%s: the new tokens cannot be merged into the file (%s)", name,
                     type(error).__name__)
        return None


def _bare(current: Dict[str, Any], grant: TokenGrant) -> bytes:
    """The least a recovery file must hold: the account's type and the new tokens."""
    kept = {"type": current.get("type") if isinstance(current.get("type"), str) else "claude",
            "access_token": grant.access_token,
            "refresh_token": grant.refresh_token or current.get("refresh_token")}
    return json.dumps(kept, ensure_ascii=True).encode("ascii") + b"\n"


def _recover(auth: AuthDirectory, name: str, data: bytes, info: os.stat_result,
             now: datetime) -> Optional[str]:
    """Keep the merged file under `<name>.recovered-<time>` (never `*.json`: CLIProxyAPI must
    not load it as a second account), created exclusively, 0600, with the credential's owner.
    Return its name, or None when it could not be written either."""
    base = "%s.recovered-%s" % (name, now.strftime("%Y%m%dT%H%M%SZ"))
    for number in range(10):
        candidate = base if number == 0 else "%s-%d" % (base, number)
        try:
            fd = auth.create(candidate, 0o600, (info.st_uid, info.st_gid))
        except FileExistsError:
            continue
        except OSError:
            return None
        try:
            write_all(fd, data)
            return candidate
        except OSError:
            auth.unlink(candidate)
            return None
        finally:
            os.close(fd)
    return None
