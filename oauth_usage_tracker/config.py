"""Settings: endpoints (with the https-or-loopback policy), user agents, timeout, workers. Pure."""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, fields, replace
from typing import Any, Dict, Mapping, Optional

from .errors import ConfigurationError

CODEX_USAGE_URL = "https://chatgpt.com/backend-api/wham/usage"
CLAUDE_USAGE_URL = "https://api.anthropic.com/api/oauth/usage"
CLAUDE_TOKEN_URL = "https://platform.claude.com/v1/oauth/token"
CLAUDE_CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"

# The token endpoint turns clients away by User-Agent (python-requests, curl and claude-code get
# 429, claude-cli 404, none 403); CLIProxyAPI's axios agent is let through.
CLAUDE_TOKEN_USER_AGENT = "axios/1.15.2"
# The usage endpoint answers 429 far less often to the agent Claude Code's own /usage sends.
CLAUDE_USER_AGENT = "claude-code/2.1.0"
CODEX_USER_AGENT = "codex-cli"

DEFAULT_TIMEOUT = 15.0
#: Parallel fetches when not set: the pool's size (threads start as work arrives).
DEFAULT_WORKERS = 16
MAX_BODY_BYTES = 1024 * 1024

ENV_PREFIX = "OAUTH_USAGE_TRACKER_"
#: The environment variable that overrides each endpoint (the `Settings` field it sets).
URL_ENV = {
    "codex_usage_url": ENV_PREFIX + "CODEX_USAGE_URL",
    "claude_usage_url": ENV_PREFIX + "CLAUDE_USAGE_URL",
    "claude_token_url": ENV_PREFIX + "CLAUDE_TOKEN_URL",
}
_URL_NAMES = {"codex_usage_url": "Codex usage", "claude_usage_url": "Claude usage",
              "claude_token_url": "Claude token"}
_AGENT_ENV = {
    "claude_user_agent": ENV_PREFIX + "CLAUDE_USER_AGENT",
    "claude_token_user_agent": ENV_PREFIX + "CLAUDE_TOKEN_USER_AGENT",
}


@dataclass(frozen=True)
class Settings:
    """Everything a fetch needs to know besides the account itself."""

    codex_usage_url: str = CODEX_USAGE_URL
    claude_usage_url: str = CLAUDE_USAGE_URL
    claude_token_url: str = CLAUDE_TOKEN_URL
    timeout: float = DEFAULT_TIMEOUT
    """Seconds each request may take, connect and body included."""
    workers: Optional[int] = None
    """Pool size; None means min(16, number of accounts)."""
    allow_token_refresh: bool = True
    include_expired: bool = False
    codex_user_agent: str = CODEX_USER_AGENT
    claude_user_agent: str = CLAUDE_USER_AGENT
    claude_token_user_agent: str = CLAUDE_TOKEN_USER_AGENT
    max_body_bytes: int = MAX_BODY_BYTES

    def __post_init__(self) -> None:
        for name in URL_ENV:
            check_url(getattr(self, name), _URL_NAMES[name])
        for name in _AGENT_ENV:
            if not re.fullmatch(r"[\x20-\x7e]+", getattr(self, name)):
                raise ConfigurationError("The %s must be printable ASCII (set by %s)"
                                         % (name.replace("_", " "), _AGENT_ENV[name]))
        if not (0 < self.timeout <= 600):
            raise ConfigurationError("The timeout must be between 0 and 600 seconds, not %s."
                                     % self.timeout)
        if self.workers is not None and not (1 <= self.workers <= 256):
            raise ConfigurationError("Workers must be between 1 and 256, not %s." % self.workers)

    @property
    def lock_timeout(self) -> float:
        """How long to wait for another process's token refresh: its request, its re-read poll."""
        return 3 * self.timeout + 5

    @classmethod
    def from_environ(cls, environ: Optional[Mapping[str, str]] = None,
                     **overrides: Any) -> "Settings":
        """Given the environment (default os.environ) and explicit values, return Settings.
        Explicit values that are not None win over the environment. Raise ConfigurationError for a
        refused URL or a bad number."""
        environ = os.environ if environ is None else environ
        values: Dict[str, Any] = {}
        for name, variable in list(URL_ENV.items()) + list(_AGENT_ENV.items()):
            if environ.get(variable):
                values[name] = environ[variable].strip()
        known = {f.name for f in fields(cls)}
        for name, value in overrides.items():
            if name not in known:
                raise TypeError("unknown setting %r" % name)
            if value is not None:
                values[name] = value
        return cls(**values)

    def with_(self, **changes: Any) -> "Settings":
        """Return a copy with some fields changed (validated again)."""
        return replace(self, **changes)


def is_loopback_host(host: str) -> bool:
    """Given a host as urllib3 parses it, return True for `localhost`, an IPv4 address in
    127.0.0.0/8 written as four decimal parts, and `::1`. Other spellings that a resolver might
    also take for loopback (`127.1`, `0x7f.0.0.1`, `2130706433`, `localhost.`) are not
    recognised: where they lead depends on the resolver, so they count as remote."""
    host = host.lower()
    if host == "localhost":
        return True
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    # An IPv4-mapped IPv6 address (::ffff:127.0.0.1) is loopback to some Python versions and not
    # to others; it is not in the documented list, so it is refused everywhere.
    return address.is_loopback and not (address.version == 6 and address.ipv4_mapped)


# What an endpoint's authority (between `//` and the path) may hold: a host name or address
# and a port. No userinfo (`@`), no `\` (urllib3 ends the authority there, other parsers do
# not), no `%`, whitespace, controls or non-ASCII: each lets two parsers disagree about the host.
_AUTHORITY = re.compile(r"[A-Za-z0-9.\-_:\[\]]+")


def endpoint_host(url: str) -> Optional[str]:
    """Given an endpoint URL, return the host urllib3 (the library that connects) finds in it,
    lower case, IPv6 in brackets; None when urllib3 cannot parse it or it has no host."""
    from urllib3.exceptions import LocationParseError
    from urllib3.util import parse_url  # imported here: --version and --help stay fast
    try:
        return parse_url(url).host or None
    except (LocationParseError, ValueError):
        return None


def redacted_url(url: str) -> str:
    """Given a URL as someone wrote it (parseable or not), return it fit to quote in a message:
    a user name or password (`user:pass@`) and a query or fragment (`?key=...`) are replaced by
    `...`, since a secret pasted there must not reach a log. Total: never raises."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    tail = rest[len(authority):]
    if "@" in authority:
        authority = "...@" + authority.rpartition("@")[2]
    path = re.split(r"[?#]", tail, maxsplit=1)[0]
    mark = tail[len(path):len(path) + 1]
    return "%s%s%s%s%s" % (scheme, separator, authority, path, mark + "..." if mark else "")


def check_url(url: str, name: str = "endpoint") -> str:
    """Given an endpoint URL, return it if it is https://, or http:// to a loopback address,
    as urllib3 reads it, with an authority of host and port only. Raise ConfigurationError
    otherwise (before any token is read)."""
    scheme, separator, rest = url.partition("://")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    scheme = scheme.lower()
    host = endpoint_host(url) if separator and _AUTHORITY.fullmatch(authority) else None
    if host and "\\" not in url and not re.search(r"[\s\x00-\x1f\x7f]", url):
        if scheme == "https":
            return url
        if scheme == "http" and is_loopback_host(host):
            return url
    raise ConfigurationError(
        "Refused %s URL %s: only https:// URLs, or http:// to a loopback address, with no user "
        "name, backslash, space or control character, are allowed." % (name,
                                                                      ascii(redacted_url(url))))


#: Remote CLIProxyAPI (its management API): proxy URLs, the management key, calls per proxy.
CPA_URL_ENV = ENV_PREFIX + "CPA_URL"
CPA_KEY_ENV = ENV_PREFIX + "CPA_KEY"
DEFAULT_CPA_WORKERS = 4
