"""refresh: the checks before a refresh token is sent, the lock file, symlinks, and the recovery
file when the write-back fails after the token was spent (SPEC §6, §12). Real files; the checks
that depend on who runs the refresh run it as a second uid in a forked child."""
import errno
import json
import os
import shutil
import stat
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from oauth_usage_tracker import credentials, refresh as module
from oauth_usage_tracker.authdir import AuthDirectory, UnsafeFile
from oauth_usage_tracker.errors import CredentialError

from support import (CLAUDE_REFRESH, IS_ROOT, OTHER_GID, OTHER_UID, assert_no_secrets,
                     claude_credentials, run_as, write_compact)

NOW = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)
NEW_ACCESS = "sk-ant-oat01-SAFETYnewACCESS00000000000000"
NEW_REFRESH = "sk-ant-ort01-SAFETYnewREFRESH0000000000000"
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root to act as a second uid")


class Exchange:
    """An `exchange` that records what was sent and returns fresh tokens."""

    def __init__(self):
        self.sent = []

    def __call__(self, token):
        self.sent.append(token)
        return credentials.TokenGrant(NEW_ACCESS, NEW_REFRESH, 3600)


def refresh(path, exchange):
    seen = credentials.read_json_object(str(path))
    return module.refresh_tokens(str(path), seen, exchange, lambda: NOW, lock_timeout=5)


def try_refresh(path):
    """In a child: refresh, and report what was sent and what happened."""
    exchange = Exchange()
    try:
        refresh(path, exchange)
        outcome = "rotated"
    except CredentialError as error:
        outcome = str(error)
    return {"sent": len(exchange.sent), "outcome": outcome}


@pytest.fixture
def open_dir():
    """An auth directory under a world-traversable temporary directory (pytest's own is 0700,
    which a second uid could not enter)."""
    base = Path(tempfile.mkdtemp(prefix="refresh-safety-"))
    os.chmod(base, 0o755)
    directory = base / "auth"
    directory.mkdir()
    yield directory
    shutil.rmtree(base)


@pytest.fixture
def cred(tmp_path):
    directory = tmp_path / "auth"
    directory.mkdir()
    return write_compact(directory / "claude-a.json", claude_credentials())


def others(path):
    return sorted(set(os.listdir(path.parent)) - {path.name, path.name + ".lock"})


# --- preflight: nothing is sent when the new tokens could not be stored -----------------------


def give(path, uid, gid, mode):
    os.chown(path, uid, gid)
    os.chmod(path, mode)


@needs_root
def test_unwritable_directory_sends_nothing(open_dir):
    path = write_compact(open_dir / "claude-a.json", claude_credentials())
    give(path, OTHER_UID, OTHER_GID, 0o600)
    (open_dir / "claude-a.json.lock").touch()
    give(open_dir / "claude-a.json.lock", OTHER_UID, OTHER_GID, 0o600)
    give(open_dir, OTHER_UID, OTHER_GID, 0o555)
    before = path.read_bytes()
    result = run_as(OTHER_UID, OTHER_GID, try_refresh, str(path))
    assert result == {"sent": 0, "outcome": "Cannot store new tokens: the auth directory is not "
                                            "writable by this process; not refreshing"}
    assert path.read_bytes() == before and others(path) == []


@needs_root
def test_unwritable_directory_without_a_lock_file_sends_nothing(open_dir):
    path = write_compact(open_dir / "claude-a.json", claude_credentials())
    give(path, OTHER_UID, OTHER_GID, 0o600)
    give(open_dir, OTHER_UID, OTHER_GID, 0o555)
    result = run_as(OTHER_UID, OTHER_GID, try_refresh, str(path))
    assert result["sent"] == 0 and "lock file" in result["outcome"]


@needs_root
def test_read_only_credential_file_sends_nothing(open_dir):
    path = write_compact(open_dir / "claude-a.json", claude_credentials())
    give(path, OTHER_UID, OTHER_GID, 0o400)
    give(open_dir, OTHER_UID, OTHER_GID, 0o700)
    before = path.read_bytes()
    result = run_as(OTHER_UID, OTHER_GID, try_refresh, str(path))
    assert result == {"sent": 0, "outcome": "Cannot store new tokens: the credential file is not "
                                            "writable by this process; not refreshing"}
    assert path.read_bytes() == before and others(path) == []


@needs_root
@pytest.mark.parametrize("owner", [(1234, OTHER_GID), (OTHER_UID, 1234)], ids=["user", "group"])
def test_owner_this_process_cannot_keep_sends_nothing(open_dir, owner):
    path = write_compact(open_dir / "claude-a.json", claude_credentials())
    give(path, owner[0], owner[1], 0o666)
    give(open_dir, OTHER_UID, OTHER_GID, 0o777)
    before = path.read_bytes()
    result = run_as(OTHER_UID, OTHER_GID, try_refresh, str(path))
    assert result["sent"] == 0
    assert result["outcome"].startswith("Cannot store new tokens: the credential file belongs to "
                                        "another user or group")
    assert path.read_bytes() == before and others(path) == []


@needs_root
def test_own_file_in_own_directory_is_refreshed_as_that_user(open_dir):
    path = write_compact(open_dir / "claude-a.json", claude_credentials())
    give(path, OTHER_UID, OTHER_GID, 0o640)
    give(open_dir, OTHER_UID, OTHER_GID, 0o700)
    assert run_as(OTHER_UID, OTHER_GID, try_refresh, str(path)) == {"sent": 1,
                                                                     "outcome": "rotated"}
    info = os.stat(path)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (OTHER_UID, OTHER_GID, 0o640)
    assert json.loads(path.read_text())["refresh_token"] == NEW_REFRESH


def test_preflight_refuses_content_that_cannot_be_written_as_json(cred):
    with AuthDirectory(str(cred.parent)) as auth:
        with pytest.raises(CredentialError) as caught:
            module.preflight(auth, cred.name, {"odd": {1, 2}}, cred.read_bytes(), os.stat(cred),
                             NOW)
    assert str(caught.value) == ("Cannot store new tokens: the merged content cannot be written "
                                 "as JSON; not refreshing")


def test_preflight_refuses_when_the_disk_has_no_room(cred, monkeypatch):
    monkeypatch.setattr(AuthDirectory, "free_bytes", lambda self: 1000)
    exchange = Exchange()
    before = cred.read_bytes()
    with pytest.raises(CredentialError) as caught:
        refresh(cred, exchange)
    assert str(caught.value).startswith("Cannot store new tokens: no room on the disk (1000 "
                                        "bytes free, ")
    assert exchange.sent == [] and cred.read_bytes() == before and others(cred) == []


def test_preflight_reserves_room_for_the_file_with_long_tokens(cred):
    with AuthDirectory(str(cred.parent)) as auth:
        need = module.preflight(auth, cred.name, credentials.read_json_object(str(cred)),
                                cred.read_bytes(), os.stat(cred), NOW)
    tokens = len(CLAUDE_REFRESH) + len(json.loads(cred.read_text())["access_token"])
    # The new tokens may be much longer than the old ones (1 KiB each is reserved), plus margin.
    # (less a few bytes: the rewritten timestamps may be shorter.)
    assert need >= len(cred.read_bytes()) - tokens - 16 + 2048 + module.ROOM_MARGIN


def test_failed_placeholder_write_sends_nothing_and_leaves_no_temporary_file(cred, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module, "write_all", full)
    exchange = Exchange()
    with pytest.raises(CredentialError) as caught:
        refresh(cred, exchange)
    assert str(caught.value) == ("Cannot store new tokens: no room for the temporary file (No "
                                 "space left on device); not refreshing")
    assert exchange.sent == [] and others(cred) == []


# --- the write-back after the token was spent: retried, then a recovery file --------------------


def failing_replace(times):
    calls = []
    real = AuthDirectory.replace

    def replace(self, source, target):
        calls.append(target)
        if len(calls) <= times:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, source, target)

    return replace, calls


def test_write_back_failing_once_is_retried(cred, monkeypatch):
    replace, calls = failing_replace(1)
    monkeypatch.setattr(AuthDirectory, "replace", replace)
    monkeypatch.setattr(module, "WRITE_PAUSE", 0.01)
    assert refresh(cred, Exchange()).rotated
    assert len(calls) == 2
    assert json.loads(cred.read_text())["refresh_token"] == NEW_REFRESH
    assert others(cred) == []


def test_write_back_failing_for_good_keeps_the_tokens_in_a_recovery_file(cred, monkeypatch):
    replace, calls = failing_replace(99)
    monkeypatch.setattr(AuthDirectory, "replace", replace)
    monkeypatch.setattr(module, "WRITE_PAUSE", 0.01)
    before = cred.read_bytes()
    os.umask(0o000)
    try:
        with pytest.raises(CredentialError) as caught:
            refresh(cred, Exchange())
    finally:
        os.umask(0o022)
    assert len(calls) == module.WRITE_TRIES
    name = cred.name + ".recovered-20261124T140000Z"
    assert others(cred) == [name]  # the temporary file is gone
    recovered = cred.parent / name
    assert stat.S_IMODE(os.stat(recovered).st_mode) == 0o600
    kept = json.loads(recovered.read_text())
    assert kept == dict(json.loads(before), access_token=NEW_ACCESS, refresh_token=NEW_REFRESH,
                        expired="2026-11-24T15:00:00Z", last_refresh="2026-11-24T14:00:00Z")
    assert cred.read_bytes() == before  # old, and whole: never written in place
    message = str(caught.value)
    assert message == ("New tokens could not be written back (No space left on device); they are "
                       "kept in %s (mode 0600) in the auth directory: move it over %s, or log in "
                       "again with CLIProxyAPI" % (name, cred.name))
    assert NEW_REFRESH not in message and NEW_ACCESS not in message
    assert not name.endswith(".json")  # CLIProxyAPI loads only *.json


def test_recovery_file_never_overwrites_an_existing_name(cred, monkeypatch):
    replace, _ = failing_replace(99)
    monkeypatch.setattr(AuthDirectory, "replace", replace)
    monkeypatch.setattr(module, "WRITE_PAUSE", 0.01)
    taken = cred.parent / (cred.name + ".recovered-20261124T140000Z")
    outside = cred.parent.parent / "outside"
    outside.write_text("keep")
    taken.symlink_to(outside)
    with pytest.raises(CredentialError, match=r"kept in claude-a\.json\.recovered-"
                                              r"20261124T140000Z-1 "):
        refresh(cred, Exchange())
    assert outside.read_text() == "keep" and taken.is_symlink()
    kept = json.loads((cred.parent / (taken.name + "-1")).read_text())
    assert kept["refresh_token"] == NEW_REFRESH


def test_recovery_file_that_cannot_be_written_either_says_so(cred, monkeypatch):
    replace, _ = failing_replace(99)
    monkeypatch.setattr(AuthDirectory, "replace", replace)
    monkeypatch.setattr(module, "WRITE_PAUSE", 0.01)
    real_create = AuthDirectory.create

    def create(self, name, mode, owner):
        if ".recovered-" in name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_create(self, name, mode, owner)

    monkeypatch.setattr(AuthDirectory, "create", create)
    before = cred.read_bytes()
    with pytest.raises(CredentialError) as caught:
        refresh(cred, Exchange())
    assert str(caught.value) == ("New tokens could not be written back (No space left on device) "
                                 "nor kept in a recovery file; the old refresh token is spent: "
                                 "log in again with CLIProxyAPI")
    assert cred.read_bytes() == before and others(cred) == []


# --- the lock file ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_lock_file_gets_the_credential_mode_whatever_the_umask(cred, mode):
    os.chmod(cred, mode)
    previous = os.umask(0o000)
    try:
        refresh(cred, Exchange())
    finally:
        os.umask(previous)
    lock = cred.parent / (cred.name + ".lock")
    assert stat.S_IMODE(os.stat(lock).st_mode) == mode
    assert stat.S_IMODE(os.stat(cred).st_mode) == mode


def test_lock_file_is_never_unlinked(cred):
    refresh(cred, Exchange())
    lock = cred.parent / (cred.name + ".lock")
    inode = os.stat(lock).st_ino
    write_compact(cred, claude_credentials())
    refresh(cred, Exchange())
    assert os.stat(lock).st_ino == inode


@pytest.mark.parametrize("plant", ["symlink", "dangling", "fifo", "hardlink"])
def test_planted_lock_name_is_refused_and_nothing_outside_changes(cred, plant):
    lock = cred.parent / (cred.name + ".lock")
    outside = cred.parent.parent / "victim"
    outside.write_text("victim")
    os.chmod(outside, 0o644)
    if plant == "symlink":
        lock.symlink_to(outside)
    elif plant == "dangling":
        lock.symlink_to(cred.parent.parent / "created-by-us")
    elif plant == "fifo":
        os.mkfifo(lock)
    else:
        os.link(outside, lock)
    before = outside.stat()
    exchange = Exchange()
    with pytest.raises(CredentialError):
        refresh(cred, exchange)
    after = outside.stat()
    assert exchange.sent == [] and outside.read_text() == "victim"
    assert (after.st_mode, after.st_uid, after.st_gid) == (before.st_mode, before.st_uid,
                                                            before.st_gid)
    assert not (cred.parent.parent / "created-by-us").exists()


@needs_root
@pytest.mark.parametrize("owner", [(OTHER_UID, OTHER_GID), (0, 0)], ids=["other", "root"])
def test_existing_lock_file_is_never_chowned_or_chmodded(cred, owner):
    # One of root's own with a single link may be an outside file whose link in the directory
    # was just removed: only a lock file the refresh itself created is given owner and mode.
    give(cred, OTHER_UID, OTHER_GID, 0o600)
    lock = cred.parent / (cred.name + ".lock")
    lock.touch()
    give(lock, owner[0], owner[1], 0o644)
    refresh(cred, Exchange())
    info = os.stat(lock)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == owner + (0o644,)


@needs_root
def test_lock_file_root_creates_goes_to_the_credential_owner(cred):
    give(cred, OTHER_UID, OTHER_GID, 0o600)
    refresh(cred, Exchange())
    info = os.stat(cred.parent / (cred.name + ".lock"))
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (OTHER_UID, OTHER_GID, 0o600)


# --- symlinked credential names -----------------------------------------------------------------


def test_symlink_to_a_file_outside_the_directory_is_refused(cred):
    outside = write_compact(cred.parent.parent / "elsewhere.json", claude_credentials())
    link = cred.parent / "claude-link.json"
    link.symlink_to(outside)
    before = outside.read_bytes()
    exchange = Exchange()
    with pytest.raises(UnsafeFile, match="does not point to a regular file in the auth "
                                         "directory"):
        module.refresh_tokens(str(link), json.loads(before), exchange, lambda: NOW, 5)
    assert exchange.sent == [] and outside.read_bytes() == before
    assert sorted(os.listdir(cred.parent.parent)) == ["auth", "elsewhere.json"]


@pytest.mark.parametrize("target", ["claude-chain.json", "sub/../claude-a.json", "./claude-a.json",
                                    "sub//claude-b.json"])
def test_symlink_to_another_link_or_by_a_roundabout_path_is_refused(cred, target):
    (cred.parent / "sub").mkdir()
    write_compact(cred.parent / "sub" / "claude-b.json", claude_credentials())
    (cred.parent / "claude-chain.json").symlink_to(cred.name)
    link = cred.parent / "claude-link.json"
    link.symlink_to(target)
    exchange = Exchange()
    with pytest.raises(UnsafeFile):
        module.refresh_tokens(str(link), claude_credentials(), exchange, lambda: NOW, 5)
    assert exchange.sent == []


def test_symlink_into_a_subdirectory_rewrites_the_file_there(cred):
    (cred.parent / "store").mkdir()
    real = write_compact(cred.parent / "store" / "claude-b.json", claude_credentials())
    link = cred.parent / "claude-link.json"
    link.symlink_to("store/claude-b.json")
    assert module.refresh_tokens(str(link), claude_credentials(), Exchange(), lambda: NOW,
                                 5).rotated
    assert link.is_symlink() and json.loads(real.read_text())["refresh_token"] == NEW_REFRESH
    assert sorted(os.listdir(real.parent)) == ["claude-b.json", "claude-b.json.lock"]


def test_subdirectory_swapped_for_a_symlink_out_is_refused(cred):
    # Discovery saw store/ as a directory; now it is a symlink to a directory outside.
    outside = cred.parent.parent / "outside"
    outside.mkdir()
    victim = write_compact(outside / "claude-b.json", claude_credentials())
    (cred.parent / "store").symlink_to(outside)
    link = cred.parent / "claude-link.json"
    link.symlink_to("store/claude-b.json")
    before = victim.read_bytes()
    exchange = Exchange()
    with pytest.raises(UnsafeFile):
        module.refresh_tokens(str(link), claude_credentials(), exchange, lambda: NOW, 5)
    with pytest.raises(UnsafeFile):
        credentials.read_json_object(str(link))
    assert exchange.sent == [] and victim.read_bytes() == before
    assert os.listdir(outside) == ["claude-b.json"]


def test_read_after_discovery_refuses_a_name_swapped_for_a_symlink_out(cred):
    outside = write_compact(cred.parent.parent / "elsewhere.json",
                            claude_credentials(email="root@example.com"))
    assert credentials.read_json_object(str(cred))["email"] == "alice@example.com"
    os.unlink(cred)
    cred.symlink_to(outside)
    with pytest.raises(UnsafeFile, match="does not point to a regular file in the auth "):
        credentials.read_json_object(str(cred))


def test_read_after_discovery_refuses_a_fifo_without_waiting(cred):
    os.unlink(cred)
    os.mkfifo(cred)
    with pytest.raises(CredentialError, match="not a regular file"):
        credentials.read_json_object(str(cred))


def test_symlink_by_absolute_path_into_the_same_directory_is_followed(cred):
    link = cred.parent / "claude-link.json"
    link.symlink_to(cred.resolve())
    assert module.refresh_tokens(str(link), claude_credentials(), Exchange(), lambda: NOW,
                                 5).rotated
    assert link.is_symlink() and json.loads(cred.read_text())["refresh_token"] == NEW_REFRESH


def test_credential_with_a_second_hard_link_is_not_refreshed(cred):
    os.link(cred, cred.parent / "claude-twin.json")
    exchange = Exchange()
    with pytest.raises(UnsafeFile, match="single name"):
        refresh(cred, exchange)
    assert exchange.sent == []


def test_errors_of_the_checks_never_hold_a_token(cred, monkeypatch):
    monkeypatch.setattr(AuthDirectory, "free_bytes", lambda self: 0)
    with pytest.raises(CredentialError) as caught:
        refresh(cred, Exchange())
    assert_no_secrets(str(caught.value))
    assert CLAUDE_REFRESH not in repr(caught.value)
