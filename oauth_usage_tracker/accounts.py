"""Finding the accounts: the credential files in CLIProxyAPI's auth directory. Read-only."""
from __future__ import annotations

import logging
import os
import stat
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from .authdir import AuthDirectory, DirectoryId, UnsafeFile
from .config import ENV_PREFIX
from .credentials import UnparsedFile, read_in_rounds, read_json_once
from .errors import ConfigurationError, CredentialError
from .models import LOCAL_SOURCE, AccountState, AuthAccount, Discovery, Provider, Skipped
from .outcome import log_state
from .parsing import parse_timestamp
from .text import printable

logger = logging.getLogger(__name__)

AUTH_DIR_ENV = ENV_PREFIX + "AUTH_DIR"
DEFAULT_AUTH_DIR = "~/.cli-proxy-api"
#: How the reason of an unreadable file starts (the why follows); read by people, not decided on.
UNREADABLE_REASON = "unreadable: "


def resolve_auth_dir(auth_dir: Union[str, "os.PathLike[str]", None] = None,
                     environ: Optional[Mapping[str, str]] = None) -> str:
    """Given an explicit directory (or None) and the environment, return the auth directory:
    the argument, else $OAUTH_USAGE_TRACKER_AUTH_DIR, else ~/.cli-proxy-api, with ~ expanded."""
    environ = os.environ if environ is None else environ
    chosen = auth_dir if auth_dir else (environ.get(AUTH_DIR_ENV) or DEFAULT_AUTH_DIR)
    return os.path.abspath(os.path.expanduser(os.fspath(chosen)))


def discover_accounts(auth_dir: Union[str, "os.PathLike[str]", None] = None,
                      environ: Optional[Mapping[str, str]] = None) -> Discovery:
    """Given an auth directory (see resolve_auth_dir), return every Claude and Codex account in
    its `*.json` files, disabled and expired ones included, and the files that are not usable
    accounts with their reasons. The directory is opened once, listed and read through that
    descriptor, and its identity recorded on each account (`directory_id`), so that a later
    read or refresh refuses another directory put at the same path. Raise ConfigurationError if
    the directory does not exist or cannot be listed."""
    directory = resolve_auth_dir(auth_dir, environ)
    if not os.path.isdir(directory):
        raise ConfigurationError("Auth directory %s does not exist (set --auth-dir or %s)"
                                 % (directory, AUTH_DIR_ENV))
    found: Dict[Provider, List[AuthAccount]] = {Provider.CLAUDE: [], Provider.CODEX: []}
    skipped: List[Skipped] = []
    try:
        with AuthDirectory(directory) as auth:
            names = sorted(entry for entry in os.listdir(auth.fd) if entry.endswith(".json"))
            results = _read_all(names, auth)
            _mark_duplicates(results, auth)
    except (OSError, CredentialError) as error:
        why = error.strerror if isinstance(error, OSError) else str(error)
        raise ConfigurationError("Cannot list auth directory %s (%s)" % (directory, why)) from None
    for name in names:
        account = results[name]
        if isinstance(account, Skipped):
            if account.state is AccountState.UNREADABLE:
                log_state(name, account.state, "%s; repair or remove the file"
                          % account.reason[len(UNREADABLE_REASON):])
            else:
                logger.info("%s: skipped (%s)", name, account.reason)
            skipped.append(account)
        elif account is not None:
            found[account.provider].append(account)
    return Discovery(codex=tuple(found[Provider.CODEX]), claude=tuple(found[Provider.CLAUDE]),
                     skipped=tuple(skipped), auth_dir=directory)


def _mark_duplicates(results: Dict[str, Union[AuthAccount, Skipped, None]],
                     auth: AuthDirectory) -> None:
    """One file under two names (a symlink, a hard link) is one account: the second name would
    make a run send its refresh token twice. Keep the regular file's name, skip the others."""
    first: Dict[Tuple[int, int], str] = {}

    def is_link(name: str) -> bool:
        try:
            return stat.S_ISLNK(os.stat(name, dir_fd=auth.fd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    by_links_last = sorted((name for name, found in results.items()
                            if isinstance(found, AuthAccount)),
                           key=lambda name: (is_link(name), name))
    for name in by_links_last:
        try:
            info = os.stat(name, dir_fd=auth.fd)
        except OSError:
            continue
        key = (info.st_dev, info.st_ino)
        if key in first:
            results[name] = Skipped(name, "duplicate of '%s'" % first[key])
        else:
            first[key] = name


def _read_all(names: List[str], auth: AuthDirectory
              ) -> Dict[str, Union[AuthAccount, Skipped, None]]:
    """Read every entry; the ones that do not parse (perhaps caught mid-rewrite) are read again
    together (credentials.read_in_rounds), then reported unreadable."""
    found = read_in_rounds(names, lambda name: _read_account(name, auth))
    return {name: unreadable(name, str(value)) if isinstance(value, UnparsedFile) else value
            for name, value in found.items()}


def _read_account(name: str, auth: AuthDirectory) -> Union[AuthAccount, Skipped, None]:
    """Return the account in one entry of the open directory, a Skipped record, or None for a
    sub-folder. Raise UnparsedFile when the file does not parse (the caller reads it again)."""
    try:
        is_link = stat.S_ISLNK(os.stat(name, dir_fd=auth.fd, follow_symlinks=False).st_mode)
    except OSError:
        return None  # removed since the directory was listed
    if is_link:
        try:
            auth.inside(os.readlink(name, dir_fd=auth.fd))
        except (OSError, UnsafeFile):
            return unreadable(name, "symlink points outside the auth directory")
    try:
        info = os.stat(name, dir_fd=auth.fd)
    except OSError:
        return unreadable(name, "broken symlink") if is_link else None
    if stat.S_ISDIR(info.st_mode):
        return None
    if not stat.S_ISREG(info.st_mode):
        return unreadable(name, "not a regular file")
    path = os.path.join(auth.path, name)
    try:
        data = read_json_once(path, auth=auth)
    except UnparsedFile:
        raise
    except CredentialError as error:
        return unreadable(name, str(error))
    return account_from_json(name, path, data, auth.identity)


def account_from_json(name: str, path: str, data: Dict[str, Any],
                      directory_id: Optional[DirectoryId] = None) -> Union[AuthAccount, Skipped]:
    """Given a file name, its path, its JSON object and its directory's identity, return the
    AuthAccount it describes, or a Skipped record when its `type` is missing or not
    Claude/Codex. Pure."""
    raw_type = data.get("type")
    if not isinstance(raw_type, str) or not raw_type.strip():
        return unreadable(name, "no \"type\" field")
    kind = raw_type.strip().lower()
    try:
        provider = Provider(kind)
    except ValueError:
        return Skipped(name, "unsupported type '%s'" % _printable(kind))
    email = _text(data.get("email"))
    display_name = email or _text(data.get("login")) or name
    disabled = data.get("disabled")
    if "disabled" in data and not isinstance(disabled, bool):
        logger.debug("%s: ignoring non-boolean \"disabled\" value", name)
    return AuthAccount(id=name, provider=provider, email=email, display_name=display_name,
                       path=path, expired=parse_timestamp(data.get("expired")),
                       is_disabled=disabled is True, directory_id=directory_id)


def unreadable(name: str, why: str, provider: Optional[Provider] = None,
               email: Optional[str] = None, source: str = LOCAL_SOURCE) -> Skipped:
    """Given a credential's name and why it cannot be used, return its Skipped record
    (`unreadable`)."""
    return Skipped(name, UNREADABLE_REASON + why, provider, email,
                   state=AccountState.UNREADABLE, source=source)


def _text(value: Any) -> Optional[str]:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _printable(text: str, limit: int = 40) -> str:
    return printable(text[:limit]) + ("…" if len(text) > limit else "")


def select_accounts(accounts: Iterable[AuthAccount], include_expired: bool = False
                    ) -> Tuple[List[AuthAccount], List[Skipped]]:
    """Given accounts, return those to query (enabled, and not expired unless
    `include_expired`) and Skipped records for the others (`disabled`, `expired`)."""
    kept, skipped = [], []
    for account in accounts:
        state = None
        if account.is_disabled:
            state = AccountState.DISABLED
        elif account.is_expired and not include_expired:
            state = AccountState.EXPIRED
        if state is None:
            kept.append(account)
        else:
            skipped.append(Skipped(account.id, state.value, account.provider, account.email,
                                   state=state, source=account.source))
    return kept, skipped
