"""The refresh on a full disk (SPEC §12): a real, small tmpfs mounted by the test, filled up to
leave from nothing to plenty of room. Whatever the room, the credential file stays parseable and
holds either the old tokens with nothing sent, or the new ones; a refresh token is never spent
without its successor on disk. Each refresh sends a real request to the loopback fake.

Mounting needs root (CI runs as root). Where mounting is impossible, the test is skipped unless
$CI is set; under CI it falls back to a disk that fails the write with an injected ENOSPC."""
import errno
import json
import os
import shutil
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from oauth_usage_tracker import credentials, demo, http, refresh
from oauth_usage_tracker.authdir import AuthDirectory
from oauth_usage_tracker.config import Settings
from oauth_usage_tracker.errors import UsageTrackerError
from oauth_usage_tracker.providers import claude

from support import CLAUDE_REFRESH, claude_credentials, write_compact

SIZE = 64 * 1024
PAGE = 4096


@pytest.fixture
def disk():
    """A directory on a 64 KiB tmpfs, or (under CI, where mounting fails) None."""
    mount_point = Path(tempfile.mkdtemp(prefix="refresh-full-disk-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d,mode=0700" % SIZE, "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        os.rmdir(mount_point)
        if not os.environ.get("CI"):
            pytest.skip("cannot mount a tmpfs here (%s)" % mounted.stderr.strip())
        yield None
        return
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
        os.rmdir(mount_point)


def fill(directory: Path, leave: int) -> None:
    """Fill the file system, then give back `leave` bytes (whole pages on tmpfs)."""
    filler = directory / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * PAGE)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))


def run_refresh(path: Path, fake: demo.FakeProviders) -> str:
    account = demo.FakeAccount("claude", "full@example.com")
    settings = Settings.from_environ(fake.environ(), timeout=5.0)
    session = http.make_session(1)

    def exchange(token: str) -> credentials.TokenGrant:
        fake.add_account(account, "unused", token)
        return claude.exchange_refresh_token(session, settings, token)

    try:
        seen = credentials.read_json_object(str(path))
        refresh.refresh_tokens(str(path), seen, exchange, lambda: datetime.now(timezone.utc), 5)
        return "rotated"
    except UsageTrackerError as error:
        return str(error)
    finally:
        session.close()


def check_outcome(path: Path, sent: int, outcome: str) -> str:
    """The only two acceptable ends: old tokens and nothing sent, or new tokens on disk."""
    data = json.loads(path.read_text())  # parseable, whatever happened
    if sent == 0:
        assert data["refresh_token"] == CLAUDE_REFRESH, outcome
        assert outcome.startswith("Cannot store new tokens: ") and \
            outcome.endswith("; not refreshing"), outcome
        return "nothing sent"
    assert sent == 1 and outcome == "rotated", outcome
    assert data["refresh_token"].startswith("demo-refresh-")
    return "new tokens"


@pytest.mark.parametrize("lie", [False, True], ids=["statvfs", "statvfs-lies"])
def test_full_disk_leaves_old_tokens_unsent_or_new_tokens_written(disk, monkeypatch, lie):
    if disk is None:
        pytest.skip("covered by test_injected_enospc_when_no_tmpfs_can_be_mounted")
    if lie:
        # The free-space check passes whatever the room, so the temporary file itself meets
        # the full disk (as when another writer fills it between the check and the write).
        monkeypatch.setattr(AuthDirectory, "free_bytes", lambda self: 1 << 40)
    seen = {}
    for leave in range(0, 5 * PAGE, PAGE):
        directory = disk / ("leave-%d" % leave)
        directory.mkdir()
        path = write_compact(directory / "claude-full@example.com.json",
                             claude_credentials(email="full@example.com", access_token="a" * 900,
                                                expired="2000-01-01T00:00:00Z"))
        fill(disk, leave)
        with demo.FakeProviders() as fake:
            outcome = run_refresh(path, fake)
            sent = fake.count(demo.TOKEN_PATH)
        result = check_outcome(path, sent, outcome)
        if result == "nothing sent":
            # Refused by the free-space check, or (when it lies) by the real temporary file.
            assert ("no room for the temporary file (No space left on device)" if lie
                    else "no room on the disk") in outcome, outcome
        seen[leave] = result
        leftovers = sorted(set(os.listdir(directory)) - {path.name, path.name + ".lock"})
        assert leftovers == [], (leave, leftovers)
        os.unlink(disk / "filler.bin")
        shutil.rmtree(directory)
    print("room left -> outcome:", seen)
    assert seen[0] == "nothing sent" and seen[4 * PAGE] == "new tokens"


def test_injected_enospc_when_no_tmpfs_can_be_mounted(tmp_path, monkeypatch):
    """The same ends when every write of the temporary file fails with ENOSPC."""
    real_write = os.pwrite

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    directory = tmp_path / "auth"
    directory.mkdir()
    path = write_compact(directory / "claude-full@example.com.json",
                         claude_credentials(email="full@example.com",
                                            expired="2000-01-01T00:00:00Z"))
    monkeypatch.setattr(os, "pwrite", full)
    with demo.FakeProviders() as fake:
        outcome = run_refresh(path, fake)
        sent = fake.count(demo.TOKEN_PATH)
    monkeypatch.setattr(os, "pwrite", real_write)
    assert check_outcome(path, sent, outcome) == "nothing sent"
    assert "No space left on device" in outcome
