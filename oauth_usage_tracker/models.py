"""The data model: frozen dataclasses, no I/O, never a token."""
from __future__ import annotations

import enum
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

if TYPE_CHECKING:
    from .remote import RemoteAccount

#: Per-account objects have no instance __dict__ where dataclasses allow it (Python 3.10+): a
#: pool of thousands of accounts holds several of them per account, and slots save about a third.
SLOTS: Dict[str, bool] = {"slots": True} if sys.version_info >= (3, 10) else {}


class Provider(str, enum.Enum):
    """A subscription service. Sorting uses the value, so `claude` comes before `codex`."""

    CODEX = "codex"
    CLAUDE = "claude"

    def __str__(self) -> str:
        return self.value

    @property
    def label(self) -> str:
        """The name people read: "Claude" or "Codex"."""
        return self.value.capitalize()


class AccountState(str, enum.Enum):
    """The one state of a credential file in a run: the same word in the table, JSON, logs and
    metrics (SPEC §13)."""

    OK = "ok"
    STALE = "stale"
    RATE_LIMITED = "rate_limited"
    BLOCKED = "blocked"
    ERROR = "error"
    LOGIN_FAILED = "login_failed"
    EXPIRED = "expired"
    DISABLED = "disabled"
    UNREADABLE = "unreadable"

    def __str__(self) -> str:
        return self.value

    @property
    def needs_human(self) -> bool:
        """True when only a person can fix it (log in again, repair the file)."""
        return self in (AccountState.LOGIN_FAILED, AccountState.EXPIRED, AccountState.UNREADABLE)


#: The `source` of accounts read from the local auth directory (a remote proxy's is its host:port).
LOCAL_SOURCE = "local"

#: Window keys that limit the whole account (not one model): the effective remaining percent is
#: the minimum over these (SPEC §14). Claude `five_hour`/`seven_day` (also what `limits[]`
#: `session`/`weekly_all` become), Codex `primary_window`/`secondary_window` (whatever their
#: length), and the generic parser's titled equivalents (`five_hour`, `session`, `weekly`, `full`).
#: Keys with a prefix (`seven_day_opus`, `weekly_scoped:<model>`, `<limit slug>:primary_window`)
#: are scoped to a model or a metered feature and never limit the whole account.
ACCOUNT_WIDE_KEYS = frozenset({"five_hour", "seven_day", "primary_window", "secondary_window",
                               "session", "weekly", "full"})

#: Window lengths by title, for windows whose length the server does not state.
FIVE_HOURS = 5 * 3600
ONE_WEEK = 7 * 86400
#: The titles of those windows (the lines layout's two columns).
FIVE_HOUR_TITLE = "5-hour"
WEEKLY_TITLE = "Weekly"


#: The classes only an answer needs, created when first used (see usage.py and result.py): their
#: module by name. Imported by __getattr__ below; every name stays `models.<name>`.
_DEFERRED = {"Pace": "usage", "UsageWindow": "usage", "SpendLimit": "usage", "Credits": "usage",
             "ExtraUsage": "usage", "AccountDetails": "usage", "AccountUsage": "result"}

if TYPE_CHECKING:  # what the deferred names are, for type checkers and editors
    from .result import AccountUsage as AccountUsage
    from .usage import AccountDetails as AccountDetails
    from .usage import Credits as Credits
    from .usage import ExtraUsage as ExtraUsage
    from .usage import Pace as Pace
    from .usage import SpendLimit as SpendLimit
    from .usage import UsageWindow as UsageWindow


def __getattr__(name: str) -> Any:
    """A deferred class (`_DEFERRED`), its module imported on first use; every name of that
    module is then kept here, so that later uses are plain lookups."""
    module_name = _DEFERRED.get(name)
    if module_name is None:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    import importlib
    module = importlib.import_module("." + module_name, __package__)
    globals().update({deferred: getattr(module, deferred)
                      for deferred, home in _DEFERRED.items() if home == module_name})
    return globals()[name]


def __dir__() -> List[str]:
    """The module's names, the deferred classes among them."""
    return sorted(set(globals()) | set(_DEFERRED))


def _make_deferred_before_fork() -> None:
    """Before the process forks, finish making the deferred classes: a child forked while
    another thread was importing their module would wait forever for that import's lock. Costs
    nothing once they are made."""
    import importlib
    for module_name in sorted(set(_DEFERRED.values())):
        importlib.import_module("." + module_name, __package__)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_make_deferred_before_fork)


@dataclass(frozen=True, **SLOTS)
class AuthAccount:
    """One credential file of a Claude or Codex account. Tokens are read when needed, never held."""

    id: str
    """The file name, e.g. `claude-alice@example.com.json`."""
    provider: Provider
    email: Optional[str]
    display_name: str
    """The e-mail, else the login, else the file name."""
    path: str
    expired: Optional[datetime] = None
    """When the access token expires (aware), or None when the file does not say."""
    is_disabled: bool = False
    source: str = LOCAL_SOURCE
    """Where the account comes from: `local`, or a remote proxy's host:port."""
    remote: Optional["RemoteAccount"] = field(default=None, repr=False, compare=False)
    """For an account listed by a remote proxy: how to reach it there (None for a file)."""
    directory_id: Optional[Tuple[int, int]] = field(default=None, repr=False, compare=False)
    """For a file: (st_dev, st_ino) of the auth directory discovery listed. Every later read or
    refresh refuses a directory at `path`'s parent that is not this one (None: not checked)."""

    @property
    def is_expired(self) -> bool:
        """True only when the expiry is known and already past, evaluated now."""
        return self.expired is not None and self.expired <= datetime.now(timezone.utc)


@dataclass(frozen=True, **SLOTS)
class Skipped:
    """A file or account left out of the run, with a short stable reason."""

    id: str
    reason: str
    """`disabled`, `expired`, `unsupported type '<type>'` or `unreadable: <why>`."""
    provider: Optional[Provider] = None
    email: Optional[str] = None
    state: Optional[AccountState] = None
    """`disabled`, `expired` or `unreadable`; None for a file that is no account (unsupported)."""
    source: str = LOCAL_SOURCE


@dataclass(frozen=True)
class Discovery:
    """What `discover_accounts` found in the auth directory (or `discover_remote` at a proxy)."""

    codex: Tuple[AuthAccount, ...] = ()
    claude: Tuple[AuthAccount, ...] = ()
    skipped: Tuple[Skipped, ...] = field(default=())
    """Files that are not usable accounts at all (unsupported type, unreadable)."""
    auth_dir: Optional[str] = None

    @property
    def accounts(self) -> Tuple[AuthAccount, ...]:
        """Every Claude and Codex account."""
        return self.claude + self.codex

    def __add__(self, other: "Discovery") -> "Discovery":
        """Both discoveries' accounts and skipped records (local and remote sources combined);
        the auth directory of whichever has one."""
        if not isinstance(other, Discovery):
            return NotImplemented
        return Discovery(codex=self.codex + other.codex, claude=self.claude + other.claude,
                         skipped=self.skipped + other.skipped,
                         auth_dir=self.auth_dir or other.auth_dir)


#: What `from oauth_usage_tracker.models import *` gives: every public name but the modules and
#: the __future__ feature, the answer's classes included (the import makes them).
__all__ = sorted({name for name, value in globals().items()
                  if not name.startswith("_") and name != "annotations"
                  and not isinstance(value, type(sys))} | set(_DEFERRED))
