"""The installed script run as a second uid (subprocess with user=/group=, i.e. setuid in the
forked child) on a credential file it can read but could not rewrite: the token endpoint of the
loopback fake never sees a request, the account says why, and the file is left as it was. The
tokens are rejected by the fake's usage endpoint, so the default flags are enough to want a
refresh (SPEC §12)."""
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from oauth_usage_tracker import demo

from support import IS_ROOT, OTHER_GID, OTHER_UID, fork

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root to run the script as a second uid")

SCRIPT = shutil.which("oauth-usage-tracker")
COMMAND = [SCRIPT] if SCRIPT else [sys.executable, "-m", "oauth_usage_tracker"]
EMAIL = "locked@example.com"


@pytest.fixture
def scene():
    base = Path(tempfile.mkdtemp(prefix="refresh-privileges-"))
    os.chmod(base, 0o755)
    for name in ("auth", "home"):
        (base / name).mkdir()
        os.chown(base / name, OTHER_UID, OTHER_GID)
    with demo.FakeProviders() as fake:
        fake.add_account(demo.FakeAccount("claude", EMAIL), "locked-access", "locked-refresh")
        fake.expire_access("locked-access")  # the usage endpoint answers 401: refresh wanted
        path = Path(demo.write_credential(str(base / "auth"), "claude", EMAIL, "locked-access",
                                          "locked-refresh",
                                          datetime.now(timezone.utc) + timedelta(hours=2)))
        yield base, fake, path
    shutil.rmtree(base)


def interpreter_runs_as_nobody() -> bool:
    try:
        return subprocess.run([sys.executable, "-c", "pass"], user=OTHER_UID, group=OTHER_GID,
                              extra_groups=[], capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


def run_as_nobody(base: Path, fake: demo.FakeProviders) -> subprocess.CompletedProcess:
    """The script as nobody: installed and exec'd when nobody may run this interpreter (it may
    live in root's home), else its main() in a forked child that dropped to nobody."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH_USAGE_TRACKER_")}
    env.update(fake.environ(), HOME=str(base / "home"), XDG_STATE_HOME=str(base / "home"))
    argv = ["--auth-dir", str(base / "auth"), "--json"]
    if interpreter_runs_as_nobody():
        return subprocess.run(COMMAND + argv, env=env, capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL, user=OTHER_UID,
                              group=OTHER_GID, extra_groups=[], cwd=str(base))
    from oauth_usage_tracker import cli
    cli.main(["--version"])  # everything main() imports is loaded before the fork
    for name in ("oauth_usage_tracker.tracker", "oauth_usage_tracker.render", "json"):
        importlib.import_module(name)
    out, err = base / "home" / "stdout", base / "home" / "stderr"
    pid = fork()
    if pid == 0:  # pragma: no cover - the child
        status = 70
        try:
            os.setgroups([])
            os.setgid(OTHER_GID)
            os.setuid(OTHER_UID)
            os.environ.clear()
            os.environ.update(env)
            # The test runner has replaced sys.stdout/stderr; the child writes to files.
            sys.stdout = open(out, "w", encoding="utf-8")
            sys.stderr = open(err, "w", encoding="utf-8")
            status = cli.main(argv)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return subprocess.CompletedProcess(argv, os.waitstatus_to_exitcode(status),
                                       out.read_text(), err.read_text())


@pytest.mark.parametrize("owner, mode, expect", [
    ((OTHER_UID, OTHER_GID), 0o400, "the credential file is not writable by this process"),
    ((1234, 1234), 0o666, "the credential file belongs to another user or group"),
    ((OTHER_UID, 1234), 0o660, "the credential file belongs to another user or group"),
], ids=["read-only", "other-owner", "other-group"])
def test_no_refresh_request_when_the_new_tokens_could_not_be_stored(scene, owner, mode, expect):
    base, fake, path = scene
    os.chown(path, *owner)
    os.chmod(path, mode)
    os.chmod(base / "auth", 0o777 if owner[0] != OTHER_UID else 0o700)
    before = path.read_bytes()
    result = run_as_nobody(base, fake)
    assert fake.count(demo.CLAUDE_PATH) == 1  # the usage read happened and was rejected
    assert fake.count(demo.TOKEN_PATH) == 0  # and no refresh token ever left
    assert result.returncode == 1, result.stderr
    (account,) = json.loads(result.stdout)["accounts"]
    assert account["error"].startswith("Cannot store new tokens: " + expect), account["error"]
    assert account["error"].endswith("; not refreshing")
    assert path.read_bytes() == before
    assert "Traceback" not in result.stderr and "locked-refresh" not in result.stderr


def test_same_setup_with_a_writable_file_refreshes(scene):
    """The control: the same run on a file nobody may rewrite does send the refresh."""
    base, fake, path = scene
    os.chown(path, OTHER_UID, OTHER_GID)
    os.chmod(base / "auth", 0o700)
    result = run_as_nobody(base, fake)
    assert result.returncode == 0, result.stdout + result.stderr
    assert fake.count(demo.TOKEN_PATH) == 1
    assert json.loads(path.read_text())["refresh_token"].startswith("demo-refresh-")
    assert os.stat(path).st_uid == OTHER_UID
