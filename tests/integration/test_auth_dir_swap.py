"""The auth directory swapped for a symlink to another directory, as root, the way cron runs it.

The auth directory's parent belongs to a second uid (nobody), so that uid can `mv auth auth.old;
ln -s <elsewhere> auth` at any moment. Elsewhere is a root-only directory holding a decoy
credential under the same name. Discovery records the directory it listed; a usage read or a
refresh that finds another directory at the path must refuse: nothing created or changed in the
decoy directory, the decoy's tokens never reach the loopback fake, and the account says why.

    root: discovery lists home/auth        nobody: mv home/auth home/auth.old
    root: GET usage (attacker's token)     nobody: ln -s /root-only home/auth
    fake: 401                              root: refresh through home/auth -> the decoy's file
"""
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from oauth_usage_tracker import demo
from oauth_usage_tracker.accounts import discover_accounts
from oauth_usage_tracker.tracker import OAuthUsageTracker

from support import IS_ROOT, OTHER_GID, OTHER_UID, run_as

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="root reading a directory of another uid")

SCRIPT = shutil.which("oauth-usage-tracker")
COMMAND = [SCRIPT] if SCRIPT else [sys.executable, "-m", "oauth_usage_tracker"]
NAME_EMAIL = "x@example.com"
ATTACKER = ("attacker-access-token", "attacker-refresh-token")
DECOY = ("decoy-root-access-token", "decoy-root-refresh-token")
REFUSED = "The auth directory was replaced since it was read; not "


def swap(auth: str, elsewhere: str) -> str:
    """As nobody, owner of auth's parent: move the directory away, put a symlink in its place."""
    os.rename(auth, auth + ".old")
    os.symlink(elsewhere, auth)
    return os.readlink(auth)


def snapshot(directory: Path) -> Dict[str, Tuple[int, int, int, int, Optional[str]]]:
    """Every entry of `directory`: type, mode, owner, content hash."""
    found = {}
    for name in sorted(os.listdir(directory)):
        info = os.lstat(directory / name)
        digest = None
        if stat.S_ISREG(info.st_mode):
            digest = hashlib.sha256((directory / name).read_bytes()).hexdigest()
        found[name] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_uid,
                       info.st_gid, digest)
    return found


class SwappingFake(demo.FakeProviders):
    """The loopback fake, recording every Authorization header; when armed, the first Claude
    usage request answers only after `swap` (a child process as nobody) has returned."""

    def __init__(self) -> None:
        super().__init__()
        self.authorizations: List[str] = []
        self.swap_during_usage: Optional[Tuple[str, str]] = None
        self.swapped = threading.Event()

    def answer(self, method, path, headers, body):
        with self._lock:
            self.authorizations.append(headers.get("Authorization", ""))
            armed = None
            if path == demo.CLAUDE_PATH:
                armed, self.swap_during_usage = self.swap_during_usage, None
        if armed is not None:
            assert run_as(OTHER_UID, OTHER_GID, swap, *armed) == armed[1]
            self.swapped.set()
        return super().answer(method, path, headers, body)


@pytest.fixture
def scene():
    """base/home (nobody's, 0755) holds auth/ with the attacker's claude and codex credentials;
    base/secret (root's, 0700) holds the decoys under the same names, whose tokens the fake
    accepts: sent, they would report root's usage."""
    base = Path(tempfile.mkdtemp(prefix="auth-dir-swap-"))
    os.chmod(base, 0o755)
    home, auth, secret = base / "home", base / "home" / "auth", base / "secret"
    auth.mkdir(parents=True)
    secret.mkdir(mode=0o700)
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    for provider in ("claude", "codex"):
        demo.write_credential(str(auth), provider, NAME_EMAIL, *ATTACKER, later)
        demo.write_credential(str(secret), provider, NAME_EMAIL, *DECOY, later)
    for path in [home, auth] + list(auth.iterdir()):
        os.chown(path, OTHER_UID, OTHER_GID)
    with SwappingFake() as fake:
        for provider in ("claude", "codex"):
            fake.add_account(demo.FakeAccount(provider, "root@example.com"), *DECOY)
        yield base, fake
    shutil.rmtree(base)


def assert_untouched(base: Path, fake: SwappingFake, before) -> None:
    assert snapshot(base / "secret") == before  # no lock, temporary or recovery file there
    assert not any(DECOY[0] in header for header in fake.authorizations), fake.authorizations
    assert fake.count(demo.TOKEN_PATH) == 0  # no refresh token left, the decoy's least of all


def test_swap_during_the_rejected_usage_request_refuses_the_refresh(scene):
    base, fake = scene
    auth = base / "home" / "auth"
    before = snapshot(base / "secret")
    fake.swap_during_usage = (str(auth), str(base / "secret"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH_USAGE_TRACKER_")}
    env.update(fake.environ(), HOME=str(base), XDG_STATE_HOME=str(base / "state"))
    result = subprocess.run(COMMAND + ["--auth-dir", str(auth), "--json", "--workers", "1"],
                            env=env, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)

    assert fake.swapped.is_set()
    assert_untouched(base, fake, before)
    assert result.returncode == 1, result.stdout + result.stderr
    accounts = {a["provider"]: a for a in json.loads(result.stdout)["accounts"]}
    # Claude's usage request met the swap: its token was rejected (the fake knows no attacker
    # token) and the refresh finds another directory. Codex went first (its token rejected, no
    # refresh for Codex) or after the swap (not read at all): the scheduler's choice.
    assert accounts["claude"]["state"] == "error", accounts["claude"]
    assert accounts["claude"]["error"] == REFUSED + "refreshing the token"
    assert accounts["codex"]["state"] in ("error", "login_failed")
    assert accounts["codex"]["error"].startswith(REFUSED) or "401" in accounts["codex"]["error"]
    assert "Traceback" not in result.stderr
    assert DECOY[0] not in result.stdout + result.stderr
    assert sorted(os.listdir(base / "home" / "auth.old")) == sorted(
        "%s-%s.json" % (provider, NAME_EMAIL) for provider in ("claude", "codex"))


def test_swap_between_discovery_and_the_fetch_refuses_the_read(scene):
    base, fake = scene
    auth = base / "home" / "auth"
    before = snapshot(base / "secret")
    found = discover_accounts(str(auth))
    assert len(found.claude) == len(found.codex) == 1
    assert run_as(OTHER_UID, OTHER_GID, swap, str(auth), str(base / "secret")) == str(
        base / "secret")

    tracker = OAuthUsageTracker(workers=2, environ=fake.environ(), state_dir=False)
    try:
        usages = tracker.refresh_and_wait(found.codex, found.claude)
    finally:
        tracker.close()

    assert_untouched(base, fake, before)
    assert fake.authorizations == []  # nothing was sent at all
    assert sorted((u.provider.value, u.state.value, u.error) for u in usages) == [
        ("claude", "error", REFUSED + "reading the credential file"),
        ("codex", "error", REFUSED + "reading the credential file")]


def test_the_next_discovery_reads_the_directory_now_at_the_path(scene):
    """A directory replaced on purpose (a restore, a new volume) is read by the next discovery:
    the identity belongs to one discovery, not to the path."""
    base, fake = scene
    auth = base / "home" / "auth"
    first = discover_accounts(str(auth))
    replacement = base / "home" / "auth.new"
    replacement.mkdir()
    demo.write_credential(str(replacement), "claude", NAME_EMAIL, *DECOY,
                          datetime.now(timezone.utc) + timedelta(hours=2))
    os.rename(auth, base / "home" / "auth.old")
    os.rename(replacement, auth)
    second = discover_accounts(str(auth))
    assert first.claude[0].directory_id != second.claude[0].directory_id
    tracker = OAuthUsageTracker(workers=1, environ=fake.environ(), state_dir=False)
    try:
        (stale,) = tracker.refresh_and_wait((), first.claude)
        (fresh,) = tracker.refresh_and_wait((), second.claude)
    finally:
        tracker.close()
    assert stale.error == REFUSED + "reading the credential file"
    assert fresh.error is None and fresh.state.value == "ok"
