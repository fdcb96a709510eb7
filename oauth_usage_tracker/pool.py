"""The pool view: which accounts are usable now, in what order to show them, and when the next
one frees up (SPEC §14). Pure: reads a Report, returns values."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Dict, List, Optional, Sequence, Tuple

from .models import AccountState, AccountUsage, Provider
from .options import SORTS
from .report import Report

#: The states of an account that takes work (a failing one is freed by a person, not a reset).
_WORKING = (AccountState.OK, AccountState.STALE)


def is_usable(account: AccountUsage, usable_above: float) -> bool:
    """True when the account can take work now: fetched (or acceptably stale) and its effective
    remaining percent is at least `usable_above`."""
    effective = account.effective_remaining_percent
    return (account.state in _WORKING
            and effective is not None and effective >= usable_above)


def frees_at(account: AccountUsage, usable_above: float) -> Optional[datetime]:
    """Given an account that is not usable for lack of quota, return when it will be: the
    latest reset among its account-wide windows below `usable_above` (each must reset). None
    when one of them has no reset moment, or the account is not short of quota at all."""
    short = [w for w in account.account_wide_windows
             if w.remaining_percent is not None and w.remaining_percent < usable_above]
    if not short or any(w.reset_date is None for w in short):
        return None
    return max(w.reset_date for w in short if w.reset_date is not None)


def binding_reset(account: AccountUsage) -> Optional[datetime]:
    """The reset of the account-wide window that sets the effective remaining percent (the
    latest, when several are equally low), or None when unknown."""
    effective = account.effective_remaining_percent
    resets = [w.reset_date for w in account.account_wide_windows
              if w.remaining_percent == effective and w.reset_date is not None]
    return max(resets) if resets else None


def _name_key(account: AccountUsage) -> Tuple[str, str, str]:
    return (account.provider.value, (account.email or "").casefold(), account.id)


def sort_accounts(accounts: Sequence[AccountUsage], by: str = "name") -> List[AccountUsage]:
    """Given accounts and a sort (`name`, `headroom`, `reset`), return them in that order:
    `name` by provider then e-mail (the tracker's order); `headroom` most effective remaining
    first; `reset` soonest binding reset first. Unknown values go last; ties keep name order."""
    if by not in SORTS:
        raise ValueError("unknown sort %r" % by)
    if by == "headroom":
        def key(account: AccountUsage) -> Tuple[bool, float, Tuple[str, str, str]]:
            effective = account.effective_remaining_percent
            return (effective is None, -(effective or 0.0), _name_key(account))
    elif by == "reset":
        def key(account: AccountUsage) -> Tuple[bool, float, Tuple[str, str, str]]:
            reset = binding_reset(account)
            return (reset is None, reset.timestamp() if reset else 0.0, _name_key(account))
    else:
        def key(account: AccountUsage) -> Tuple[bool, float, Tuple[str, str, str]]:
            return (False, 0.0, _name_key(account))
    return sorted(accounts, key=key)


@dataclass(frozen=True)
class ProviderSummary:
    """One provider's accounts at a glance."""

    provider: Provider
    states: Dict[AccountState, int] = field(default_factory=dict)
    """How many credential files are in each state (only states that occur)."""
    usable: int = 0
    """Accounts with an effective remaining percent at or above the threshold."""
    next_free: Optional[datetime] = None
    """The earliest moment a reset makes another account usable, or None."""
    next_free_account: Optional[AccountUsage] = None

    @property
    def total(self) -> int:
        """Every credential file of this provider that has a state."""
        return sum(self.states.values())


def summarize(report: Report) -> List[ProviderSummary]:
    """Given a report, return one summary per provider that has a credential file, Claude
    first: states of queried and skipped accounts, usable ones at `report.usable_above`, and the
    next reset that frees one (ties: the first account in name order)."""
    summaries = []
    for provider in sorted(Provider, key=lambda p: p.value):
        accounts = [a for a in report.accounts if a.provider == provider and not a.is_loading]
        states: Dict[AccountState, int] = {}
        for state in [a.state for a in accounts] + [
                s.state for s in report.skipped if s.provider == provider]:
            if state is not None:
                states[state] = states.get(state, 0) + 1
        if not states:
            continue
        usable = sum(1 for a in accounts if is_usable(a, report.usable_above))
        waiting = []
        for account in accounts:
            if account.state not in _WORKING:
                continue
            moment = frees_at(account, report.usable_above)
            if moment is not None and moment > report.generated_at:
                waiting.append((moment, _name_key(account), account))
        first = min(waiting, key=lambda item: (item[0], item[1])) if waiting else None
        order = list(AccountState)
        summaries.append(ProviderSummary(
            provider, dict(sorted(states.items(), key=lambda item: order.index(item[0]))),
            usable, first[0] if first else None, first[2] if first else None))
    return summaries


def unattributed_unreadable(report: Report) -> int:
    """Unreadable credential files whose provider is unknown (they count in no provider)."""
    return sum(1 for s in report.skipped if s.provider is None
               and s.state is AccountState.UNREADABLE)
