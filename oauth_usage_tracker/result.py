"""An account's result (AccountUsage): a frozen dataclass, no I/O, never a token.

Made once an answer arrives (or a stored result stands in for one): created when first used, not
at start-up (see usage.py), and in a module of its own, so that a refresh's loading placeholders,
made before the requests when a listener waits for them, do not pull in the answer's parts.
`models.AccountUsage` names it as it always did."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Optional, Tuple

from . import models
from .models import ACCOUNT_WIDE_KEYS, LOCAL_SOURCE, SLOTS, AccountState, Provider

if TYPE_CHECKING:
    from .usage import AccountDetails, UsageWindow


@dataclass(frozen=True, **SLOTS)
class AccountUsage:
    """The result of one account's fetch (or its loading placeholder)."""

    id: str
    """The credential file's name."""
    provider: Provider
    email: Optional[str] = None
    is_loading: bool = False
    # The answer's classes are named through models (made there on first use), so that
    # typing.get_type_hints(AccountUsage) finds them and this module does not import usage.py.
    windows: Tuple[models.UsageWindow, ...] = ()
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
    credits: Optional[models.Credits] = None
    """Codex credits, when the server reports them."""
    extra_usage: Optional[models.ExtraUsage] = None
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
        return models.AccountDetails(self.plan, self.credits, self.extra_usage)

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
