"""Management keys a remote proxy rejected, remembered across runs so a timer never locks its
operator out.

CLIProxyAPI blocks a client address for 30 minutes after 5 failed management logins, the web UI
on the same host included. A cron job with a wrong key every five minutes would reach that in 25
minutes and keep the block up for good. So a rejection (401 or 403 from the management API) is
written down here, and the same key is not offered to the same proxy again until the key file
changes or an hour has passed: at most one failed login per hour and key.

Only a slow salted fingerprint of the proxy URL and the key is stored, never the key. One JSON file
(`rejected-keys.json`) beside the state file, rewritten atomically under a sidecar lock; without
a state directory the memory lasts as long as the process.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Dict, Optional

from . import files
from .authdir import LOCK_SUFFIX, locked_directory
from .parsing import format_timestamp, number_value, parse_timestamp

logger = logging.getLogger(__name__)

REJECTED_FILE = "rejected-keys.json"
RETRY_AFTER = timedelta(hours=1)
_MAX_BYTES = 1024 * 1024
_LOCK_TIMEOUT = 10.0
_ROUNDS = 100_000

# Rejections seen by this process (--no-state, or a library user without a state directory).
_memory: Dict[str, "Rejection"] = {}
_memory_lock = threading.Lock()


def fingerprint(url: str, key: str) -> str:
    """Given a proxy's base URL and a management key, return the hex digest that stands for
    that pair in the state directory (the key itself is never stored): PBKDF2-HMAC-SHA256, salted
    with the URL. Management keys are often short passwords, and the same file may hold the key
    that another proxy accepts: a plain SHA-256 of a six-digit key is reversed in a second, this
    one costs 100,000 rounds per guess (about 25 ms here, once per proxy and run)."""
    return hashlib.pbkdf2_hmac("sha256", key.encode("utf-8"), url.encode("utf-8"),
                               _ROUNDS).hex()


@dataclass(frozen=True)
class Rejection:
    """One management login a proxy refused."""

    at: datetime
    status: int
    """401 (wrong or missing key) or 403 (remote management off, or this host locked out)."""
    key_version: Optional[str] = None
    """The key file's size and modification time then (None: the key came from the
    environment); a different version means the operator changed the file."""

    def in_force(self, now: datetime, key_version: Optional[str]) -> bool:
        """True while the same key (same file version) must not be offered again."""
        return now < self.at + RETRY_AFTER and key_version == self.key_version

    @property
    def until(self) -> datetime:
        """When the key may be offered again even if the file does not change."""
        return self.at + RETRY_AFTER


def _from_json(raw: Any) -> Optional[Rejection]:
    if not isinstance(raw, dict):
        return None
    at = parse_timestamp(raw.get("at"))
    status = number_value(raw.get("status"))
    version = raw.get("key_version")
    if at is None or status is None:
        return None
    return Rejection(at, int(status), version if isinstance(version, str) else None)


class RejectedKeys:
    """The rejections remembered in one state directory (None: in this process only)."""

    def __init__(self, directory: Optional[str]):
        self.path = (os.path.join(os.path.abspath(os.path.expanduser(directory)), REJECTED_FILE)
                     if directory else None)

    def _read(self, dir_fd: Optional[int] = None) -> Dict[str, Any]:
        """Return the stored rejections (read relative to `dir_fd` when given, never through a
        symlink); {} when there are none or the file is unreadable (with a warning)."""
        if self.path is None:
            return {}
        name = os.path.basename(self.path) if dir_fd is not None else self.path
        try:
            parsed = json.loads(files.read_capped(name, _MAX_BYTES, dir_fd, follow=False)
                                .decode("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError):
            logger.warning("Ignoring the unreadable file %s; it will be rewritten", self.path)
            return {}
        rejected = parsed.get("rejected") if isinstance(parsed, dict) else None
        return rejected if isinstance(rejected, dict) else {}

    def find(self, key_fingerprint: str, key_version: Optional[str],
             now: datetime) -> Optional[Rejection]:
        """Return the rejection of this key that is still in force, or None."""
        with _memory_lock:
            found = _memory.get(key_fingerprint)
        if found is None:
            found = _from_json(self._read().get(key_fingerprint))
        return found if found is not None and found.in_force(now, key_version) else None

    def record(self, key_fingerprint: str, rejection: Rejection) -> None:
        """Remember a rejection (in this process, and in the state directory if there is one).
        A failure to write is logged, never raised."""
        with _memory_lock:
            _memory[key_fingerprint] = rejection
        self._update(key_fingerprint, rejection)

    def forget(self, key_fingerprint: str) -> None:
        """Drop the rejection of a key the proxy has just accepted."""
        with _memory_lock:
            _memory.pop(key_fingerprint, None)
        if self.path is not None and key_fingerprint in self._read():
            self._update(key_fingerprint, None)

    def _update(self, key_fingerprint: str, rejection: Optional[Rejection]) -> None:
        if self.path is None:
            return
        directory, name = os.path.split(self.path)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            with locked_directory(directory, name + LOCK_SUFFIX, _LOCK_TIMEOUT) as dir_fd:
                entries = self._read(dir_fd)
                if rejection is None:
                    entries.pop(key_fingerprint, None)
                else:
                    entries[key_fingerprint] = {
                        "at": format_timestamp(rejection.at), "status": rejection.status,
                        "key_version": rejection.key_version}
                # Old entries are dead weight: they no longer stop anything.
                if rejection is not None:
                    cutoff = rejection.at - 24 * RETRY_AFTER
                    entries = {name: raw for name, raw in entries.items()
                               if (_from_json(raw) or Rejection(cutoff, 0)).at > cutoff}
                data = json.dumps({"version": 1, "rejected": entries}, sort_keys=True)
                files.atomic_write(name, data.encode("utf-8"), default_mode=0o600,
                                   dir_fd=dir_fd)
        except Exception as error:  # remembering is a courtesy: never fail a run for it
            logger.warning("Cannot write %s (%s)", self.path, files.why(error))


def clear_memory() -> None:
    """Forget the rejections this process has seen (tests start as a new process would)."""
    with _memory_lock:
        _memory.clear()


def unremembered(directory: Optional[str]) -> Optional[str]:
    """Given the state directory (None: --no-state), return why a rejection cannot be
    remembered across runs there (None: it can). Creates the directory (0700) if missing."""
    if not directory:
        return "--no-state"
    path = os.path.abspath(os.path.expanduser(directory))
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as error:
        return "the state directory %s cannot be created: %s" % (path, error.strerror or error)
    if not os.access(path, os.W_OK | os.X_OK):
        return "the state directory %s is not writable" % path
    return None


def warn_if_unremembered(directory: Optional[str]) -> None:
    """Log, loudly, that a wrong management key will lock this host out when rejections cannot
    be remembered across runs."""
    reason = unremembered(directory)
    if reason is not None:
        # ERROR, not WARNING: the shipped cron line and unit run with -q, and this is what
        # locks an operator out of their own proxy's web UI.
        logger.error("Rejected CLIProxyAPI management keys cannot be remembered between runs "
                     "(%s): a wrong key is offered again by every run, and CLIProxyAPI locks "
                     "this host out of its management API for 30 minutes after 5 failed "
                     "logins, so after 5 runs. Give the tool a writable --state-dir.", reason)
