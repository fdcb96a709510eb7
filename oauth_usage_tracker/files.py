"""Reading with a size cap, and atomic replacement of files that other programs read.

No JSON, no locks."""
from __future__ import annotations

import errno
import os
import secrets
import stat
from typing import BinaryIO, Callable, Iterable, Iterator, List, Mapping, Optional, Union

#: A new `--output` report: it names e-mails and plans, so the owner and group read it, no one else.
REPORT_MODE = 0o640
#: A new `--prometheus` file: node_exporter runs as another user and must read it.
METRICS_MODE = 0o644
_MAX_LINKS = 8
#: Seconds a device or FIFO may take to accept what is written into it before the write fails.
WRITE_DEADLINE = 5.0
#: atomic_write gathers byte chunks into writes of at least this many bytes.
WRITE_SIZE = 64 * 1024


class FileTooLarge(OSError):
    """A file is larger than the cap we read."""


def open_regular(path: str, dir_fd: Optional[int] = None, follow: bool = True) -> BinaryIO:
    """Given a path (relative to `dir_fd` when given), return the regular file there opened for
    binary reading; without `follow`, a symlink as the last component is refused (ELOOP). Raise
    OSError if it cannot be opened or is not a regular file (a FIFO, a device, a directory)."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags, dir_fd=dir_fd)
    handle = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        handle.close()
        raise OSError(22, "not a regular file")
    return handle


def read_capped(path: str, limit: int, dir_fd: Optional[int] = None,
                follow: bool = True) -> bytes:
    """Given a path (as `open_regular` takes it) and a byte limit, return the file's bytes.
    Raise FileTooLarge if it holds more than `limit` bytes, OSError if it cannot be read."""
    with open_regular(path, dir_fd, follow) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge("larger than %d KiB" % (limit // 1024))
    return data


def atomic_write(path: str, data: Union[bytes, Iterable[bytes]], default_mode: int = 0o600,
                 preserve_owner: bool = False, mode: Optional[int] = None,
                 dir_fd: Optional[int] = None,
                 attributes: Optional[Callable[[], Mapping[str, bytes]]] = None) -> None:
    """Given a path (a name relative to `dir_fd` when given) and bytes (or an iterable of byte
    chunks, written as they come, gathered into writes of WRITE_SIZE bytes, so that a large
    document is never held whole), replace the file atomically: write a temporary file in the
    same directory, fsync it, then rename it over the name, so a reader sees the old file or the
    new one, never a part. The file keeps its permission bits (`default_mode` for a new file),
    or gets exactly `mode` when it is given; the umask never applies.

    `attributes`, when given, is called once every chunk is written, and the extended
    attributes it returns (name: value) are set on the new file before it is renamed: a
    reader sees them with the data they were made from. Where the file system keeps none
    (or refuses one), the file is written without it.

    Every step is relative to one descriptor of the directory and follows no symlink: the
    temporary file is created with O_EXCL | O_NOFOLLOW (a name planted in advance makes the
    create fail), and a symlink at the target is itself replaced, its target neither written
    nor consulted for a mode or an owner.

    The temporary name starts with a dot and ends in `.tmp`, so no reader's glob matches it:
    CLIProxyAPI reloads every `*.json` and node_exporter reads every `*.prom` in the directory.
    With `preserve_owner`, the new file gets the old one's owner and group, or PermissionError is
    raised (root refreshing the proxy user's file must not leave it unreadable to the proxy).
    """
    if dir_fd is not None:
        _atomic_write_at(dir_fd, path, data, default_mode, preserve_owner, mode, attributes)
        return
    directory, name = os.path.split(os.path.abspath(path))
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _atomic_write_at(dir_fd, name, data, default_mode, preserve_owner, mode, attributes)
    finally:
        os.close(dir_fd)


def _atomic_write_at(dir_fd: int, name: str, data: Union[bytes, Iterable[bytes]],
                     default_mode: int, preserve_owner: bool, mode: Optional[int],
                     attributes: Optional[Callable[[], Mapping[str, bytes]]]) -> None:
    try:
        existing: Optional[os.stat_result] = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        existing = None  # a symlink (or anything else) is replaced, not imitated
    if mode is None:
        # Permission bits only: a setuid or setgid bit someone left there is never carried over.
        mode = stat.S_IMODE(existing.st_mode) & 0o777 if existing is not None else default_mode
    temp = ".%s.%s.tmp" % (name, secrets.token_hex(6))
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        try:
            if preserve_owner and existing is not None and \
                    (existing.st_uid, existing.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(fd, existing.st_uid, existing.st_gid)
            os.fchmod(fd, mode)
            for chunk in [data] if isinstance(data, bytes) else _gathered(data):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            if attributes is not None:
                _set_attributes(fd, attributes())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    # The rename itself is durable only once the directory entry is on disk.
    try:
        os.fsync(dir_fd)
    except OSError:
        pass


def _gathered(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Given byte chunks, yield them joined into pieces of WRITE_SIZE bytes or more (the last
    may be shorter): a state file comes as one chunk per account, and a write per chunk cost a
    system call per account."""
    pending: List[bytes] = []
    size = 0
    for chunk in chunks:
        pending.append(chunk)
        size += len(chunk)
        if size >= WRITE_SIZE:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _set_attributes(fd: int, attributes: Mapping[str, bytes]) -> None:
    """Set each extended attribute on the file open as `fd`. One that cannot be set (a file
    system without them, no room for them, not Linux) is left out: an attribute is extra."""
    setxattr = getattr(os, "setxattr", None)
    if setxattr is None:
        return
    for name, value in attributes.items():
        try:
            setxattr(fd, name, value)
        except OSError:
            pass


def read_attribute(fd: int, name: str) -> Optional[bytes]:
    """Given the file open as `fd` and an extended attribute's name, return its value; None
    when it has none by that name or it cannot be read (a file system without them, not
    Linux)."""
    getxattr = getattr(os, "getxattr", None)
    if getxattr is None:
        return None
    try:
        return bytes(getxattr(fd, name))
    except OSError:
        return None


def why(error: BaseException) -> str:
    """Given an exception met while locking, reading or writing a state file, return the
    reason to log: the system's sentence, else the exception's own, else its type."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def write_output(path: str, data: Union[bytes, Iterable[bytes]], new_mode: int) -> None:
    """Given an output path (`--output`, `--prometheus`), bytes (or byte chunks, written as they
    come: consumed once, by the one write that happens), and the mode for a new file, put the
    bytes there in a way a reader can predict, whatever the umask:

    - a missing target is created atomically with exactly `new_mode`;
    - an existing regular file is replaced atomically and keeps its permission bits (`& 0o777`,
      without write for others) when this user owns it in a trusted directory (see
      `trusted_directory`); otherwise the new file gets `new_mode`: nobody else chooses the mode
      of a file root writes, setuid bits included;
    - an existing device, FIFO or other non-regular file (`/dev/null`, a pipe to a reader) in a
      trusted directory is written into, never replaced, when it is reached without following a
      symbolic link, within WRITE_DEADLINE; in a directory others can write it is replaced like
      a regular file, never opened: a FIFO planted there would hand the report to whoever
      planted it, or hang the run with a reader that never drains;
    - a symbolic link is followed only in a trusted directory (`/dev/stdout`, an operator's
      link); its target is then treated as above. A link in a directory others can write is
      replaced by the new file itself: in a group-writable textfile directory, anyone in the
      group could point `oauth_usage.prom` at /etc/passwd, and root must not write through that.

    Raise OSError when it cannot be done (a directory, a FIFO nobody reads or that does not
    drain within the deadline, no permission)."""
    path = os.path.abspath(path)
    for _ in range(_MAX_LINKS):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            atomic_write(path, data, mode=new_mode)
            return
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        trusted = trusted_directory(os.path.dirname(path))
        if stat.S_ISREG(info.st_mode):
            atomic_write(path, data, mode=_kept_mode(info, trusted, new_mode))
            return
        if not trusted:
            # A link, a FIFO, a device: replaced by the new file itself, never opened.
            atomic_write(path, data, mode=new_mode)
            return
        if stat.S_ISLNK(info.st_mode):
            if _write_into(path, data, follow=True):
                return
            path = os.path.realpath(path)
            if os.path.islink(path):  # a loop, or a link to a missing file
                raise OSError(errno.ELOOP, "a symbolic link that leads nowhere", path)
            continue
        if _write_into(path, data, follow=False):
            return
        # Swapped for a regular file or a link since the lstat above: decide again.
    raise OSError(errno.ELOOP, "too many symbolic links", path)


def _kept_mode(existing: os.stat_result, trusted: bool, new_mode: int) -> int:
    """Given the regular file about to be replaced, whether its directory is trusted, and the
    mode of a new file, return the replacement's mode: the old permission bits only when this
    user owns the file in a trusted directory (an operator's chmod), without setuid, setgid,
    sticky or write-for-others bits; else `new_mode`."""
    if not trusted or existing.st_uid != os.geteuid():
        return new_mode
    return stat.S_IMODE(existing.st_mode) & 0o777 & ~stat.S_IWOTH


def trusted_directory(directory: str) -> bool:
    """Given a directory, return True when nobody but its owner can add or replace names in it
    and that owner is root or this user: what is there was put there by one of them."""
    info = os.stat(directory)
    return info.st_uid in (0, os.geteuid()) and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _write_into(path: str, data: Union[bytes, Iterable[bytes]], follow: bool) -> bool:
    """Write `data` into the non-regular file at `path` (a device, a FIFO with a reader) and
    return True; return False, having written nothing, when what is there now is a regular file
    (or, without `follow`, a link). O_NONBLOCK: opening a FIFO nobody reads fails (ENXIO) instead
    of waiting for ever; O_NOCTTY: a terminal never becomes ours."""
    flags = os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags if follow else flags | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError as error:
        if error.errno == errno.ELOOP and not follow:
            return False
        if error.errno == errno.ENXIO:
            raise OSError(errno.ENXIO, "nothing is reading from this pipe", path) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
            return False
        write_before_deadline(fd, [data] if isinstance(data, bytes) else data, path)
    finally:
        os.close(fd)
    return True


def write_before_deadline(fd: int, chunks: Iterable[bytes], path: str,
                          deadline: Optional[float] = None) -> None:
    """Given a descriptor opened with O_NONBLOCK (a FIFO, a device, a file), byte chunks and the
    path it stands for, write every chunk whole, in order, waiting with poll() while the reader
    is full, for at most `deadline` seconds in all (WRITE_DEADLINE when None). Raise OSError
    (ETIMEDOUT) when the reader has not taken everything by then: a reader that never drains
    must not hold the run."""
    import select
    import time
    end = time.monotonic() + (WRITE_DEADLINE if deadline is None else deadline)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            try:
                view = view[os.write(fd, view):]
                continue
            except BlockingIOError:
                pass
            left = end - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise OSError(errno.ETIMEDOUT, "the reader took nothing for %g s"
                              % (WRITE_DEADLINE if deadline is None else deadline), path)
