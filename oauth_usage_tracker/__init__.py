"""Claude and Codex subscription quota for every account CLIProxyAPI holds, with safe token refresh.

Importing the package does no I/O and configures no logging.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, List

from .config import Settings
from .errors import (
    ConfigurationError,
    CredentialError,
    LockTimeout,
    ProviderError,
    RefreshSuperseded,
    TokenRefreshError,
    UsageTrackerError,
)
from .models import AuthAccount, Discovery, Provider, Skipped

__version__ = "0.1.0"

# Imported on first use, so that `--version`, `--help` and a bad flag do not pay for requests,
# and a run's request goes out before an answer's classes exist (`models` defers those).
_LAZY = {"OAuthUsageTracker": "tracker", "RefreshHandle": "tracker",
         "discover_accounts": "accounts", "discover_remote": "remote", "Event": "events",
         "EventType": "events", "Thresholds": "events", "AccountUsage": "models",
         "UsageWindow": "models"}


if TYPE_CHECKING:  # what the lazy names below are, for type checkers and editors
    from .accounts import discover_accounts
    from .events import Event, EventType, Thresholds
    from .models import AccountUsage, UsageWindow
    from .remote import discover_remote
    from .tracker import OAuthUsageTracker, RefreshHandle


def __getattr__(name: str) -> Any:
    """Import a lazily loaded public name on first use."""
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module("." + _LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def __dir__() -> List[str]:
    """The package's names, the lazily loaded ones among them."""
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AccountUsage", "AuthAccount", "ConfigurationError", "CredentialError", "Discovery",
    "Event", "EventType", "Thresholds",
    "LockTimeout", "OAuthUsageTracker", "Provider", "ProviderError", "RefreshHandle",
    "RefreshSuperseded", "Settings", "Skipped", "TokenRefreshError", "UsageTrackerError",
    "UsageWindow", "__version__", "discover_accounts", "discover_remote",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
