"""`--watch`: refresh on an interval, and at once when the set of enabled accounts changes."""
from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Callable, FrozenSet, Optional, Tuple

from .accounts import discover_accounts
from .errors import ConfigurationError
from .models import Discovery

if TYPE_CHECKING:
    from .tracker import RefreshHandle

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0
Fingerprint = FrozenSet[Tuple[str, int, int]]


def directory_fingerprint(auth_dir: Optional[str]) -> Optional[Fingerprint]:
    """Given the auth directory, return the names, mtimes and sizes of its `*.json` files (one
    cheap scandir) and the directory's own identity (as `(".", st_dev, st_ino)`: another
    directory put at the path means a new discovery, which records the new identity), or None
    when it cannot be listed (or no directory is read)."""
    if auth_dir is None:
        return None
    try:
        fd = os.open(auth_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        with os.scandir(fd) as entries:
            found = {(entry.name, entry.stat().st_mtime_ns, entry.stat().st_size)
                     for entry in entries if entry.name.endswith(".json")}
        return frozenset(found | {(".", info.st_dev, info.st_ino)})
    except OSError:
        return None
    finally:
        os.close(fd)


class Watcher:
    """Drives refreshes until told to stop. `start_refresh(discovery)` starts a refresh of the
    accounts to query (a tracker's refresh) and returns its handle; `enabled(discovery)`
    returns the ids that would be queried; `on_report(discovery, handle, started)` is called
    once per finished (not superseded) refresh."""

    def __init__(self, auth_dir: Optional[str], interval: float,
                 enabled: Callable[[Discovery], FrozenSet[str]],
                 start_refresh: Callable[[Discovery], "RefreshHandle"],
                 on_report: Callable[[Discovery, "RefreshHandle", float], object],
                 poll: float = POLL_SECONDS,
                 discover: Optional[Callable[[], Discovery]] = None):
        self.auth_dir = auth_dir
        self.interval = interval
        self.enabled = enabled
        self.start_refresh = start_refresh
        self.on_report = on_report
        self.poll = poll
        #: How the watched accounts are found (default: the auth directory's files).
        self.discover = discover or (lambda: discover_accounts(auth_dir))

    def run(self, should_stop: Callable[[], bool]) -> None:
        """Loop until `should_stop()`: re-discover when the directory changed, refresh when due
        (and the previous refresh finished) or at once when the enabled set changed, report each
        refresh that finished."""
        seen_fingerprint: Optional[Fingerprint] = None
        discovery: Optional[Discovery] = None
        enabled: Optional[FrozenSet[str]] = None
        due = 0.0
        pending: Optional[Tuple[Discovery, "RefreshHandle", float]] = None
        while not should_stop():
            changed = False
            fingerprint = directory_fingerprint(self.auth_dir)
            if fingerprint != seen_fingerprint or discovery is None:
                seen_fingerprint = fingerprint
                try:
                    discovery = self.discover()
                except ConfigurationError as error:
                    logger.error("%s", error)
                    discovery = None
                if discovery is not None:
                    now_enabled = self.enabled(discovery)
                    changed = enabled is not None and now_enabled != enabled
                    if changed:
                        logger.info("The set of enabled accounts changed; refreshing now")
                    enabled = now_enabled
            # Only a change of accounts cuts a refresh short: one slower than the interval
            # must still finish and report, or a slow pool would never report at all.
            if discovery is not None and (changed or (pending is None
                                                      and time.monotonic() >= due)):
                due = time.monotonic() + self.interval
                pending = (discovery, self.start_refresh(discovery), time.monotonic())
            if pending is not None and pending[1].done():
                if not pending[1].superseded:
                    self.on_report(*pending)
                pending = None
            # A plain sleep: the signal handler only sets a flag, and it wakes this up.
            time.sleep(self.poll if pending is None else min(self.poll, 0.05))
