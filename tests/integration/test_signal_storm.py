"""Signal storms (SPEC §12): hundreds of SIGTERM and SIGINT a few milliseconds apart, until the
process is gone, never let it die by a default handler: a one-shot run exits 143 or 130, `--watch`
exits 0. Through the installed script, repeated. (Which of 143 and 130: the first signal the
interpreter handles, and when both are pending at once it handles SIGINT first, whatever the
order they were sent in.)
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import hostile_server as hs
from hostile_server import CODEX_PATH

COMMAND = ([shutil.which("oauth-usage-tracker")] if shutil.which("oauth-usage-tracker")
           else [sys.executable, "-m", "oauth_usage_tracker"])
REPEATS = 4
STORM = 600


def _storm(process, first):
    """Send `first`, then alternate SIGINT and SIGTERM ~2 ms apart until the process ends."""
    numbers = [first] + [signal.SIGINT, signal.SIGTERM] * STORM
    sent = 0
    for number in numbers:
        if process.poll() is not None:
            break
        try:
            process.send_signal(number)
        except ProcessLookupError:
            break
        sent += 1
        time.sleep(0.002)
    return sent


@pytest.mark.parametrize("repeat", range(REPEATS))
@pytest.mark.parametrize("first, extra, status", [
    (signal.SIGTERM, [], (143, 130)), (signal.SIGINT, [], (130, 143)),
    (signal.SIGTERM, ["--watch", "3600"], (0,)), (signal.SIGINT, ["--watch", "3600"], (0,))])
def test_signal_storm_never_kills_by_default_handler(first, extra, status, repeat, auth_dir,
                                                     tmp_path):
    auth_dir.codex()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH_USAGE_TRACKER_")}
    env["HOME"] = str(tmp_path / "home")
    with hs.HostileServer(hs.trickle_headers(0.5), CODEX_PATH) as server:
        env.update(server.environ())
        process = subprocess.Popen(
            COMMAND + ["--auth-dir", str(auth_dir), "--json", "--no-state", "--timeout", "60",
                       "--output", str(tmp_path / "report.json")] + extra,
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while server.count(CODEX_PATH) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.count(CODEX_PATH) == 1
            sent = _storm(process, first)
            _, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert sent > 1
    assert process.returncode in status, (process.returncode, err[-2000:])
    assert b"Traceback" not in err
    assert err.count(b"not exiting yet") <= 1
