"""Decompression bombs: a few hundred bytes of nested gzip (`Content-Encoding: gzip, gzip, gzip`)
that inflate to 512 MiB, from a real loopback server, on the usage endpoint and on the token
endpoint. The account gets a clear sentence, the others go on, and the script's peak memory
(measured by its parent with getrusage) stays small. Every request asks for `identity`."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from support import SECRETS, claude_credentials, codex_credentials, write_compact

import hostile_server as hs
from hostile_server import CLAUDE_PATH, CODEX_PATH, TOKEN_PATH

COMMAND = ([shutil.which("oauth-usage-tracker")] if shutil.which("oauth-usage-tracker")
           else [sys.executable, "-m", "oauth_usage_tracker"])
#: The peak a run may reach. A normal run of the script peaks near 45 MiB; a bomb decompressed
#: whole (urllib3 before 2.6) takes the 512 MiB it inflates to, and more.
MAX_RSS_KIB = 160 * 1024
# The parent of the script: runs it, then reports its children's peak RSS (KiB) as the last
# line of stderr.
MEASURE = ("import resource, subprocess, sys\n"
           "status = subprocess.run(sys.argv[1:]).returncode\n"
           "sys.stderr.write('\\npeak-rss-kib %d\\n' % "
           "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
           "sys.exit(status)\n")


@pytest.fixture(scope="module")
def bomb():
    return hs.nested_gzip_bomb(layers=3, mebibytes=512)


def bomb_fault(bomb):
    return hs.send_response(200, bomb, {"Content-Encoding": "gzip, gzip, gzip"})


def run_measured(args, environ, home):
    """Run the installed script under a parent that measures it; return (status, stdout,
    the script's stderr, peak RSS in KiB)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH_USAGE_TRACKER_")}
    env.update(environ, HOME=str(home))
    process = subprocess.run([sys.executable, "-c", MEASURE] + COMMAND + args, env=env,
                             capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL)
    stderr, _, last = process.stderr.rstrip("\n").rpartition("\n")
    assert last.startswith("peak-rss-kib "), process.stderr
    return process.returncode, process.stdout, stderr, int(last.split()[1])


@pytest.mark.parametrize("provider", ["claude", "codex"])
def test_nested_gzip_usage_body_is_a_clear_error_and_memory_stays_small(auth_dir, tmp_path, bomb,
                                                                        provider):
    write_compact(auth_dir.path / "claude-a@example.com.json", claude_credentials())
    codex = codex_credentials()
    codex["id_token"] = ""
    write_compact(auth_dir.path / "codex-b@example.com.json", codex)
    path = CLAUDE_PATH if provider == "claude" else CODEX_PATH
    with hs.HostileServer(bomb_fault(bomb), path, set()) as server:
        status, stdout, stderr, peak = run_measured(
            ["--auth-dir", str(auth_dir), "--json", "--timeout", "5", "--no-token-refresh"],
            server.environ(), tmp_path / "home")
    accounts = {a["id"]: a for a in json.loads(stdout)["accounts"]}
    victim = "%s-%s@example.com.json" % (provider, "a" if provider == "claude" else "b")
    other = [name for name in accounts if name != victim][0]
    assert peak < MAX_RSS_KIB, "the script peaked at %d MiB" % (peak // 1024)
    assert status == 1, stderr
    assert "larger than" in accounts[victim]["error"], accounts[victim]["error"]
    assert accounts[other]["error"] is None and accounts[other]["windows"]
    assert "Traceback" not in stderr
    hs.assert_no_tokens(SECRETS, stdout, stderr)
    assert server.requests and all(request.headers.get("accept-encoding") == "identity"
                                   for request in server.requests)


def test_nested_gzip_token_answer_is_a_clear_error_and_the_file_is_kept(auth_dir, monkeypatch,
                                                                        capsys, bomb):
    path = write_compact(auth_dir.path / "claude-a@example.com.json",
                         claude_credentials(expired="2000-01-01T00:00:00Z"))
    before = path.read_bytes()
    with hs.HostileServer(bomb_fault(bomb), TOKEN_PATH, set()) as server:
        for name, value in server.environ().items():
            monkeypatch.setenv(name, value)
        run = hs.run_cli(["--auth-dir", str(auth_dir), "--json", "--timeout", "5",
                          "--refresh-expired"], capsys)
    [account] = run.report["accounts"]
    assert "larger than" in account["error"], account["error"]
    assert run.status == 1 and "Traceback" not in run.stderr
    assert server.count(TOKEN_PATH) == 1
    assert path.read_bytes() == before
    hs.assert_no_tokens(SECRETS, run.stdout, run.stderr)
    assert all(request.headers.get("accept-encoding") == "identity"
               for request in server.requests)
