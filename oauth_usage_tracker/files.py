"""Reading with a size cap, and atomic replacement of files that other programs read. No JSON, no locks."""
import errno
import fcntl
import os
import stat
import tempfile
from typing import BinaryIO, Iterable, Optional, Union

#: A new `--output` report: it names e-mails and plans, so the owner and group read it, no one else.
REPORT_MODE = 0o640
#: A new `--prometheus` file: node_exporter runs as another user and must read it.
METRICS_MODE = 0o644
_MAX_LINKS = 8


class FileTooLarge(OSError):
    """A file is larger than the cap we read."""


def open_regular(path: str) -> BinaryIO:
    """Given a path, return the regular file there opened for binary reading. Raise OSError if
    it cannot be opened or is not a regular file (a FIFO, a device, a directory)."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    handle = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        handle.close()
        raise OSError(22, "not a regular file")
    return handle


def read_capped(path: str, limit: int) -> bytes:
    """Given a path and a byte limit, return the file's bytes. Raise FileTooLarge if it holds
    more than `limit` bytes, OSError if it cannot be read."""
    with open_regular(path) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge("larger than %d KiB" % (limit // 1024))
    return data


def atomic_write(path: str, data: Union[bytes, Iterable[bytes]], default_mode: int = 0o600,
                 preserve_owner: bool = False, mode: Optional[int] = None) -> None:
    """Given a path and bytes (or an iterable of byte chunks, written as they come, so that a
    large document is never held whole), replace the file atomically: write a temporary file in
    the same directory, fsync it, then os.replace it over the path, so a reader sees the old file
    or the new one, never a part. The file keeps its permission bits (`default_mode` for a new
    file), or gets exactly `mode` when it is given; the umask never applies.

    The temporary name starts with a dot and ends in `.tmp`, so no reader's glob matches it:
    CLIProxyAPI reloads every `*.json` and node_exporter reads every `*.prom` in the directory.
    With `preserve_owner`, the new file gets the old one's owner and group, or PermissionError is
    raised (root refreshing the proxy user's file must not leave it unreadable to the proxy).
    """
    directory, name = os.path.split(os.path.abspath(path))
    try:
        existing: Optional[os.stat_result] = os.stat(path)
    except FileNotFoundError:
        existing = None
    if mode is None:
        mode = stat.S_IMODE(existing.st_mode) if existing is not None else default_mode
    fd, temp_path = tempfile.mkstemp(prefix="." + name + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            if preserve_owner and existing is not None and \
                    (existing.st_uid, existing.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(handle.fileno(), existing.st_uid, existing.st_gid)
            os.fchmod(handle.fileno(), mode)
            if isinstance(data, bytes):
                handle.write(data)
            else:
                for chunk in data:
                    handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_path, path)
    except BaseException:
        _remove_quietly(temp_path)
        raise
    _fsync_directory(directory)


def write_output(path: str, data: Union[bytes, Iterable[bytes]], new_mode: int) -> None:
    """Given an output path (`--output`, `--prometheus`), bytes (or byte chunks, written as they
    come: consumed once, by the one write that happens), and the mode for a new file, put the
    bytes there in a way a reader can predict, whatever the umask:

    - a missing target is created atomically with exactly `new_mode`;
    - an existing regular file is replaced atomically and keeps its mode;
    - an existing device, FIFO or other non-regular file (`/dev/null`, a pipe to a reader) is
      written into, never replaced, when it is reached without following a symbolic link;
    - a symbolic link is followed only when the directory holding it is not writable by anyone
      but its owner, and that owner is root or this user (`/dev/stdout`, an operator's link);
      its target is then treated as above. A link in a directory others can write is replaced
      by the new file itself: in a group-writable textfile directory, anyone in the group could
      point `oauth_usage.prom` at /etc/passwd, and root must not write through that.

    Raise OSError when it cannot be done (a directory, a FIFO nobody reads, no permission)."""
    path = os.path.abspath(path)
    for _ in range(_MAX_LINKS):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            atomic_write(path, data, mode=new_mode)
            return
        if stat.S_ISLNK(info.st_mode):
            if not _trusted_directory(os.path.dirname(path)):
                atomic_write(path, data, mode=new_mode)  # the link itself is replaced
                return
            if _write_into(path, data, follow=True):
                return
            path = os.path.realpath(path)
            if os.path.islink(path):  # a loop, or a link to a missing file
                raise OSError(errno.ELOOP, "a symbolic link that leads nowhere", path)
            continue
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if stat.S_ISREG(info.st_mode):
            atomic_write(path, data, mode=stat.S_IMODE(info.st_mode))
            return
        if _write_into(path, data, follow=False):
            return
        # Swapped for a regular file or a link since the lstat above: decide again.
    raise OSError(errno.ELOOP, "too many symbolic links", path)


def _trusted_directory(directory: str) -> bool:
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
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        for chunk in [data] if isinstance(data, bytes) else data:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return True


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_directory(directory: str) -> None:
    # The rename itself is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
