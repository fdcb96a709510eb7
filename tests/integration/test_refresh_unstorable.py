"""A credential file whose new content could not be written as strict JSON (`1e400` reads as
infinity) is not refreshed: the script says why on that account and the loopback token
endpoint never sees a request; the same file without that number is refreshed once."""
import pytest

from support import SECRETS, claude_credentials, write_compact

import hostile_server as hs
from hostile_server import TOKEN_PATH

PAST = "2000-01-01T00:00:00Z"


@pytest.mark.parametrize("raw, sent", [("1e400", 0), ("1e300", 1)])
def test_unstorable_number_sends_no_refresh_request(auth_dir, monkeypatch, capsys, raw, sent):
    path = write_compact(auth_dir.path / "claude-a@example.com.json",
                         claude_credentials(expired=PAST))
    path.write_text(path.read_text().rstrip()[:-1] + ',"limit":' + raw + "}")
    before = path.read_bytes()
    with hs.HostileServer(None, TOKEN_PATH, set()) as server:
        for name, value in server.environ().items():
            monkeypatch.setenv(name, value)
        run = hs.run_cli(["--auth-dir", str(auth_dir), "--json", "--refresh-expired", "-vv"],
                         capsys)
    assert server.count(TOKEN_PATH) == sent
    [account] = run.report["accounts"]
    hs.assert_no_tokens(SECRETS + tuple(server.issued), run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    if sent:
        assert account["error"] is None, account["error"]
        assert "Infinity" not in path.read_text() and '"limit":1e+300' in path.read_text()
    else:
        assert account["error"].startswith("Cannot store new tokens: the file holds a number "
                                           "JSON cannot carry"), account["error"]
        assert account["error"].endswith("; not refreshing")
        assert path.read_bytes() == before
