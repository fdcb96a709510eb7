"""A 429's Retry-After shown as the cooldown actually kept (60 s – 1 h, SPEC §10), never the raw
header: the script (in-process, `cli.main`) against a real loopback server answering 429.
"""
import pytest

import hostile_server as hs
from hostile_server import CLAUDE_PATH, CODEX_PATH


@pytest.mark.parametrize("header, shown", [
    ("Fri, 31 Dec 9999 23:59:59 GMT", "rate limited; retry after 1 h"),
    ("Wed, 21 Oct 2099 07:28:00 GMT", "rate limited; retry after 1 h"),
    ("99999999999", "rate limited; retry after 1 h"),
    ("86400", "rate limited; retry after 1 h"),
    ("1200", "rate limited; retry after 20 min"),
    ("300", "rate limited; retry after 300 s"),
    ("10", "rate limited; retry after 60 s"),
    ("0.5", "rate limited; retry after 60 s"),
    ("1e400", "rate limited)"),
    ("0", "rate limited)"),
])
@pytest.mark.parametrize("path, what", [(CODEX_PATH, "Codex usage"), (CLAUDE_PATH, "Claude usage")])
def test_retry_after_is_reported_as_the_clamped_cooldown(header, shown, path, what, auth_dir,
                                                         monkeypatch, capsys):
    victim = auth_dir.codex() if path == CODEX_PATH else auth_dir.claude()
    with hs.HostileServer(hs.send_response(429, b"{}", {"Retry-After": header}), path) as server:
        for name, value in server.environ().items():
            monkeypatch.setenv(name, value)
        run = hs.run_cli(["--auth-dir", str(auth_dir), "--json", "--no-state", "--timeout", "5"],
                         capsys)
    error = run.accounts()[victim.name]["error"]
    assert error.startswith("%s API returned 429 (%s" % (what, shown)), error
    assert "e+" not in error and "e+" not in run.stderr
