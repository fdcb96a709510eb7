"""Claude and Codex subscription quota for every account CLIProxyAPI holds, with safe token refresh.

Importing the package does no I/O and configures no logging.
"""
import logging

from .accounts import discover_accounts
from .config import Settings
from .errors import (ConfigurationError, CredentialError, LockTimeout, ProviderError,
                     RefreshSuperseded, TokenRefreshError, UsageTrackerError)
from .models import AccountUsage, AuthAccount, Discovery, Provider, Skipped, UsageWindow
from .tracker import OAuthUsageTracker, RefreshHandle

__version__ = "0.1.0"

__all__ = [
    "AccountUsage", "AuthAccount", "ConfigurationError", "CredentialError", "Discovery",
    "LockTimeout", "OAuthUsageTracker", "Provider", "ProviderError", "RefreshHandle",
    "RefreshSuperseded", "Settings", "Skipped", "TokenRefreshError", "UsageTrackerError",
    "UsageWindow", "__version__", "discover_accounts",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
