"""Each credential file's state in a run (SPEC §13), decided from values, and the log line that
says it. Pure apart from logging.

The state is decided from what the failure carries (`unreadable`, `login_problem`,
`token_expired`, `blocked`, the HTTP status), never from the sentence written for people:
rewording a message must not turn a dead login into a passing fault.
"""
from __future__ import annotations

import logging
from typing import Optional

from .errors import UsageTrackerError
from .models import AccountState

logger = logging.getLogger(__name__)

#: What to do, for the states that need a human (added to the log line).
ADVICE = {
    AccountState.EXPIRED: "not queried: the access token expired and CLIProxyAPI did not refresh "
                          "it; log in again with CLIProxyAPI, or run with --refresh-expired to "
                          "refresh it here",
    AccountState.UNREADABLE: "the credential file cannot be read; repair or remove it",
}


def failure_state(error: UsageTrackerError, has_values: bool) -> AccountState:
    """Given the error of a failed fetch and whether last good values stand in for it, return
    the account's state. A credential file gone bad since discovery, then a login problem, win
    over everything (stale values or not), then an expired token that may not be refreshed;
    otherwise `stale` when values are shown, else `rate_limited` (429), `blocked` (an HTML page
    instead of JSON) or `error`."""
    if error.unreadable:
        return AccountState.UNREADABLE
    if error.login_problem:
        return AccountState.LOGIN_FAILED
    if error.token_expired:
        return AccountState.EXPIRED
    if has_values:
        return AccountState.STALE
    if getattr(error, "status", None) == 429:
        return AccountState.RATE_LIMITED
    if error.blocked:
        return AccountState.BLOCKED
    return AccountState.ERROR


def cooldown_state(has_values: bool) -> AccountState:
    """Given whether last good values exist, return the state of an account not asked in this
    run because a 429 cooldown is running: `stale` with values, else `rate_limited`."""
    return AccountState.STALE if has_values else AccountState.RATE_LIMITED


def log_level(state: AccountState) -> int:
    """Given a state, return the level it is logged at: ERROR when it needs a human (so `-q`
    in cron still mails it and a failed systemd unit explains itself), INFO for `ok` and
    `disabled` (nothing is wrong), WARNING for the rest."""
    if state.needs_human:
        return logging.ERROR
    if state in (AccountState.OK, AccountState.DISABLED):
        return logging.INFO
    return logging.WARNING


def log_state(account_id: str, state: AccountState, detail: Optional[str] = None) -> None:
    """Log one account's state as `<file>: <state>: <detail>` at the state's level; the advice
    for a state that needs a human is added when no detail is given."""
    detail = detail or ADVICE.get(state)
    if detail:
        logger.log(log_level(state), "%s: %s: %s", account_id, state.value, detail)
    else:
        logger.log(log_level(state), "%s: %s", account_id, state.value)
