"""The connect deadline through the installed script: a `sitecustomize` put on the child's
PYTHONPATH by the test (nothing in the package reads it) makes `localhost` port 1 resolve to four
loopback addresses that never answer a connect. A one-shot run with --timeout 2 ends at the
deadline, not after 4 x 2 s; SIGTERM ends a run whose read is still connecting; a refresh cut
while connecting is unsent, so the next --watch cycle sends the same refresh token again."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from oauth_usage_tracker import demo
from support import CLAUDE_REFRESH, assert_no_secrets, signal_and_reap, wait_for

from unanswering import unanswering_ports

COMMAND = ([shutil.which("oauth-usage-tracker")] if shutil.which("oauth-usage-tracker")
           else [sys.executable, "-m", "oauth_usage_tracker"])
PAST = "2000-01-01T00:00:00Z"
SEVERAL = "http://localhost:1"

SHIM = '''\
import os
import socket

_real = socket.getaddrinfo


def _getaddrinfo(host, port, *args, **kwargs):
    if (host, port) != ("localhost", 1):
        return _real(host, port, *args, **kwargs)
    with open(%(lookups)r, "a") as lookups:
        lookups.write("lookup\\n")
    if os.path.exists(%(up)r):
        addresses = [("127.0.0.1", %(up_port)d)]
    else:
        addresses = [("127.0.0.1", port) for port in %(ports)r]
    return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address)
            for address in addresses]


socket.getaddrinfo = _getaddrinfo
'''


@pytest.fixture
def several(tmp_path):
    """Four unanswering ports and the shim that resolves localhost:1 to them (see _Shim)."""
    with unanswering_ports(4) as ports:
        yield _Shim(tmp_path, ports)


class _Shim:
    """The shim's directory and the script's environment with it on PYTHONPATH. The shim counts
    its lookups in `lookups` and, once the file `up` exists, resolves to `up_port` instead."""

    def __init__(self, tmp_path, ports):
        self.directory = tmp_path / "shim"
        self.directory.mkdir()
        self.lookups = tmp_path / "lookups"
        self.up = tmp_path / "up"
        self.ports = ports
        self.write(up_port=0)
        self.environ = {k: v for k, v in os.environ.items()
                        if not k.startswith("OAUTH_USAGE_TRACKER_")}
        self.environ["HOME"] = str(tmp_path / "home")
        self.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(self.directory), os.environ.get("PYTHONPATH")]))

    def write(self, up_port):
        (self.directory / "sitecustomize.py").write_text(SHIM % {
            "lookups": str(self.lookups), "up": str(self.up), "up_port": up_port,
            "ports": self.ports})

    def count(self):
        return self.lookups.read_text().count("lookup") if self.lookups.exists() else 0


def test_one_shot_run_ends_at_the_deadline(auth_dir, several):
    claude = auth_dir.claude(expired=PAST)
    auth_dir.codex()
    before = claude.read_bytes()
    env = dict(several.environ, OAUTH_USAGE_TRACKER_CODEX_USAGE_URL=SEVERAL + demo.CODEX_PATH,
               OAUTH_USAGE_TRACKER_CLAUDE_USAGE_URL=SEVERAL + demo.CLAUDE_PATH,
               OAUTH_USAGE_TRACKER_CLAUDE_TOKEN_URL=SEVERAL + demo.TOKEN_PATH)
    started = time.monotonic()
    result = subprocess.run(COMMAND + ["--auth-dir", str(auth_dir), "--json", "--no-state",
                                       "--refresh-expired", "--timeout", "2"],
                            env=env, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    assert several.count() == 2  # the shim was in force: the Codex read and the refresh
    assert "Codex usage request timed out after 2 s" in result.stderr
    assert "Claude token refresh request timed out after 2 s" in result.stderr
    assert elapsed < 5, elapsed  # 2 s and the script's start; urllib3's own loop took 8 s more
    assert claude.read_bytes() == before
    assert "Traceback" not in result.stderr
    assert_no_secrets(result.stdout, result.stderr)


def test_sigterm_ends_a_run_whose_read_is_still_connecting(auth_dir, several):
    auth_dir.codex()
    env = dict(several.environ, OAUTH_USAGE_TRACKER_CODEX_USAGE_URL=SEVERAL + demo.CODEX_PATH)
    process = subprocess.Popen(COMMAND + ["--auth-dir", str(auth_dir), "--json", "--no-state",
                                          "--timeout", "120"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, stdin=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: several.count() == 1)  # resolved: connecting from now on
        out, err, elapsed = signal_and_reap(process, signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 143, err
    assert elapsed < 3, elapsed
    assert "Traceback" not in err
    assert_no_secrets(out, err)


def test_a_refresh_cut_while_connecting_is_sent_again_next_cycle(tmp_path, several):
    directory = tmp_path / "auth"
    directory.mkdir()
    with demo.FakeProviders() as fake:
        fake.add_account(demo.FakeAccount("claude", "w@example.com"), "old-access",
                         CLAUDE_REFRESH)
        fake.expire_access("old-access")
        path = demo.write_credential(str(directory), "claude", "w@example.com", "old-access",
                                     CLAUDE_REFRESH,
                                     datetime.now(timezone.utc) - timedelta(hours=1))
        several.write(up_port=int(fake.base_url.rsplit(":", 1)[1]))
        env = dict(several.environ, **fake.environ())
        env["OAUTH_USAGE_TRACKER_CLAUDE_TOKEN_URL"] = SEVERAL + demo.TOKEN_PATH
        process = subprocess.Popen(COMMAND + ["--auth-dir", str(directory), "--no-state",
                                              "--refresh-expired", "--timeout", "2",
                                              "--watch", "1"],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, stdin=subprocess.DEVNULL)
        try:
            # The first refresh resolves to the unanswering addresses and times out; once the
            # next lookup has begun, the name points at the fake.
            assert wait_for(lambda: several.count() >= 1 and process.poll() is None)
            assert wait_for(lambda: several.count() >= 2, timeout=30)
            several.up.touch()
            assert wait_for(lambda: fake.count(demo.TOKEN_PATH) == 1, timeout=30)
            assert wait_for(lambda: json.loads(Path(path).read_text())["refresh_token"]
                             != CLAUDE_REFRESH)
            out, err, _ = signal_and_reap(process, signal.SIGTERM)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert "Claude token refresh request timed out after 2 s" in err
    assert "no clear answer" not in err
    assert "Traceback" not in err
    assert_no_secrets(out, err)


