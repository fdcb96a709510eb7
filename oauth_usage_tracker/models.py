"""The data model: frozen dataclasses, no I/O, never a token."""
from __future__ import annotations

import enum
import sys
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Dict, Optional, Tuple

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


@dataclass(frozen=True, **SLOTS)
class Pace:
    """How fast a window is being used against how much of it has elapsed (SPEC §14)."""

    expected_used_percent: float
    """The elapsed share of the window, as a percentage."""
    delta_percent: float
    """Used minus expected: positive means ahead of an even pace."""
    projected_exhaustion: Optional[datetime] = None
    """When the window reaches 100 % at the rate the projection uses (None: usage is 0)."""
    runs_out_before_reset: bool = False
    """True when `projected_exhaustion` comes before the window resets."""
    basis: str = "window"
    """`window` (rate since the window started) or `recent` (rate from stored readings)."""


@dataclass(frozen=True, **SLOTS)
class UsageWindow:
    """One quota window of one account."""

    key: str
    """Machine name, stable for scripts and metrics: `five_hour`, `primary_window`…"""
    title: str
    """What people read: "5-hour", "Weekly", "Weekly (Opus)"…"""
    used_percent: Optional[float] = None
    """Percentage used, 0–100, or None when the server did not say."""
    reset_date: Optional[datetime] = None
    """When the window resets, timezone-aware UTC, or None."""
    reset_text: Optional[str] = None
    """The reset moment for people, relative and absolute."""
    severity: Optional[str] = None
    """What the server thinks of the usage: `normal`, `warning`, `critical` (Claude limits)."""
    is_active: Optional[bool] = None
    """Whether this limit is the one currently binding (Claude limits)."""
    locked_reason: Optional[str] = None
    """Why the server locked this window, when it says."""
    pace: Optional[Pace] = field(default=None, compare=False)
    """The pace projection, when the window's length is known (set by the tracker after the
    fetch, from the reading and the state store's earlier readings)."""
    length_seconds: Optional[float] = field(default=None, compare=False)
    """How long one period of the window lasts (18000 for 5-hour, 604800 for weekly, Codex
    `limit_window_seconds`), or None when unknown. Set by the parsers."""
    rolled_over: bool = field(default=False, compare=False)
    """True when this is a stored window whose reset has passed since it was read: it shows
    0 % used by assumption, not by a reading (`parsing.roll_over`)."""

    @property
    def remaining_percent(self) -> Optional[float]:
        """Percentage left (never below 0), or None when the used share is unknown."""
        if self.used_percent is None:
            return None
        return max(0.0, 100.0 - self.used_percent)


@dataclass(frozen=True, **SLOTS)
class SpendLimit:
    """A Codex team member's spend cap (`spend_control.individual_limit`)."""

    limit: Optional[float] = None
    used: Optional[float] = None
    remaining: Optional[float] = None
    used_percent: Optional[float] = None
    """Percentage of the cap spent, 0–100."""
    reset_date: Optional[datetime] = None
    """When the cap resets (aware UTC), or None."""


@dataclass(frozen=True, **SLOTS)
class Credits:
    """Codex credits."""

    balance: Optional[float] = None
    """The balance as a number, or None when the server gave none that reads as one."""
    unlimited: Optional[bool] = None
    has_credits: Optional[bool] = None
    spend_limit: Optional[SpendLimit] = None
    reported: bool = True
    """True when the server sent a `credits` object (`balance` is then part of the JSON form,
    null or not); False when only a spend limit was sent."""


@dataclass(frozen=True, **SLOTS)
class ExtraUsage:
    """Claude extra usage (pay as you go beyond the plan), in major currency units."""

    used: Optional[float] = None
    limit: Optional[float] = None
    """The monthly limit."""
    currency: Optional[str] = None
    utilization: Optional[float] = None
    """Percentage of the limit used, as the server says."""


@dataclass(frozen=True, **SLOTS)
class AccountDetails:
    """What a usage answer says about the account besides its windows (SPEC §3): parsed by
    the providers, kept in the state store with the last good windows, shown by the renderers.
    Their JSON form has one home: `json_forms.details_to_json` / `details_from_json`."""

    plan: Optional[str] = None
    """The subscription plan the server reports (Codex `plan_type`)."""
    credits: Optional[Credits] = None
    extra_usage: Optional[ExtraUsage] = None

    def apply(self, usage: "AccountUsage") -> "AccountUsage":
        """Given an account's result, return it carrying these details."""
        return replace(usage, plan=self.plan, credits=self.credits,
                       extra_usage=self.extra_usage)


@dataclass(frozen=True, **SLOTS)
class AccountUsage:
    """The result of one account's fetch (or its loading placeholder)."""

    id: str
    """The credential file's name."""
    provider: Provider
    email: Optional[str] = None
    is_loading: bool = False
    windows: Tuple[UsageWindow, ...] = ()
    error: Optional[str] = None
    """A sentence for people when the fetch failed, else None."""
    updated_at: Optional[datetime] = None
    token_refreshed: bool = False
    """True when this fetch rotated the account's tokens and wrote them back."""
    stale: bool = False
    """True when `windows` are the last good values from an earlier fetch, not fresh ones."""
    fetched_at: Optional[datetime] = None
    """When `windows` were fetched (the same as `updated_at` for fresh data)."""
    login_problem: bool = False
    """True when `error` says the login itself is broken: the user must act."""
    plan: Optional[str] = None
    """The subscription plan the server reports (Codex `plan_type`)."""
    credits: Optional[Credits] = None
    """Codex credits, when the server reports them."""
    extra_usage: Optional[ExtraUsage] = None
    """Claude extra usage, when enabled."""
    state: Optional[AccountState] = None
    """The account's state in this run (None while loading)."""
    source: str = LOCAL_SOURCE
    """Where the account comes from: `local`, or a remote proxy's host:port."""
    cooldown_until: Optional[datetime] = None
    """While requests for this account are paused after a 429: until when (aware UTC)."""

    @property
    def details(self) -> AccountDetails:
        """The account details this result carries."""
        return AccountDetails(self.plan, self.credits, self.extra_usage)

    @property
    def account_wide_windows(self) -> Tuple[UsageWindow, ...]:
        """The windows that limit the whole account and carry a reading: account-wide keys
        with a known percentage, rolled-over stale windows left out (their 0 % used is an
        assumption: the window reset, but nobody has read it since)."""
        return tuple(w for w in self.windows if w.key in ACCOUNT_WIDE_KEYS
                     and w.remaining_percent is not None and not w.rolled_over)

    @property
    def effective_remaining_percent(self) -> Optional[float]:
        """The least remaining percent over the account-wide windows, or None when none is
        known: what is really left to use (a model-scoped window alone never decides it)."""
        values = [w.remaining_percent for w in self.account_wide_windows]
        return min(v for v in values if v is not None) if values else None


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
