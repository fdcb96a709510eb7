"""Remote CLIProxyAPI: the accounts of a proxy that runs elsewhere, read through its management
API (see `management`).

The proxy lists its credentials and relays a usage request with a credential's own token
(`$TOKEN$` in a header value, filled in by the proxy). This side never sees a token, never
refreshes one and never writes to the proxy: it only lists and reads, with the same request
headers and the same interpretation of the answer as a local read.
"""
from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import requests

from . import http
from .accounts import unreadable
from .config import DEFAULT_CPA_WORKERS, Settings
from .errors import ProviderError, UsageTrackerError
from .lockout import RejectedKeys
from .management import Proxy
from .models import AccountUsage, AuthAccount, Discovery, Provider, Skipped
from .parsing import format_timestamp
from .providers import claude, codex
from .state import default_state_dir, split_remote_key
from .text import printable

logger = logging.getLogger(__name__)

TOKEN_PLACEHOLDER = "$TOKEN$"
_AUTH_INDEX = re.compile(r"[0-9A-Za-z_.:-]{1,128}")


@dataclass(frozen=True)
class RemoteAccount:
    """How to reach one listed credential through its proxy."""

    proxy: "Proxy" = field(repr=False, compare=False)
    auth_index: str = ""
    """The proxy's handle for the credential; listed again on every run, never cached."""
    account_id: Optional[str] = None
    """Codex: the ChatGPT account id from the listing's id_token claims."""


def _text(value: Any) -> Optional[str]:
    return value.strip() if isinstance(value, str) and value.strip() else None


#: A proxy's listing is read up to this many entries; the rest are one skipped record. A proxy
#: is no bigger in practice, and each account can cost an event, a hook run and a request.
MAX_LISTED = 5000
#: A longer name is no credential file's (a file system's limit): the entry is unusable.
MAX_NAME = 255
#: The ids of the per-proxy records for listing entries that cannot be read (fixed, so that
#: events remember them from one run to the next whatever the count).
BEYOND_CAP_ID = "(listing entries beyond %d)" % MAX_LISTED
UNUSABLE_ID = "(unusable listing entries)"
#: How many names of unusable entries the record quotes.
_EXAMPLES = 3

_NOT_OBJECT, _NO_NAME, _NO_INDEX = "not an object", "without a usable name", "without auth_index"


def _entry(raw: Any, proxy: "Proxy") -> Tuple[Optional[AuthAccount], Optional[Skipped],
                                               Optional[str]]:
    """One listing entry as an account, a skipped record, or (for an entry that cannot be
    read at all) the problem's name, collapsed with the others into one record by the caller."""
    source = proxy.source
    if not isinstance(raw, dict):
        return None, None, _NOT_OBJECT
    name = _text(raw.get("name")) or ""
    if not name or len(name) > MAX_NAME:
        return None, None, _NO_NAME
    kind = (_text(raw.get("type")) or _text(raw.get("provider")) or "").lower()
    try:
        provider = Provider(kind)
    except ValueError:
        return None, Skipped(name, "unsupported type '%s'" % printable(kind[:40]),
                             source=source), None
    email = _text(raw.get("email"))
    auth_index = raw.get("auth_index")
    if not isinstance(auth_index, str) or not _AUTH_INDEX.fullmatch(auth_index):
        return None, None, _NO_INDEX
    claims = raw.get("id_token")
    account_id = _text(claims.get("chatgpt_account_id")) if isinstance(claims, dict) else None
    return AuthAccount(id=name, provider=provider, email=email, display_name=email or name,
                       path="%s#%s" % (proxy.url, name), is_disabled=raw.get("disabled") is True,
                       source=source,
                       remote=RemoteAccount(proxy, auth_index, account_id)), None, None


def _unusable(counts: Dict[str, int], examples: List[str], source: str) -> Skipped:
    """The one record for a proxy's listing entries that cannot be read, with their count."""
    total = sum(counts.values())
    parts = ["%d %s" % (counts[problem], problem) for problem in (_NOT_OBJECT, _NO_NAME, _NO_INDEX)
             if counts.get(problem)]
    why = "%d listing entr%s cannot be queried (%s)" % (
        total, "y" if total == 1 else "ies", ", ".join(parts))
    if counts.get(_NO_INDEX):
        why += "; CLIProxyAPI v6.6.63 or later lists the auth_index needed"
    if examples:
        why += "; e.g. %s" % ", ".join(printable(name[:60]) for name in examples)
    return unreadable(UNUSABLE_ID, why, source=source)


def accounts_from_listing(payload: Any, proxy: "Proxy") -> Discovery:
    """Given a decoded auth-files listing, return its Claude and Codex accounts (disabled ones
    included, flagged) and skipped records for the rest. At most MAX_LISTED entries are read
    (the rest are one record), and entries that cannot be read at all (not an object, no usable
    name, no auth_index) are one record with their count: however a proxy lists, it costs a
    bounded number of records, events and hook runs. Pure apart from the proxy reference."""
    files = payload.get("files") if isinstance(payload, dict) else None
    if not isinstance(files, list):
        raise ProviderError("CLIProxyAPI %s listing has no \"files\" list" % proxy.source)
    found: Dict[Provider, List[AuthAccount]] = {Provider.CLAUDE: [], Provider.CODEX: []}
    skipped: List[Skipped] = []
    if len(files) > MAX_LISTED:
        logger.error("%s: the listing holds %d entries; only the first %d are read",
                     proxy.source, len(files), MAX_LISTED)
        skipped.append(unreadable(BEYOND_CAP_ID, "the proxy listed %d entries; only the first "
                                  "%d are read" % (len(files), MAX_LISTED), source=proxy.source))
    counts: Dict[str, int] = {}
    examples: List[str] = []
    seen = set()
    for raw in files[:MAX_LISTED]:
        account, skip, problem = _entry(raw, proxy)
        if problem is not None:
            counts[problem] = counts.get(problem, 0) + 1
            if problem == _NO_INDEX and len(examples) < _EXAMPLES:
                examples.append(_text(raw.get("name")) or "")
            continue
        if account is not None and account.id in seen:
            skip, account = Skipped(account.id, "duplicate of '%s'" % account.id,
                                    source=proxy.source), None
        if account is not None:
            seen.add(account.id)
            found[account.provider].append(account)
        elif skip is not None:
            skipped.append(skip)
    if counts.get(_NO_INDEX):
        logger.error("%s: %d account(s) listed without auth_index cannot be queried; update "
                     "CLIProxyAPI", proxy.source, counts[_NO_INDEX])
    if counts:
        skipped.append(_unusable(counts, examples, proxy.source))
    return Discovery(codex=tuple(found[Provider.CODEX]), claude=tuple(found[Provider.CLAUDE]),
                     skipped=tuple(skipped))


def fetch_usage(account: AuthAccount, session: requests.Session,
                settings: Settings) -> AccountUsage:
    """Given an account listed by a proxy, return its AccountUsage, read through the proxy with
    the same headers and the same interpretation as a local read (but no token refresh: the
    proxy refreshes its own, so a rejected token is a login problem). Raise UsageTrackerError."""
    remote = account.remote
    if remote is None:
        raise ProviderError("This account was not listed by a remote proxy")
    if account.provider is Provider.CLAUDE:
        url, headers, what = settings.claude_usage_url, claude.usage_headers(settings), claude.WHAT
    else:
        url, what = settings.codex_usage_url, codex.WHAT
        headers = codex.usage_headers(settings, remote.account_id)
    headers["Authorization"] = "Bearer " + TOKEN_PLACEHOLDER
    response = remote.proxy.api_call(session, settings, remote.auth_index, url, headers, what)
    if account.provider is Provider.CLAUDE:
        if response.status in (401, 403) and not response.is_html:
            raise claude.rejection(response)
        return claude.usage_from_response(account, response)
    return codex.usage_from_response(account, response)


def _unlisted(proxy: Proxy, message: str, remembered: Iterable[Tuple[str, str]],
              login_problem: bool) -> Discovery:
    """A proxy that could not be listed: one `unreadable` record named after its source, and
    the accounts earlier runs read there (from the state store's keys), so that each shows its
    last values with this error instead of vanishing from the report. The proxy is stopped, so
    none of them sends a request."""
    proxy.stop(ProviderError(message, login_problem=login_problem))
    found: Dict[Provider, List[AuthAccount]] = {Provider.CLAUDE: [], Provider.CODEX: []}
    for provider_name, key in remembered:
        parts = split_remote_key(key)
        if parts is not None and parts[0] == proxy.source and provider_name in found.keys():
            name = parts[1]
            found[Provider(provider_name)].append(AuthAccount(
                id=name, provider=Provider(provider_name), email=None, display_name=name,
                path="%s#%s" % (proxy.url, name), source=proxy.source,
                remote=RemoteAccount(proxy)))
    return Discovery(codex=tuple(found[Provider.CODEX]), claude=tuple(found[Provider.CLAUDE]),
                     skipped=(unreadable(proxy.source, message, source=proxy.source),))


def list_proxy(proxy: Proxy, settings: Settings, session: Optional[requests.Session] = None,
               remembered: Iterable[Tuple[str, str]] = ()) -> Discovery:
    """Given a proxy, return its accounts. A proxy that cannot be listed (a key rejected now or
    in an earlier run, no answer, no management API) gives an `unreadable` record named after
    its source, with the reason, and its `remembered` accounts ((provider, state key) pairs)
    with nothing to ask."""
    now = datetime.now(timezone.utc)
    earlier = proxy.rejected.find(proxy.key_fingerprint, proxy.key_version, now)
    if earlier is not None:
        message = ("CLIProxyAPI at %s rejected this management key at %s (HTTP %d); not tried "
                   "again until the key changes or %s" % (
                       proxy.source, format_timestamp(earlier.at), earlier.status,
                       format_timestamp(earlier.until)))
        return _unlisted(proxy, message, remembered, login_problem=True)
    own = session is None
    session = session or http.make_session(1)
    try:
        return accounts_from_listing(proxy.list_payload(session, settings), proxy)
    except UsageTrackerError as error:
        return _unlisted(proxy, str(error), remembered, error.login_problem)
    finally:
        if own:
            session.close()


def list_proxies(proxies: Sequence[Proxy], settings: Settings,
                 remembered: Iterable[Tuple[str, str]] = ()) -> Discovery:
    """List every proxy at once (one dead proxy costs one timeout, not one per proxy) and
    return their accounts combined, in the order given."""
    if not proxies:
        return Discovery()
    remembered = list(remembered)
    with ThreadPoolExecutor(max_workers=len(proxies), thread_name_prefix="cpa-list") as pool:
        found = list(pool.map(lambda proxy: list_proxy(proxy, settings, None, remembered),
                              proxies))
    result = Discovery()
    for discovery in found:
        result = result + discovery
    return result


def discover_remote(url: str, key: str, *, workers: int = DEFAULT_CPA_WORKERS,
                    allow_http: bool = False, key_version: Optional[str] = None,
                    state_dir: Union[str, "os.PathLike[str]", bool, None] = True,
                    settings: Optional[Settings] = None) -> Discovery:
    """Given a proxy's URL and management key, return its Claude and Codex accounts as a
    Discovery (`source` set to its host:port), ready for OAuthUsageTracker.refresh. A rejected
    key is remembered in `state_dir` (True: the tracker's default state directory; None or
    False: in this process only) and not offered again for an hour unless `key_version` (e.g.
    the key file's mtime) changes. Raise ConfigurationError for a refused URL or an unusable
    key; a proxy that cannot be listed is one skipped record."""
    directory = default_state_dir() if state_dir is True else state_dir
    proxy = Proxy(url, key, workers=workers, allow_http=allow_http, key_version=key_version,
                  rejected=RejectedKeys(os.fspath(directory) if directory else None))
    return list_proxy(proxy, settings or Settings.from_environ())
