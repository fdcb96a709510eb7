"""The data model: frozen dataclasses, no I/O, never a token."""
import enum
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, Optional, Tuple


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


@dataclass(frozen=True)
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

    @property
    def remaining_percent(self) -> Optional[float]:
        """Percentage left (never below 0), or None when the used share is unknown."""
        if self.used_percent is None:
            return None
        return max(0.0, 100.0 - self.used_percent)


@dataclass(frozen=True)
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
    credits: Optional[Dict[str, Any]] = None
    """Codex credits: `balance`, `unlimited`, `has_credits`, and `spend_limit` when set."""
    extra_usage: Optional[Dict[str, Any]] = None
    """Claude extra usage when enabled: `used`, `limit` (major units), `currency`,
    `utilization`."""


@dataclass(frozen=True)
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

    @property
    def is_expired(self) -> bool:
        """True only when the expiry is known and already past, evaluated now."""
        return self.expired is not None and self.expired <= datetime.now(timezone.utc)


@dataclass(frozen=True)
class Skipped:
    """A file or account left out of the run, with a short stable reason."""

    id: str
    reason: str
    """`disabled`, `expired`, `unsupported type '<type>'` or `unreadable: <why>`."""
    provider: Optional[Provider] = None
    email: Optional[str] = None


@dataclass(frozen=True)
class Discovery:
    """What `discover_accounts` found in the auth directory."""

    codex: Tuple[AuthAccount, ...] = ()
    claude: Tuple[AuthAccount, ...] = ()
    skipped: Tuple[Skipped, ...] = field(default=())
    """Files that are not usable accounts at all (unsupported type, unreadable)."""
    auth_dir: Optional[str] = None

    @property
    def accounts(self) -> Tuple[AuthAccount, ...]:
        """Every Claude and Codex account."""
        return self.claude + self.codex
