"""The state directory belongs to another account (README's cron recipe gives it to the proxy's
account) and root runs the tracker: names that account plants there (symlinks at the lock files
and at state.json) must never make root write through them. The planting is done by a real
second uid in a forked child; root's side runs the same store code a run does."""
import logging
import os
import shutil
import stat
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from oauth_usage_tracker import lockout, state
from oauth_usage_tracker.models import UsageWindow

from support import IS_ROOT, OTHER_GID, OTHER_UID, run_as

NOW = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)
WINDOW = UsageWindow("five_hour", "5-hour", 40.0, datetime(2026, 11, 24, 18, 0,
                                                              tzinfo=timezone.utc))
DECOY = b"root's own file: must stay as it is\n"
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root to act as a second uid")


@pytest.fixture
def planted():
    """(state directory owned by the second uid, root's decoy file beside it)."""
    base = Path(tempfile.mkdtemp(prefix="state-planted-"))
    os.chmod(base, 0o755)
    directory = base / "st"
    directory.mkdir(mode=0o700)
    os.chown(directory, OTHER_UID, OTHER_GID)
    decoy = base / "victim"
    decoy.write_bytes(DECOY)
    os.chmod(decoy, 0o600)
    yield directory, decoy
    shutil.rmtree(base)


def plant(directory, target, names):
    """In the second uid's child: put a symlink to `target` at each name."""
    for name in names:
        os.symlink(target, os.path.join(directory, name))
    return sorted(os.listdir(directory))


def assert_untouched(decoy):
    info = os.lstat(decoy)
    assert decoy.read_bytes() == DECOY
    assert stat.S_IMODE(info.st_mode) == 0o600 and (info.st_uid, info.st_gid) == (0, 0)


def entry():
    return state.next_state(None, NOW, windows=[WINDOW])


@needs_root
def test_symlinks_planted_at_every_lock_file_are_never_written_through(planted, caplog):
    directory, decoy = planted
    names = ["state.json.lock", "events.json.lock", "rejected-keys.json.lock"]
    assert run_as(OTHER_UID, OTHER_GID, plant, str(directory), str(decoy), names) == sorted(names)
    caplog.set_level(logging.WARNING)
    store = state.StateStore(str(directory))
    store.save([(("claude", "claude-a.json"), entry())])
    decided = store.update_events(lambda stored: ("decided", {"seen": 1}))
    lockout.RejectedKeys(str(directory)).record("abc", lockout.Rejection(NOW, 401, None))
    assert_untouched(decoy)
    # The run goes on (the events decision is still made) and says why nothing was stored.
    assert decided == "decided"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert all("lock file is now a symlink" in text for text in warnings), warnings
    for name in names:
        assert os.path.islink(directory / name)
    assert not (directory / "state.json").exists()


@needs_root
def test_symlink_planted_at_state_json_is_replaced_not_followed(planted, caplog):
    directory, decoy = planted
    names = ["state.json", "events.json", "rejected-keys.json"]
    run_as(OTHER_UID, OTHER_GID, plant, str(directory), str(decoy), names)
    caplog.set_level(logging.WARNING)
    store = state.StateStore(str(directory))
    assert store.load() == {}  # the link is not read: root's file never becomes "state"
    store.save([(("claude", "claude-a.json"), entry())])
    store.update_events(lambda stored: (None, dict(stored, seen=1)))
    lockout.RejectedKeys(str(directory)).record("abc", lockout.Rejection(NOW, 401, None))
    assert_untouched(decoy)
    for name in names:
        info = os.lstat(directory / name)
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert store.load()[("claude", "claude-a.json")].windows == (WINDOW,)
    assert lockout.RejectedKeys(str(directory)).find("abc", None, NOW) is not None
    assert any("symbolic links" in r.getMessage() for r in caplog.records)


@needs_root
def test_lock_files_are_created_0600_whatever_the_umask_and_kept(planted):
    directory, _ = planted
    previous = os.umask(0)
    try:
        state.StateStore(str(directory)).save([(("claude", "claude-a.json"), entry())])
        state.StateStore(str(directory)).update_events(lambda stored: (None, {"seen": 1}))
    finally:
        os.umask(previous)
    for name in ("state.json.lock", "events.json.lock", "state.json", "events.json"):
        assert stat.S_IMODE(os.lstat(directory / name).st_mode) == 0o600, name


def hold_lock(directory, ready_path, release_path):
    """In the second uid's child: hold state.json.lock until told to let go."""
    import fcntl
    import time
    fd = os.open(os.path.join(directory, "state.json.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.close(os.open(ready_path, os.O_WRONLY | os.O_CREAT, 0o600))
    while not os.path.exists(release_path):
        time.sleep(0.01)
    return "released"


@needs_root
def test_the_state_lock_is_the_same_flock_another_process_takes(planted, caplog, monkeypatch):
    from support import AsUid
    directory, _ = planted
    ready, release = directory / "ready", directory / "release"
    holder = AsUid(OTHER_UID, OTHER_GID, hold_lock, str(directory), str(ready), str(release))
    try:
        waited = 0
        while not ready.exists() and waited < 3000:
            time.sleep(0.01)
            waited += 1
        assert ready.exists()
        monkeypatch.setattr(state, "LOCK_TIMEOUT", 0.3)
        caplog.set_level(logging.WARNING)
        state.StateStore(str(directory)).save([(("claude", "claude-a.json"), entry())])
    finally:
        release.touch()
        assert holder.result() == "released"
    assert not (directory / "state.json").exists()
    assert any("has held state.json.lock" in r.getMessage() for r in caplog.records)
