"""Reading with a size cap, and atomic replacement of files that other programs read. No JSON, no locks."""
import os
import stat
import tempfile
from typing import Optional


class FileTooLarge(OSError):
    """A file is larger than the cap we read."""


def read_capped(path: str, limit: int) -> bytes:
    """Given a path and a byte limit, return the file's bytes. Raise FileTooLarge if it holds
    more than `limit` bytes, OSError if it cannot be read."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(22, "not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge("larger than %d KiB" % (limit // 1024))
    return data


def atomic_write(path: str, data: bytes, default_mode: int = 0o600,
                 preserve_owner: bool = False) -> None:
    """Given a path and bytes, replace the file atomically: write a temporary file in the same
    directory, fsync it, then os.replace it over the path, so a reader sees the old file or the new
    one, never a part. The file keeps its permission bits (`default_mode` for a new file).

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
    mode = stat.S_IMODE(existing.st_mode) if existing is not None else default_mode
    fd, temp_path = tempfile.mkstemp(prefix="." + name + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            if preserve_owner and existing is not None and \
                    (existing.st_uid, existing.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(handle.fileno(), existing.st_uid, existing.st_gid)
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_path, path)
    except BaseException:
        _remove_quietly(temp_path)
        raise
    _fsync_directory(directory)


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
