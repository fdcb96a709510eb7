"""The report of one run, and the exit status it earns. Pure."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Dict, Iterator, Optional, Tuple, Union

from .errors import USAGE_ERROR  # noqa: F401  (the fourth exit status, defined with the errors)
from .models import AccountState, AccountUsage, Skipped
from .options import DEFAULT_MAX_STALE, DEFAULT_USABLE_ABOVE

OK, FAILED, BELOW_THRESHOLD = 0, 1, 3


@dataclass(frozen=True)
class Report:
    """Everything one refresh found, ready to render."""

    accounts: Tuple[AccountUsage, ...]
    """Queried accounts, sorted by provider then e-mail."""
    skipped: Tuple[Skipped, ...]
    """Files that are not usable accounts, then accounts filtered out (disabled, expired)."""
    generated_at: datetime
    duration_seconds: Optional[float] = None

    max_stale_seconds: float = DEFAULT_MAX_STALE
    """Stale values younger than this stand in for a failed fetch without failing the run."""
    usable_above: float = DEFAULT_USABLE_ABOVE
    """An account with at least this effective remaining percent counts as usable (§14)."""

    def is_failure(self, account: AccountUsage) -> bool:
        """True when the account failed: an error, unless it is no login problem and stale
        values younger than max_stale_seconds stand in for it."""
        if not account.error:
            return False
        if account.login_problem or not (account.stale and account.fetched_at):
            return True
        age = (self.generated_at - account.fetched_at).total_seconds()
        return age > self.max_stale_seconds

    @property
    def failed(self) -> Tuple[AccountUsage, ...]:
        """Accounts whose fetch failed (see is_failure)."""
        return tuple(account for account in self.accounts if self.is_failure(account))

    @property
    def unreadable(self) -> Tuple[Skipped, ...]:
        """Credential files that could not be read."""
        return tuple(s for s in self.skipped if s.state is AccountState.UNREADABLE)

    def states(self) -> Iterator[Tuple[Union[AccountUsage, Skipped], AccountState]]:
        """Every queried account and skipped credential file that has a state, with it (files
        of unsupported types have none, and an account still loading has none yet)."""
        entries: Tuple[Union[AccountUsage, Skipped], ...] = (*self.accounts, *self.skipped)
        for entry in entries:
            if entry.state is not None:
                yield entry, entry.state

    def state_counts(self) -> Dict[AccountState, int]:
        """How many credential files are in each state (every state present, 0 included)."""
        counts = {state: 0 for state in AccountState}
        for _, state in self.states():
            counts[state] += 1
        return counts

    @property
    def needing_a_human(self) -> Tuple[Skipped, ...]:
        """Skipped files whose state needs a human (`expired`, `unreadable`): they fail the run
        although nothing was queried for them."""
        return tuple(s for s in self.skipped if s.state is not None and s.state.needs_human)


def below_threshold(report: Report, fail_below: float) -> bool:
    """True when an account that did not fail has an effective remaining percent (the least
    over its account-wide windows) below `fail_below`. A model-scoped window alone never trips
    it; acceptably stale values count (they are the best figures there are)."""
    return any(account.effective_remaining_percent is not None
               and account.effective_remaining_percent < fail_below
               for account in report.accounts if not report.is_failure(account))


def exit_status(report: Report, fail_below: Optional[float] = None) -> int:
    """Given a report, return 0 when every queried account returned windows (or none was to be
    queried, stale values younger than max_stale included), 1 when one failed or a credential
    file is in a state that needs a human (`unreadable`, `expired`), 3 when `fail_below` is given
    and an account's effective remaining percent is below it (3 wins over 1)."""
    if fail_below is not None and below_threshold(report, fail_below):
        return BELOW_THRESHOLD
    if report.failed or report.needing_a_human:
        return FAILED
    return OK
