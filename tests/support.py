"""Helpers shared by the tests: fake tokens, sample payloads, CLIProxyAPI-shaped files."""
import contextlib
import json
import os
import warnings
from pathlib import Path

PAYLOADS = Path(__file__).parent / "payloads"

# Obviously fake tokens, long enough to be found if they ever leak into output.
CLAUDE_ACCESS = "sk-ant-oat01-TESTaccessTOKENnotREAL0000000000000000000000000000"
CLAUDE_REFRESH = "sk-ant-ort01-TESTrefreshTOKENnotREAL000000000000000000000000000"
CODEX_ACCESS = "eyJTESTcodexACCESStokenNOTreal.eyJub3RyZWFsIjp0cnVlfQ.SIGNATUREfake"
CODEX_REFRESH = "rt_TESTcodexREFRESHtokenNOTreal000000"
CODEX_ID_TOKEN = "eyJTESTcodexIDtokenNOTreal.eyJlbWFpbCI6InRlc3QifQ.SIGfake"
SECRETS = (CLAUDE_ACCESS, CLAUDE_REFRESH, CODEX_ACCESS, CODEX_REFRESH, CODEX_ID_TOKEN)


def load_payload(name):
    """Return the decoded sample payload `name` (without .json) from tests/payloads."""
    return json.loads((PAYLOADS / (name + ".json")).read_text())


def payload_text(name):
    """Return the raw text of a sample payload file (name with its extension)."""
    return (PAYLOADS / name).read_text()


def claude_credentials(email="alice@example.com", expired="2099-01-01T00:00:00Z", **extra):
    """A Claude credential object as CLIProxyAPI writes it."""
    data = {
        "access_token": CLAUDE_ACCESS, "account_uuid": "0b7c1f2e-1111-4a2b-9c3d-123456789abc",
        "claude_device_ids": ["3f9a0000-0000-0000-0000-000000000001"], "disabled": False,
        "email": email, "expired": expired, "id_token": "",
        "last_refresh": "2026-08-22T06:39:03+02:00", "organization_name": "Example Org",
        "organization_uuid": "5e6f7a8b-2222-4c3d-8e9f-abcdef012345",
        "refresh_token": CLAUDE_REFRESH, "type": "claude",
    }
    data.update(extra)
    return data


def codex_credentials(email="bob@example.com", expired="2099-01-01T00:00:00+02:00", **extra):
    """A Codex credential object as CLIProxyAPI writes it."""
    data = {
        "access_token": CODEX_ACCESS, "account_id": "7d3e2c1b-0000-4000-8000-000000000001",
        "disabled": False, "email": email, "expired": expired, "id_token": CODEX_ID_TOKEN,
        "last_refresh": "2026-08-22T10:15:00+02:00", "refresh_token": CODEX_REFRESH,
        "type": "codex",
    }
    data.update(extra)
    return data


def write_compact(path, data, newline=False):
    """Write JSON the way CLIProxyAPI does: compact, sorted keys."""
    text = json.dumps(data, separators=(",", ":"), sort_keys=True) + ("\n" if newline else "")
    Path(path).write_text(text)
    os.chmod(path, 0o600)
    return Path(path)


def write_pretty(path, data):
    """Write JSON the way other tools do: indented, keys in their own order."""
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
    os.chmod(path, 0o600)
    return Path(path)


class AuthDir:
    """A temporary auth directory with helpers to add credential files."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def __str__(self):
        return str(self.path)

    def __fspath__(self):
        return str(self.path)

    def claude(self, email="alice@example.com", name=None, pretty=False, **extra):
        data = claude_credentials(email=email, **extra)
        target = self.path / (name or "claude-%s.json" % email)
        return (write_pretty if pretty else write_compact)(target, data)

    def codex(self, email="bob@example.com", name=None, pretty=False, **extra):
        data = codex_credentials(email=email, **extra)
        target = self.path / (name or "codex-%s.json" % email)
        return (write_pretty if pretty else write_compact)(target, data)

    def raw(self, name, content):
        target = self.path / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
        return target


def assert_no_secrets(*texts):
    """Fail if any test token (or a long piece of one) appears in the given texts."""
    for text in texts:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        for secret in SECRETS:
            assert secret not in text
            assert secret[12:36] not in text


def process_gone(pid):
    """True when process `pid` has exited (reaped, or a zombie waiting for its parent)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


OTHER_UID = OTHER_GID = 65534  # nobody / nogroup: the "second uid" of the privilege tests
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def fork():
    """os.fork(), without Python 3.12's warning about forking a process that has threads (the
    children here only drop privileges, run one function and _exit)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


class AsUid:
    """`function(*args)` running in a forked child that has dropped to `uid`/`gid` (needs root).
    `result()` waits for it and returns what it returned, or `["raised", type, text]`; the
    result travels back as JSON through a pipe, and the child always ends with os._exit."""

    def __init__(self, uid, gid, function, *args):
        reader, writer = os.pipe()
        self.pid = fork()
        if self.pid == 0:  # pragma: no cover - the child
            status = 0
            try:
                os.close(reader)
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                try:
                    outcome = function(*args)
                except Exception as error:  # the test reads what went wrong
                    outcome = ["raised", type(error).__name__, str(error)]
                os.write(writer, json.dumps(outcome).encode("utf-8"))
            except BaseException:
                status = 70
            finally:
                os._exit(status)
        os.close(writer)
        self._reader = reader

    def result(self):
        chunks = []
        while True:
            chunk = os.read(self._reader, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(self._reader)
        _, status = os.waitpid(self.pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "child failed: %r" % status
        return json.loads(b"".join(chunks).decode("utf-8"))


def run_as(uid, gid, function, *args):
    """Run `function(*args)` as `uid`/`gid` in a forked child and return its result (AsUid)."""
    return AsUid(uid, gid, function, *args).result()


def require_tool(name, *candidates):
    """Return the path of an operator's tool (promtool, node_exporter, systemd-analyze): the
    first existing candidate, else `name` on PATH. Skip the test with the reason when it is
    missing, except under CI (env CI set), where a missing tool fails the test instead."""
    import shutil

    import pytest
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found:
        return found
    reason = "%s is not installed (Debian: apt-get install %s)" % (
        name, {"promtool": "prometheus", "prometheus-node-exporter": "prometheus-node-exporter",
               "systemd-analyze": "systemd"}.get(name, name))
    if os.environ.get("CI"):
        pytest.fail(reason + "; CI must run this test")
    pytest.skip(reason)


class StuckFifo:
    """A FIFO at `path` whose reader never drains it: the reader holds it open and the pipe is
    already full, so the next write would block. `taken()` (after the test) returns what reached
    the pipe beyond the filler; `close()` ends the reader."""

    FILLER = b"f"

    def __init__(self, path):
        os.mkfifo(str(path), 0o666)
        os.chmod(str(path), 0o666)
        self.reader = os.open(str(path), os.O_RDONLY | os.O_NONBLOCK)
        writer = os.open(str(path), os.O_WRONLY | os.O_NONBLOCK)
        self.filled = 0
        try:
            while True:
                self.filled += os.write(writer, self.FILLER * 4096)
        except BlockingIOError:
            pass
        finally:
            os.close(writer)

    def taken(self):
        chunks = []
        while True:
            try:
                chunk = os.read(self.reader, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        assert data[:self.filled] == self.FILLER * self.filled
        return data[self.filled:]

    def close(self):
        os.close(self.reader)


def wait_for(predicate, timeout=20.0, poll=0.02):
    """Poll `predicate` every `poll` seconds; return True once it holds, False after `timeout`."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False


def signal_and_reap(process, number, timeout=30):
    """Send `number` to a running script, wait for it to exit, and return (stdout, stderr,
    seconds from the signal to the exit); a script still running after `timeout` is killed (and
    the test fails on its status)."""
    import subprocess
    import time
    sent = time.monotonic()
    process.send_signal(number)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return out, err, time.monotonic() - sent


def preads(monkeypatch, os_module, record=lambda length, offset: length):
    """Count the os.pread calls made through `os_module` (a module's `os`: the same os, so every
    pread is seen): return the list that gets record(length, offset) of each."""
    seen = []
    real = os.pread

    def pread(fd, length, offset):
        seen.append(record(length, offset))
        return real(fd, length, offset)
    monkeypatch.setattr(os_module, "pread", pread)
    return seen


@contextlib.contextmanager
def loopback_server(answer, keep_alive=False, certificate=None):
    """A loopback HTTP server whose handler answers each GET with answer(path) -> (status,
    reason, headers) and the body `{}`, over HTTP/1.1 kept alive when `keep_alive`, over TLS
    with `certificate` ((cert file, key file)) when given; yields its URL and the list of
    connections it accepted."""
    import http.server
    import ssl
    import threading
    accepted = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

        def setup(self):
            accepted.append(self.client_address)
            super().setup()

        def do_GET(self):
            status, reason, headers = answer(self.path)
            self.send_response(status, reason)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if certificate is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*certificate)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if certificate is not None else "http"
    try:
        yield "%s://127.0.0.1:%d" % (scheme, server.server_address[1]), accepted
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
