"""The README's event recipes, taken from the README itself and run as written: real curl
against a loopback server standing in for ntfy.sh and hc-ping.com, stand-ins for `mail` and
`sendmail` on PATH, the real script from a cron-style shell line, the Python snippet."""
import json
import os
import re
import shlex
import shutil
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from oauth_usage_tracker import demo
from oauth_usage_tracker.events import decide
from oauth_usage_tracker.models import AccountState, AccountUsage, Provider, UsageWindow
from oauth_usage_tracker.notify import run_command, split_command

from test_script import COMMAND, script_env

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
NOW = datetime.now(timezone.utc)
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def recipe(pattern):
    """The one README line matching `pattern`."""
    [line] = [line for line in README.splitlines() if re.search(pattern, line)]
    return line


def on_event_command(pattern):
    """The --on-event value of the README recipe matching `pattern`, as the shell passes it."""
    words = shlex.split(recipe(pattern))
    return words[words.index("--on-event") + 1]


class Recorder:
    """A loopback HTTP server that records each request's method, path and body."""

    def __init__(self):
        recorder = self
        self.requests = []

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                recorder.requests.append((self.command, self.path, self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            do_GET = do_POST = do_HEAD = _serve

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.server.server_address[1]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def an_event():
    low = AccountUsage(id="claude-alice@example.com.json", provider=Provider.CLAUDE,
                       email="alice@example.com", state=AccountState.OK,
                       windows=(UsageWindow("five_hour", "5-hour", 93.0,
                                            NOW + timedelta(hours=3)),))
    return decide({}, [low], [], NOW)[0][0]


def stand_in(directory, name):
    """An executable called `name` that records its arguments and stdin."""
    path = directory / name
    path.write_text('#!/bin/sh\nprintf "%%s\\n" "$@" > "%s.args"\ncat > "%s.stdin"\n'
                    % (path, path))
    path.chmod(0o755)
    return path


@needs_curl
def test_ntfy_recipe_posts_the_event_with_a_template(tmp_path):
    command = on_event_command(r"--on-event 'curl .*ntfy\.sh")
    event = an_event()
    with Recorder() as server:
        argv = split_command(command.replace("https://ntfy.sh", server.url))
        assert run_command(argv, event, environ=dict(os.environ)) == 0
    [(method, path, body)] = server.requests
    assert method == "POST"
    assert path == "/my-quota-topic?tpl=1&t={{.event}}&m={{.message}}"
    data = json.loads(body)
    assert data == event.to_json() and data["event"] and data["message"]  # what {{.x}} reads


@pytest.mark.parametrize("program, pattern", [("mail", r"--on-event 'sh -c \"mail -s"),
                                              ("sendmail", r"\| sendmail you@example")])
def test_mail_recipes_send_the_message_as_subject_and_json_as_body(tmp_path, program, pattern):
    binaries = tmp_path / "bin"
    binaries.mkdir()
    fake = stand_in(binaries, program)
    event = an_event()
    environ = dict(os.environ, PATH="%s:%s" % (binaries, os.environ["PATH"]))
    assert run_command(split_command(on_event_command(pattern)), event, environ=environ) == 0
    args = Path(str(fake) + ".args").read_text().splitlines()
    stdin = Path(str(fake) + ".stdin").read_text()
    if program == "mail":
        assert args == ["-s", event.message, "you@example.com"]
        body = stdin
    else:
        assert args == ["you@example.com"]
        header, _, body = stdin.partition("\n\n")
        assert header == "Subject: " + event.message
    assert json.loads(body) == event.to_json()


@needs_curl
def test_healthchecks_cron_line_pings_the_exit_status(auth_dir, tmp_path):
    line = recipe(r"hc-ping\.com/your-uuid/\$\?")
    shell = line.split("|| ", 1)[1]
    state = tmp_path / "var"
    with demo.FakeProviders() as fake, Recorder() as pings:
        fake.add_account(demo.FakeAccount("codex", "ann@example.com"), "demo-a", "demo-r")
        demo.write_credential(str(auth_dir), "codex", "ann@example.com", "demo-a", "demo-r",
                              NOW + timedelta(days=5))
        shell = (shell.replace("https://hc-ping.com", pings.url)
                 .replace("/var/lib/oauth-usage-tracker", str(state))
                 .replace("oauth-usage-tracker ", " ".join(map(shlex.quote, COMMAND)) + " ", 1))
        env = script_env(dict(fake.environ(), OAUTH_USAGE_TRACKER_AUTH_DIR=str(auth_dir)))
        ok = subprocess.run(["/bin/sh", "-c", shell], env=env, timeout=120)
        fake.expire_access("demo-a")  # a dead login: the run exits 1
        failed = subprocess.run(["/bin/sh", "-c", shell], env=env, timeout=120)
    assert ok.returncode == 0 and failed.returncode == 0  # curl's status: the ping went out
    assert [path for _, path, _ in pings.requests] == ["/your-uuid/0", "/your-uuid/1"]
    assert json.loads((state / "report.json").read_text())["accounts"][0]["error"]


@needs_curl
@pytest.mark.parametrize("result, expected", [("success", "/your-uuid/0"),
                                              ("exit-code", "/your-uuid/fail"),
                                              ("signal", "/your-uuid/fail")])
def test_healthchecks_systemd_drop_in_pings_success_or_fail(result, expected):
    line = recipe(r"^ExecStopPost=.*hc-ping\.com")
    # systemd turns `$$` into `$` and splits the rest like a shell.
    argv = shlex.split(line.split("=", 1)[1].replace("$$", "$"))
    with Recorder() as pings:
        argv = [word.replace("https://hc-ping.com", pings.url) for word in argv]
        env = dict(os.environ, SERVICE_RESULT=result)
        assert subprocess.run(argv, env=env, timeout=60).returncode == 0
    assert [path for _, path, _ in pings.requests] == [expected]


def test_python_snippet_gets_the_events(auth_dir, tmp_path, monkeypatch):
    [snippet] = re.findall(r"```python\n(import queue\n.*?)```", README, re.S)
    with demo.FakeProviders() as fake:
        fake.add_account(demo.FakeAccount("codex", "ann@example.com", [95.0, 20.0]), "demo-a",
                         "demo-r")
        demo.write_credential(str(auth_dir), "codex", "ann@example.com", "demo-a", "demo-r",
                              NOW + timedelta(days=5))
        for name, value in dict(fake.environ(), OAUTH_USAGE_TRACKER_AUTH_DIR=str(auth_dir)).items():
            monkeypatch.setenv(name, value)
        namespace = {}
        exec(compile(snippet, "README.md", "exec"), namespace)
    # 95 % used early in the window: quota_low, then the pace's runs_out_before_reset.
    assert namespace["event"].type.value in ("quota_low", "runs_out_before_reset")
    assert namespace["event"].to_json()["window"]["key"] == "primary_window"
