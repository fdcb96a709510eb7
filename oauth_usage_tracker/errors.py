"""The one small error tree. Every message is a sentence for a person and never holds a token."""
from __future__ import annotations

from typing import Optional


class UsageTrackerError(Exception):
    """Root of every error this package raises on purpose."""

    #: True when the login itself is broken (the user must act), not a passing fault.
    login_problem = False
    #: True when the failing fetch had already rotated and written the account's tokens.
    token_refreshed = False
    #: True when the access token has expired and this run may not refresh it.
    token_expired = False
    #: True when the credential file itself cannot be read or parsed.
    unreadable = False
    #: True when an HTML page (a CDN challenge, a login wall) answered instead of the API.
    blocked = False


class ConfigurationError(UsageTrackerError, ValueError):
    """A flag, environment variable or directory is unusable (the script exits 2)."""


#: The script's exit status for a bad flag or a ConfigurationError (a report earns 0, 1 or 3:
#: report.exit_status).
USAGE_ERROR = 2


class CredentialError(UsageTrackerError):
    """A credential file cannot be read, or lacks what the request needs."""

    def __init__(self, message: str, *, login_problem: bool = False,
                 token_expired: bool = False, unreadable: bool = False):
        super().__init__(message)
        self.login_problem = login_problem
        self.token_expired = token_expired
        self.unreadable = unreadable


class LockTimeout(CredentialError):
    """Another process held a credential file's lock for longer than we wait."""


class TokenRefreshError(UsageTrackerError):
    """The token endpoint did not give new tokens; `invalid_grant` says the login is spent."""

    def __init__(self, message: str, *, invalid_grant: bool = False, status: Optional[int] = None,
                 retry_after: Optional[float] = None, outcome_unknown: bool = False,
                 blocked: bool = False):
        super().__init__(message)
        self.invalid_grant = invalid_grant
        self.blocked = blocked
        #: True when the server may have spent the token without our seeing the answer.
        self.outcome_unknown = outcome_unknown
        self.login_problem = invalid_grant
        self.status = status
        self.retry_after = retry_after


class ProviderError(UsageTrackerError):
    """A usage endpoint failed: a status, a timeout, a dead connection or an unusable body."""

    def __init__(self, message: str, *, status: Optional[int] = None,
                 retry_after: Optional[float] = None, body: object = None,
                 login_problem: bool = False, unsent: bool = False, blocked: bool = False):
        super().__init__(message)
        self.login_problem = login_problem
        self.blocked = blocked
        #: True when the request certainly never reached the server (refused, no such host).
        self.unsent = unsent
        self.status = status
        self.retry_after = retry_after
        #: The decoded JSON error body, when there was one (never shown to people as is).
        self.body = body


class RefreshSuperseded(UsageTrackerError):
    """A newer `refresh()` replaced this one before it finished."""
