"""File operations on the auth directory (discovery, reads, the token refresh), each relative to an
open descriptor of the directory.

The auth directory belongs to the account that runs CLIProxyAPI, and the refresh often runs as root
(cron, systemd). Anything running as that account can rename, replace or symlink any name in the
directory at any moment, so a name is never trusted twice. The rules, and the race each closes:

- Each use (a read, a refresh) opens the directory once (`O_DIRECTORY`) and every later open,
  rename and unlink of that use passes `dir_fd=`: a name always means an entry of *this*
  directory.

      root checks auth/a.json     attacker: mv auth auth.old; ln -s /etc auth
      root opens auth/a.json   -> would open /etc/a.json; with dir_fd it still opens the entry
                                  of the directory root checked

- Discovery, the usage read and the refresh are separate uses, seconds apart, and each opens
  the directory by its path again. Discovery records the identity (`st_dev`, `st_ino`, from
  `fstat` of the descriptor it listed through) on each account; every later open compares the
  `fstat` of the directory it got and refuses a different one, before anything is read, locked
  or sent:

      discovery lists auth (inode 41)      attacker: mv auth auth.old; ln -s /root/x auth
      root opens auth for the refresh   -> inode 97, not 41: refused; without the check root
                                           would lock, read and send /root/x's credential

- Every file is opened with `O_NOFOLLOW`, then `fstat`ed: a regular file with one link, or
  refused. A name checked with lstat can be swapped for a symlink before the open:

      root: lstat a.json.lock -> regular file
      attacker: rm a.json.lock; ln -s /etc/shadow a.json.lock
      root: open a.json.lock   -> ELOOP with O_NOFOLLOW (without it: /etc/shadow)

- Owner and mode are changed only with `fchown`/`fchmod` on a descriptor held since the open:
  the inode changed is the one that was checked, never whatever the name points to by then.

      root: open + fstat a.json.lock (its own, one link)
      attacker: rm a.json.lock; ln -s /etc/shadow a.json.lock
      root: chown("a.json.lock")  -> /etc/shadow given to the attacker; fchown(fd) -> the lock

- New files (lock, temporary, recovery) are created with `O_CREAT | O_EXCL | O_NOFOLLOW`, so a
  name planted in advance (a symlink, a FIFO, a hard link to another file) makes the create fail
  instead of writing through it. Their mode is set with fchmod after the create: the umask does
  not decide who can read a file that holds tokens.
- A credential name that is a symlink is followed only to a regular file inside the directory
  (a sub-directory is entered component by component with `O_NOFOLLOW`); from then on the
  target's own name is used, relative to the directory that holds it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from typing import Iterator, List, Optional, Tuple

from .errors import CredentialError, LockTimeout

LOCK_SUFFIX = ".lock"
LOCK_POLL = 0.05
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NOCTTY = getattr(os, "O_NOCTTY", 0)
NOT_REGULAR = "The credential file is not a regular file"
_OUTSIDE = ("The credential file is now a symlink that does not point to a regular file in the "
            "auth directory")
#: What AuthDirectory.read asks for at a time once a file has grown past the size it had.
READ_CHUNK = 64 * 1024


class UnsafeFile(CredentialError):
    """A name in the auth directory is not the regular file it should be (a symlink out, a FIFO,
    a file with other hard links…); nothing is done with it."""


class DirectoryReplaced(CredentialError):
    """The auth directory at the account's path is not the one discovery listed."""


#: A directory's identity: (st_dev, st_ino) of the directory a descriptor holds.
DirectoryId = Tuple[int, int]


def _why(error: OSError) -> str:
    return error.strerror or type(error).__name__


class AuthDirectory:
    """An open auth directory. Use as a context manager; every method works on names of this
    directory through its descriptor. Given `expected` (the identity discovery recorded), refuse
    with DirectoryReplaced, saying it is not `doing` (e.g. "reading the credential file"), a
    directory that is not that one; `identity` is the opened directory's own."""

    def __init__(self, path: str, expected: Optional[DirectoryId] = None,
                 doing: str = "using it") -> None:
        self.fd = _open_directory(path)
        info = os.fstat(self.fd)
        self.identity: DirectoryId = (info.st_dev, info.st_ino)
        self.path = path
        if expected is not None and self.identity != tuple(expected):
            self.close()
            raise DirectoryReplaced("The auth directory was replaced since it was read; not %s"
                                    % doing)

    def again(self) -> "AuthDirectory":
        """Return a second AuthDirectory on this very directory, opened through this one's
        descriptor, never its path: `resolve` may move a handle into a sub-directory, so each
        file read gets its own."""
        other = AuthDirectory.__new__(AuthDirectory)
        other.fd = _open_directory(".", self.fd)
        other.identity, other.path = self.identity, self.path
        return other

    def __enter__(self) -> "AuthDirectory":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the directory's descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def resolve(self, name: str) -> str:
        """Given the name discovery found, return the name of the regular file it stands for: the
        name itself, or the target of a symlink to a regular file inside this directory. For a
        target in a sub-directory, this object moves to that sub-directory, each component
        opened without following a symlink. Raise UnsafeFile for anything else: the name may
        have been swapped since discovery checked it."""
        info = self.lstat(name)
        if stat.S_ISREG(info.st_mode):
            return name
        if not stat.S_ISLNK(info.st_mode):
            raise UnsafeFile(NOT_REGULAR)
        try:
            target = os.readlink(name, dir_fd=self.fd)
        except OSError:  # no longer a symlink: swapped between the lstat and now
            raise UnsafeFile("The credential file was replaced meanwhile") from None
        parts = self.inside(target)
        fd = self.fd
        try:
            for part in parts[:-1]:
                opened = os.open(part, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC,
                                 dir_fd=fd)
                if fd != self.fd:
                    os.close(fd)
                fd = opened
        except OSError:
            if fd != self.fd:
                os.close(fd)
            raise UnsafeFile(_OUTSIDE) from None
        if fd != self.fd:
            os.close(self.fd)
            self.fd, self.path = fd, os.path.join(self.path, *parts[:-1])
        if not stat.S_ISREG(self.lstat(parts[-1]).st_mode):
            raise UnsafeFile(_OUTSIDE)
        return parts[-1]

    def inside(self, target: str) -> List[str]:
        """Given a symlink's target, return its path below this directory as components; raise
        UnsafeFile when it leaves the directory or names it in a roundabout way (`..`, `.`)."""
        if os.path.isabs(target):
            for prefix in (os.path.realpath(self.path), os.path.abspath(self.path)):
                prefix = prefix.rstrip(os.sep) + os.sep
                if target.startswith(prefix):
                    target = target[len(prefix):]
                    break
            else:
                raise UnsafeFile(_OUTSIDE)
        parts = target.split(os.sep)
        if any(part in ("", ".", "..") for part in parts):
            raise UnsafeFile(_OUTSIDE)
        return parts

    def lstat(self, name: str) -> os.stat_result:
        """Given a name, return its lstat (a symlink's own). Raise UnsafeFile when there is none
        (the name may have been removed or swapped since discovery saw it)."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except OSError as error:
            raise UnsafeFile(_why(error)) from None

    def open_regular(self, name: str, flags: int = os.O_RDONLY,
                     single_link: bool = True) -> Tuple[int, os.stat_result]:
        """Given a name, open it as `open_regular_at` does in this directory."""
        return open_regular_at(self.fd, name, flags, single_link)

    def read(self, fd: int, limit: int, size: int) -> bytes:
        """Given an open regular file, a byte limit and the size its fstat gave, return up to
        `limit` + 1 of its bytes from the start. The first read asks for that size and one byte
        more, so that a file that has not grown is read whole in one small read: a regular file
        reads short only at its end, so a read that returns less than it asked for has seen the
        end (a buffer of the limit's size, 1 MiB for a credential file, was mapped and unmapped
        for every file read, and a second read looked for the end). A file that grew meanwhile
        is read on, READ_CHUNK bytes at a time."""
        chunks, got = [], 0
        while got <= limit:
            want = min(limit + 1 - got, size + 1 - got if got <= size else READ_CHUNK)
            chunk = os.pread(fd, want, got)
            if chunk:
                chunks.append(chunk)
                got += len(chunk)
            if len(chunk) < want:
                break
        return b"".join(chunks)

    def lock(self, name: str, mode: int, owner: Tuple[int, int], timeout: float) -> int:
        """Given a credential name, the lock file's mode and owner, and a timeout, take the
        exclusive lock on `<name>.lock` (see `lock_at`) and return its descriptor; closing it
        releases the lock. Raise LockTimeout or CredentialError."""
        try:
            return lock_at(self.fd, name + LOCK_SUFFIX, mode, owner, timeout,
                           "Another process has been refreshing this account's token for "
                           "over %g s; try again later" % timeout)
        except OSError as error:
            raise CredentialError("Cannot lock the credential file (%s)" % _why(error)) from None

    def create(self, name: str, mode: int, owner: Optional[Tuple[int, int]]) -> int:
        """Given a new name, a mode and an owner (None: ours), create the file exclusively,
        set its owner and mode through its descriptor, and return the descriptor. Raise
        OSError (EEXIST when the name is taken, by anything)."""
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600,
                     dir_fd=self.fd)
        try:
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            self.unlink(name)
            raise
        return fd

    def temporary_name(self, name: str) -> str:
        """A fresh temporary name for `name`: a dot, then `.tmp` at the end, so that no reader's
        `*.json` glob ever matches it."""
        return ".%s.%s.tmp" % (name, secrets.token_hex(4))

    def replace(self, source: str, target: str) -> None:
        """Rename `source` over `target` (both in this directory), then make it durable. A
        symlink planted at `target` is replaced itself, never followed. Raise OSError."""
        os.replace(source, target, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        try:
            os.fsync(self.fd)
        except OSError:
            pass

    def unlink(self, name: str) -> None:
        """Remove a name of ours (a temporary file) if it is still there."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except OSError:
            pass

    def writable(self, name: str) -> Optional[str]:
        """Return why this process (its effective ids) cannot write `name` and add files to the
        directory, or None when it can."""
        if not os.access(".", os.W_OK | os.X_OK, dir_fd=self.fd, effective_ids=True):
            return "the auth directory is not writable by this process"
        if not os.access(name, os.W_OK, dir_fd=self.fd, effective_ids=True,
                         follow_symlinks=False):
            return "the credential file is not writable by this process"
        return None

    def free_bytes(self) -> int:
        """Return the bytes this process may still write on the directory's file system."""
        info = os.fstatvfs(self.fd)
        blocks = info.f_bfree if os.geteuid() == 0 else info.f_bavail
        return blocks * info.f_frsize


def _open_directory(path: str, dir_fd: Optional[int] = None) -> int:
    try:
        return os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC, dir_fd=dir_fd)
    except OSError as error:
        raise CredentialError("Cannot open the auth directory (%s)" % _why(error)) from None


def open_regular_at(dir_fd: int, name: str, flags: int = os.O_RDONLY,
                    single_link: bool = True) -> Tuple[int, os.stat_result]:
    """Given a directory's descriptor and a name in it, open the name without following a
    symlink, waiting on a FIFO or taking a terminal, and return the descriptor and its fstat.
    Raise UnsafeFile unless it is a regular file (with one link, when `single_link`: a file
    about to be replaced or given an owner must have no other name), CredentialError when it
    cannot be opened."""
    try:
        fd = os.open(name, flags | _O_NOFOLLOW | _O_CLOEXEC | os.O_NONBLOCK | _O_NOCTTY,
                     dir_fd=dir_fd)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnsafeFile("%s is now a symlink" % _kind(name).capitalize()) from None
        raise CredentialError(_why(error)) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnsafeFile("not a regular file")
    if single_link and info.st_nlink != 1:
        os.close(fd)
        raise UnsafeFile("%s is not a regular file with a single name" % _kind(name).capitalize())
    return fd, info


def lock_at(dir_fd: int, lock_name: str, mode: int, owner: Optional[Tuple[int, int]],
            timeout: float, busy: str) -> int:
    """Given a directory's descriptor, a lock file's name in it, the lock file's mode and owner
    (None: ours), a timeout and the sentence for a lock held too long, take the exclusive lock
    (flock, as filelock and earlier versions take it) and return its descriptor; closing it
    releases the lock. The lock file is created 0600 whatever the umask, then given `mode`; it
    is never unlinked: a process waiting on an unlinked inode would hold a lock nobody else
    sees. The credential, state, events-memory and rejected-keys locks all go through here.
    Raise LockTimeout(busy), UnsafeFile, CredentialError or OSError."""
    import fcntl
    created = True
    try:
        fd = os.open(lock_name, os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
    except FileExistsError:
        created = False
        fd, _ = open_regular_at(dir_fd, lock_name, os.O_RDWR)
    except OSError as error:
        raise CredentialError("Cannot create the lock file (%s)" % _why(error)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise UnsafeFile("The lock file was replaced or removed meanwhile")
        if created:
            # Only a lock file this call created is touched. An existing one, even one of
            # ours with a single link, may be another file by now:
            #   attacker: ln /etc/some-root-file a.json.lock   (if it may: protected_hardlinks)
            #   root: open a.json.lock (O_EXCL fails, plain open succeeds)
            #   attacker: rm a.json.lock            -> the inode is down to its outside link
            #   root: fstat: regular, one link, root's own -> fchown would give it away
            os.fchmod(fd, mode & 0o666)
            if owner is not None and os.geteuid() == 0 and \
                    (info.st_uid, info.st_gid) != owner:
                # Root's lock file goes to the credential's owner, so that the proxy's
                # own account can still take it later.
                os.fchown(fd, *owner)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(busy) from None
                time.sleep(LOCK_POLL)
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def locked_directory(directory: str, lock_name: str, timeout: float) -> Iterator[int]:
    """Given a directory (the state directory), the name of a lock file in it and a timeout,
    open the directory, hold the lock (`lock_at`, created 0600 and kept ours) for the body, and
    yield the directory's descriptor: the body reads and writes names relative to it, without
    following a symlink, so a name planted by whoever else can write the directory is never
    written through. Raise as `lock_at` does."""
    dir_fd = os.open(directory, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    try:
        lock_fd = lock_at(dir_fd, lock_name, 0o600, None, timeout,
                          "another process has held %s for over %g s" % (lock_name, timeout))
        try:
            yield dir_fd
        finally:
            os.close(lock_fd)
    finally:
        os.close(dir_fd)


def _kind(name: str) -> str:
    if name.endswith(LOCK_SUFFIX):
        return "the lock file"
    if name.endswith(".tmp"):
        return "the temporary file"
    return "the credential file"


def write_all(fd: int, data: bytes) -> None:
    """Given a descriptor and bytes, write them from offset 0, cut the file to their length and
    fsync it. Raise OSError."""
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], done)
    os.ftruncate(fd, len(data))
    os.fsync(fd)
