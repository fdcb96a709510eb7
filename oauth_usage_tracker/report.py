"""The report of one run, and the exit status it earns. Pure."""
from dataclasses import dataclass
from datetime import datetime
from typing import Optional, Tuple

from .models import AccountUsage, Skipped

OK, FAILED, USAGE_ERROR, BELOW_THRESHOLD = 0, 1, 2, 3


@dataclass(frozen=True)
class Report:
    """Everything one refresh found, ready to render."""

    accounts: Tuple[AccountUsage, ...]
    """Queried accounts, sorted by provider then e-mail."""
    skipped: Tuple[Skipped, ...]
    """Files that are not usable accounts, then accounts filtered out (disabled, expired)."""
    generated_at: datetime
    duration_seconds: Optional[float] = None

    @property
    def failed(self) -> Tuple[AccountUsage, ...]:
        """Accounts whose fetch failed."""
        return tuple(account for account in self.accounts if account.error)

    @property
    def unreadable(self) -> Tuple[Skipped, ...]:
        """Credential files that could not be read."""
        return tuple(s for s in self.skipped if s.reason.startswith("unreadable"))


def below_threshold(report: Report, fail_below: float) -> bool:
    """True when a fetched window has less than `fail_below` percent left."""
    return any(window.remaining_percent is not None and window.remaining_percent < fail_below
               for account in report.accounts if not account.error
               for window in account.windows)


def exit_status(report: Report, fail_below: Optional[float] = None) -> int:
    """Given a report, return 0 when every queried account returned windows (or none was to be
    queried), 1 when one failed or a credential file was unreadable, 3 when `fail_below` is given
    and a window has less left (3 wins over 1)."""
    if fail_below is not None and below_threshold(report, fail_below):
        return BELOW_THRESHOLD
    if report.failed or report.unreadable:
        return FAILED
    return OK
