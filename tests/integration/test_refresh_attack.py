"""The refresh against a hostile auth directory (SPEC §12), as root, the way cron runs it.

The directory belongs to a second uid (nobody). Processes running as that uid flip the lock name
between a regular file, a symlink to a root-owned file outside the directory and a hard link to a
world-writable root file, and flip the credential name between the real file and a symlink to a
root credential file outside the directory, while root refreshes the account in a loop, each
time through a real token request to the loopback fake. Nothing outside the directory may change
owner, mode or content, and nothing may be created there.
"""
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from oauth_usage_tracker import credentials, demo, http, refresh
from oauth_usage_tracker.config import Settings
from oauth_usage_tracker.errors import UsageTrackerError
from oauth_usage_tracker.providers import claude

from support import IS_ROOT, OTHER_GID, OTHER_UID, AsUid, claude_credentials, write_compact

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="root refreshing a directory of another uid")

RUNS = 1000
DURATION = 4.0  # at least this long, however fast the runs go, so the attackers flip often
NAME = "claude-victim@example.com.json"


def snapshot(base: Path, skip: Path) -> dict:
    """Every entry under `base` but `skip`: type, mode, owner, size and content hash."""
    found = {}
    for root, directories, files in os.walk(base):
        if Path(root) == skip:
            directories[:] = []
            continue
        for entry in directories + files:
            path = os.path.join(root, entry)
            if Path(path) == skip:
                continue
            info = os.lstat(path)
            digest = None
            if stat.S_ISREG(info.st_mode):
                with open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
            found[path] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_uid,
                           info.st_gid, info.st_size, info.st_nlink, digest)
    return found


def flip_lock(directory: str, decoy: str, world_writable: str, stop: str) -> int:
    """As nobody: keep replacing the lock name with a file, a symlink out, a hard link out."""
    lock = os.path.join(directory, NAME + ".lock")
    flips = 0
    while not os.path.exists(stop):
        for make in (lambda: os.symlink(decoy, lock), lambda: os.link(world_writable, lock),
                     lambda: os.close(os.open(lock, os.O_CREAT | os.O_WRONLY, 0o644))):
            try:
                os.unlink(lock)
            except FileNotFoundError:
                pass
            try:
                make()
            except OSError:
                pass
            time.sleep(0.0001)
        flips += 1
    return flips


def flip_credential(directory: str, outside: str, stop: str) -> int:
    """As nobody: keep swapping the credential name for a symlink out of the directory and back
    to a regular file holding what root last wrote."""
    cred = os.path.join(directory, NAME)
    link, real = os.path.join(directory, ".flip-link"), os.path.join(directory, ".flip-real")
    data = None
    flips = 0
    while not os.path.exists(stop):
        try:
            fd = os.open(cred, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as handle:
                data = handle.read()
        except OSError:
            pass
        try:
            os.symlink(outside, link)
            os.rename(link, cred)
            time.sleep(0.0002)
            if data:
                with open(real, "wb") as handle:
                    handle.write(data)
                os.rename(real, cred)
            time.sleep(0.0005)  # about as long a regular file as a symlink
        except OSError:
            for name in (link, real):
                try:
                    os.unlink(name)
                except OSError:
                    pass
        flips += 1
    return flips


@pytest.fixture
def scene():
    base = Path(tempfile.mkdtemp(prefix="refresh-attack-"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base)


def test_root_refresh_loop_against_flipping_lock_and_credential_names(scene):
    directory = scene / "auth"
    directory.mkdir()
    outside = scene / "root-files"
    outside.mkdir()
    decoy = outside / "shadow"
    decoy.write_text("root:*:20000:0:99999:7:::\n")
    os.chmod(decoy, 0o640)
    world_writable = outside / "world-writable"
    world_writable.write_text("shared\n")
    os.chmod(world_writable, 0o666)
    root_cred = write_compact(outside / "root-claude.json",
                              claude_credentials(refresh_token="root-refresh-token",
                                                 expired="2000-01-01T00:00:00Z"))
    victim = write_compact(directory / NAME, claude_credentials(expired="2000-01-01T00:00:00Z"))
    os.chown(victim, OTHER_UID, OTHER_GID)
    os.chown(directory, OTHER_UID, OTHER_GID)
    stop = scene / "stop"
    before = snapshot(scene, directory)

    account = demo.FakeAccount("claude", "victim@example.com")
    outcomes = {}
    with demo.FakeProviders() as fake:
        settings = Settings.from_environ(fake.environ(), timeout=5.0)
        session = http.make_session(1)

        def exchange(token: str) -> credentials.TokenGrant:
            fake.add_account(account, "unused-access", token)  # whatever the file holds
            return claude.exchange_refresh_token(session, settings, token)

        attackers = [AsUid(OTHER_UID, OTHER_GID, flip_lock, str(directory), str(decoy),
                           str(world_writable), str(stop)),
                     AsUid(OTHER_UID, OTHER_GID, flip_credential, str(directory),
                           str(root_cred), str(stop))]
        started = time.monotonic()
        try:
            runs = 0
            while runs < RUNS or time.monotonic() - started < DURATION:
                runs += 1
                try:
                    seen = credentials.read_json_object(str(directory / NAME), tries=1)
                except UsageTrackerError:
                    seen = {}
                try:
                    result = refresh.refresh_tokens(str(directory / NAME), seen, exchange,
                                                    lambda: datetime.now(timezone.utc), 2.0)
                    kind = "rotated" if result.rotated else "adopted"
                except UsageTrackerError as error:
                    kind = type(error).__name__ + ": " + str(error)[:60]
                outcomes[kind] = outcomes.get(kind, 0) + 1
        finally:
            stop.touch()
            flips = [attacker.result() for attacker in attackers]
            session.close()
        elapsed = time.monotonic() - started
        sent = fake.count(demo.TOKEN_PATH)

    stop.unlink()
    after = snapshot(scene, directory)
    print("runs %d in %.1f s, flips %s, token requests %d, outcomes %s"
          % (runs, elapsed, flips, sent, json.dumps(outcomes, indent=1)))
    assert after == before  # nothing outside changed owner, mode, links or content; none created
    assert all(count > 0 for count in flips)
    assert outcomes.get("rotated", 0) > 0  # the race was run through to the rename
    assert sum(outcomes.values()) == runs >= RUNS
    # Whatever the attackers left, the directory holds no *.json but the credential.
    assert [n for n in os.listdir(directory) if n.endswith(".json")] == [NAME]
    assert json.loads(root_cred.read_text())["refresh_token"] == "root-refresh-token"
