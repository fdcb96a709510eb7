"""The parts of a usage answer: its windows and their pace, the readings the pace keeps, the
account details (plan, credits, extra usage). Frozen dataclasses, no I/O, never a token.

Only an answer (or a stored result shown instead of one) needs them, so they are created when
first used, not at start-up: Python 3.11 compiles each dataclass's generated methods from source
(about half a millisecond to a millisecond each), and a one-account run's request goes out
before any of them is needed. `models` (and `pace`, for Reading) name them as they always did,
importing this module on first use; a run imports it while its request is in flight
(`run._import_the_rest`)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Optional

from .models import SLOTS

if TYPE_CHECKING:
    from .result import AccountUsage


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

    def apply(self, usage: AccountUsage) -> AccountUsage:
        """Given an account's result, return it carrying these details."""
        return replace(usage, plan=self.plan, credits=self.credits,
                       extra_usage=self.extra_usage)


@dataclass(frozen=True, **SLOTS)
class Reading:
    """One stored reading of a window: when, and how much was used."""

    at: datetime
    used_percent: float
