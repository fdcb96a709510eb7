"""`--output` and `--prometheus` targets (SPEC §12), through the installed script (`--demo`, so no
server is needed): modes a reader can predict whatever the umask, devices and FIFOs written into
and never replaced, symbolic links followed only where nobody else could have planted them.
"""
import os
import shutil
import stat
import subprocess
import sys
import threading
import time

import pytest

from oauth_usage_tracker import files

from support import StuckFifo

COMMAND = ([shutil.which("oauth-usage-tracker")] if shutil.which("oauth-usage-tracker")
           else [sys.executable, "-m", "oauth_usage_tracker"])


def run(args, tmp_path, umask=0o022, timeout=60):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH_USAGE_TRACKER_")}
    env["HOME"] = str(tmp_path / "home")
    return subprocess.run(COMMAND + ["--demo", "-q"] + args, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          preexec_fn=lambda: os.umask(umask))


def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def private_dir(tmp_path):
    directory = tmp_path / "out"
    directory.mkdir(mode=0o700)
    os.chmod(directory, 0o700)
    return directory


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o777])
def test_new_files_get_fixed_modes_whatever_the_umask(umask, private_dir, tmp_path):
    report, metrics = private_dir / "report.json", private_dir / "usage.prom"
    result = run(["--json", "--output", str(report), "--prometheus", str(metrics)], tmp_path,
                 umask)
    assert result.returncode == 0, result.stderr
    assert mode_of(report) == files.REPORT_MODE == 0o640
    assert mode_of(metrics) == files.METRICS_MODE == 0o644
    assert report.read_text().startswith("{")
    assert "oauth_usage_account_info" in metrics.read_text()
    assert [p.name for p in private_dir.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("existing", [0o600, 0o604, 0o660])
def test_existing_regular_file_is_replaced_and_keeps_its_mode(existing, private_dir, tmp_path):
    report = private_dir / "report.txt"
    report.write_text("old")
    os.chmod(report, existing)
    inode = os.lstat(report).st_ino
    result = run(["--output", str(report)], tmp_path, 0o077)
    assert result.returncode == 0, result.stderr
    assert mode_of(report) == existing
    assert "alice@example.com" in report.read_text()
    assert os.lstat(report).st_ino != inode  # replaced, not rewritten in place


def test_existing_file_of_ours_keeps_only_permission_bits_without_write_for_others(
        private_dir, tmp_path):
    report, metrics = private_dir / "report.txt", private_dir / "usage.prom"
    for path in (report, metrics):
        path.write_text("old")
        os.chmod(path, 0o6777)
    result = run(["--output", str(report), "--prometheus", str(metrics)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert mode_of(report) == mode_of(metrics) == 0o775  # no setuid/setgid, no o+w


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another uid")
def test_existing_file_of_another_owner_gets_the_new_file_mode(private_dir, tmp_path):
    from support import OTHER_GID, OTHER_UID
    report, metrics = private_dir / "report.txt", private_dir / "usage.prom"
    for path in (report, metrics):
        path.write_text("old")
        os.chown(path, OTHER_UID, OTHER_GID)
        os.chmod(path, 0o6777)
    result = run(["--output", str(report), "--prometheus", str(metrics)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (mode_of(report), mode_of(metrics)) == (files.REPORT_MODE, files.METRICS_MODE)
    assert os.lstat(report).st_uid == os.lstat(metrics).st_uid == os.geteuid()


def test_existing_file_in_a_shared_directory_gets_the_new_file_mode(tmp_path):
    shared = tmp_path / "textfile"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    report, metrics = shared / "report.txt", shared / "usage.prom"
    for path in (report, metrics):
        path.write_text("old")
        os.chmod(path, 0o6777)
    result = run(["--output", str(report), "--prometheus", str(metrics)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (mode_of(report), mode_of(metrics)) == (files.REPORT_MODE, files.METRICS_MODE)


def test_atomic_write_never_carries_setuid_bits(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{}")
    os.chmod(path, 0o6755)
    files.atomic_write(str(path), b"{}")
    assert mode_of(path) == 0o755


def _char_device(path):
    """A character device like /dev/null (1, 3), made here rather than touching the real one."""
    try:
        os.mknod(str(path), stat.S_IFCHR | 0o666, os.makedev(1, 3))
        with open(path, "wb") as handle:
            handle.write(b"x")
    except (PermissionError, OSError) as error:
        pytest.skip("cannot make and open a character device here: %s" % error)


@pytest.mark.parametrize("flag", ["--output", "--prometheus"])
def test_character_device_target_is_written_into_not_replaced(flag, private_dir, tmp_path):
    device = private_dir / "null"
    _char_device(device)
    before = os.lstat(device)
    result = run([flag, str(device)] + (["--output", str(private_dir / "r")]
                                        if flag == "--prometheus" else []), tmp_path)
    assert result.returncode == 0, result.stderr
    after = os.lstat(device)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    assert after.st_ino == before.st_ino
    assert [p.name for p in private_dir.iterdir() if p.name.endswith(".tmp")] == []


def test_fifo_with_a_reader_gets_the_report_and_stays_a_fifo(private_dir, tmp_path):
    fifo = private_dir / "pipe"
    os.mkfifo(fifo, 0o600)
    received = []

    def reader():
        with open(fifo, "rb") as handle:
            received.append(handle.read())
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    result = run(["--json", "--output", str(fifo)], tmp_path)
    thread.join(30)
    assert result.returncode == 0, result.stderr
    assert received and received[0].startswith(b"{")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_fifo_nobody_reads_is_an_error_not_a_hang(private_dir, tmp_path):
    fifo = private_dir / "pipe"
    os.mkfifo(fifo, 0o600)
    result = run(["--output", str(fifo)], tmp_path, timeout=30)
    assert result.returncode == 2
    assert "Cannot write the report: nothing is reading from this pipe" in result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize("flag", ["--output", "--prometheus"])
def test_fifo_that_never_drains_in_a_private_directory_fails_within_the_deadline(
        flag, private_dir, tmp_path):
    fifo = StuckFifo(private_dir / "pipe")
    try:
        started = time.monotonic()
        result = run([flag, str(private_dir / "pipe")] + (
            ["--output", str(tmp_path / "r")] if flag == "--prometheus" else []), tmp_path,
            timeout=60)
        elapsed = time.monotonic() - started
    finally:
        fifo.close()
    assert result.returncode == 2, result.stderr
    assert "Cannot write the report: the reader took nothing for 5 s" in result.stderr
    assert "Traceback" not in result.stderr
    # The deadline (5 s) plus the script's start, with room for a loaded machine.
    assert files.WRITE_DEADLINE <= elapsed < files.WRITE_DEADLINE + 20, elapsed


@pytest.mark.parametrize("mode", [0o775, 0o1777])
def test_fifo_planted_in_a_shared_directory_is_replaced_and_gets_nothing(mode, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    fifo = StuckFifo(shared / "report.json")
    try:
        started = time.monotonic()
        result = run(["--json", "--output", str(shared / "report.json")], tmp_path)
        elapsed = time.monotonic() - started
        leaked = fifo.taken()
    finally:
        fifo.close()
    assert result.returncode == 0, result.stderr
    assert elapsed < files.WRITE_DEADLINE + 20
    assert leaked == b""  # the planted reader never sees the report
    report = shared / "report.json"
    assert stat.S_ISREG(os.lstat(report).st_mode) and mode_of(report) == files.REPORT_MODE
    assert report.read_text().startswith("{")


def test_directory_target_is_an_error(private_dir, tmp_path):
    result = run(["--output", str(private_dir)], tmp_path)
    assert result.returncode == 2
    assert "Cannot write the report" in result.stderr and "Traceback" not in result.stderr
    assert private_dir.is_dir()


def test_symlink_planted_in_a_group_writable_directory_is_replaced_not_followed(tmp_path):
    shared = tmp_path / "textfile"
    shared.mkdir()
    os.chmod(shared, 0o775)
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0::/root:/bin/sh\n")
    os.chmod(victim, 0o644)
    link = shared / "usage.prom"
    os.symlink(victim, link)
    result = run(["--prometheus", str(link), "--output", str(tmp_path / "r")], tmp_path)
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "root:x:0:0::/root:/bin/sh\n"
    assert not os.path.islink(link) and "oauth_usage_account_info" in link.read_text()
    assert mode_of(link) == 0o644


def test_symlinked_device_in_a_group_writable_directory_is_not_written_through(tmp_path):
    shared = tmp_path / "textfile"
    shared.mkdir()
    os.chmod(shared, 0o775)
    device = tmp_path / "null"
    _char_device(device)
    link = shared / "usage.prom"
    os.symlink(device, link)
    result = run(["--prometheus", str(link), "--output", str(tmp_path / "r")], tmp_path)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISCHR(os.lstat(device).st_mode)
    assert stat.S_ISREG(os.lstat(link).st_mode)


def test_symlink_in_a_private_directory_is_followed_to_its_target(private_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "report.txt"
    target.write_text("old")
    os.chmod(target, 0o600)
    link = private_dir / "report.txt"
    os.symlink(target, link)
    result = run(["--output", str(link)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert os.path.islink(link)
    assert "alice@example.com" in target.read_text() and mode_of(target) == 0o600


def test_symlink_in_a_private_directory_to_a_device_writes_into_it(private_dir, tmp_path):
    device = tmp_path / "null"
    _char_device(device)
    link = private_dir / "out"
    os.symlink(device, link)
    result = run(["--output", str(link)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert os.path.islink(link) and stat.S_ISCHR(os.lstat(device).st_mode)


def test_dangling_symlink_loop_is_an_error(private_dir, tmp_path):
    os.symlink(private_dir / "b", private_dir / "a")
    os.symlink(private_dir / "a", private_dir / "b")
    result = run(["--output", str(private_dir / "a")], tmp_path)
    assert result.returncode == 2
    assert "Cannot write the report" in result.stderr and "Traceback" not in result.stderr
    assert os.path.islink(private_dir / "a") and os.path.islink(private_dir / "b")


def test_output_to_dev_stdout_reaches_the_pipe(tmp_path):
    if not os.path.exists("/dev/stdout"):
        pytest.skip("no /dev/stdout")
    before = os.lstat("/dev/stdout")
    result = run(["--json", "--output", "/dev/stdout"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("{")
    after = os.lstat("/dev/stdout")
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
