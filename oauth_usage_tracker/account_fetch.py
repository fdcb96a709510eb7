"""One account's turn in a refresh: what is stored decides whether anyone is asked
(`state.plan_fetch`), the fetch runs, and its outcome becomes the account's result, state
(`outcome`) and new stored entry (`state`). No threads, no locks: the tracker runs this on its
pool."""
from __future__ import annotations

import logging
import traceback
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

from . import models, outcome, pace
from .config import Settings
from .errors import UsageTrackerError
from .models import LOCAL_SOURCE, AuthAccount
from .models import AccountState as State
from .state import Plan, after_failure, cooldown_message, from_store, next_state, plan_fetch
from .stored import AccountState, Stored

if TYPE_CHECKING:  # made once an answer arrives (result.py): looked up through models when made
    from .models import AccountUsage

logger = logging.getLogger(__name__)

#: A provider's fetch: (account, session, settings) -> AccountUsage, raising UsageTrackerError.
Fetcher = Callable[..., "AccountUsage"]
Outcome = Tuple["AccountUsage", Optional[AccountState]]


def account_name(account: AuthAccount) -> str:
    """The account as logs name it: its id, prefixed by its source when that is a proxy."""
    return account.id if account.source == LOCAL_SOURCE else "%s/%s" % (account.source, account.id)


def fetch_account(account: AuthAccount, entry: Optional[Stored], fetch: Fetcher,
                  session: Any, settings: Settings, keep_state: bool,
                  max_age: float) -> Outcome:
    """Given an account, its stored entry (None: none), the fetch that reads it, the session
    and settings, whether state is kept and the max age of a reusable result, return its
    AccountUsage (state decided) and the entry to store (None: nothing new). Never raises: every
    failure becomes the account's error."""
    try:
        usage, new_entry = _fetch_with_state(account, entry, fetch, session, settings,
                                             keep_state, max_age)
    except Exception as error:
        usage, new_entry = _unexpected(account, error), None
    if usage.source != account.source:  # the success path sets it with its other fields
        usage = replace(usage, source=account.source)
    return usage, new_entry


def _fetch_with_state(account: AuthAccount, entry: Optional[Stored], fetch: Fetcher,
                      session: Any, settings: Settings, keep_state: bool,
                      max_age: float) -> Outcome:
    now = datetime.now(timezone.utc)
    plan = plan_fetch(entry if keep_state else None, now, max_age)
    if plan is Plan.REUSE and entry is not None:
        return replace(from_store(account, entry, now, stale=False), state=State.OK), None
    if plan is Plan.COOL_DOWN and entry is not None:
        state = outcome.cooldown_state(bool(entry.windows))
        outcome.log_state(account_name(account), state, cooldown_message(entry))
        return replace(from_store(account, entry, now, stale=True,
                                  error=cooldown_message(entry)),
                       state=state, cooldown_until=entry.cooldown_until), None
    try:
        usage = fetch(account, session, settings)
    except UsageTrackerError as error:
        new_entry = after_failure(entry, now, getattr(error, "status", None),
                                  getattr(error, "retry_after", None))
        failed = from_store(account, new_entry, now, stale=True, error=str(error),
                            login_problem=error.login_problem,
                            token_refreshed=error.token_refreshed)
        state = outcome.failure_state(error, failed.stale)
        outcome.log_state(account_name(account), state, str(error))
        cooling = keep_state and new_entry.cooling_down(now)
        return replace(failed, state=state,
                       cooldown_until=new_entry.cooldown_until if cooling else None), new_entry
    readings = entry.readings if entry is not None else {}
    usage = replace(usage, fetched_at=usage.updated_at or now, state=State.OK,
                    windows=pace.attach(usage.windows, usage.updated_at or now, readings),
                    source=account.source)
    return usage, next_state(entry, now, windows=usage.windows, details=usage.details)


def _unexpected(account: AuthAccount, error: Exception) -> AccountUsage:
    """An exception nobody planned for, as the account's error. Its message is not logged (it
    could quote a header, token included): only its type and where it was raised."""
    logger.error("%s: unexpected %s while fetching usage", account.id, type(error).__name__)
    logger.debug("%s: raised at\n%s", account.id,
                 "".join(traceback.format_tb(error.__traceback__)).rstrip())
    return models.AccountUsage(id=account.id, provider=account.provider, email=account.email,
                               state=State.ERROR,
                               error="Unexpected error while fetching usage (%s); run with -vv for "
                              "details" % type(error).__name__)
