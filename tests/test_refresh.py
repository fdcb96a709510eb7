"""refresh: the one locked, re-reading, atomic credential writer (SPEC §6)."""
import json
import os
import threading
import time
from datetime import datetime, timezone

import filelock
import pytest
from freezegun import freeze_time

from oauth_usage_tracker import credentials, refresh as module
from oauth_usage_tracker.authdir import AuthDirectory
from oauth_usage_tracker.refresh import GUARD
from oauth_usage_tracker.errors import CredentialError, LockTimeout, TokenRefreshError

from support import CLAUDE_REFRESH, claude_credentials, write_compact

NOW = datetime(2026, 10, 1, 12, 0, 0, tzinfo=timezone.utc)
NEW_ACCESS = "sk-ant-oat01-NEWaccessTESTtoken000000000000"
NEW_REFRESH = "sk-ant-ort01-NEWrefreshTESTtoken00000000000"
USER_KEYS = dict(label="work account", priority=7, headers={"X-Team": "blue", "X-N": 2},
                 excluded_models=["claude-opus-4", "claude-haiku"], disable_cooling=True,
                 weight=1.0, note=None, prefix="", proxy_url="socks5://127.0.0.1:1080")
WAIT = 5  # seconds a thread handshake may take before the test fails, never slept


def fixed_now():
    return NOW


def grant(access=NEW_ACCESS, refresh=NEW_REFRESH, expires_in=28800.0):
    return credentials.TokenGrant(access_token=access, refresh_token=refresh, expires_in=expires_in)


class Exchange:
    """An `exchange` callable that records the refresh tokens it was given."""

    def __init__(self, result=None, action=None):
        self.sent = []
        self.result = result if result is not None else grant()
        self.action = action

    def __call__(self, refresh_token):
        self.sent.append(refresh_token)
        if self.action is not None:
            self.action()
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def must_not_exchange(refresh_token):
    raise AssertionError("the refresh token was sent")


def refresh(path, seen, exchange, **options):
    options.setdefault("lock_timeout", 2)
    return module.refresh_tokens(str(path), seen, exchange, fixed_now, **options)


@pytest.fixture
def cred(tmp_path):
    """A compact Claude credential file as CLIProxyAPI writes it, with user keys."""
    return write_compact(tmp_path / "claude-alice@example.com.json",
                         claude_credentials(**USER_KEYS))


def read(path):
    return json.loads(path.read_text())


def leftovers(path):
    """Files in the directory besides the credential file and its lock."""
    names = set(os.listdir(path.parent)) - {path.name, path.name + ".lock"}
    return sorted(names)


# --- reprs ------------------------------------------------------------------------------------


def test_token_grant_and_refresh_result_reprs_hide_tokens():
    text = repr(grant()) + repr(module.RefreshResult(access_token=NEW_ACCESS, rotated=True))
    assert NEW_ACCESS not in text
    assert NEW_REFRESH not in text


# --- refresh_tokens: the write-back -------------------------------------------------------------


def test_refresh_tokens_exchanges_and_writes_back(cred):
    seen = read(cred)
    exchange = Exchange()
    result = refresh(cred, seen, exchange)
    assert result.access_token == NEW_ACCESS
    assert result.rotated is True
    assert exchange.sent == [CLAUDE_REFRESH]
    on_disk = read(cred)
    assert on_disk["access_token"] == NEW_ACCESS
    assert on_disk["refresh_token"] == NEW_REFRESH
    assert on_disk["expired"] == "2026-10-01T20:00:00Z"
    assert on_disk["last_refresh"] == "2026-10-01T12:00:00Z"
    assert leftovers(cred) == []


def test_refresh_tokens_keeps_every_other_key_value_and_type(cred):
    seen = read(cred)
    refresh(cred, seen, Exchange())
    on_disk = read(cred)
    expected = dict(seen, access_token=NEW_ACCESS, refresh_token=NEW_REFRESH,
                    expired="2026-10-01T20:00:00Z", last_refresh="2026-10-01T12:00:00Z")
    assert on_disk == expected
    assert list(on_disk) == list(seen)  # key order kept too
    for key, value in seen.items():
        assert type(on_disk[key]) is type(value), key
    assert type(on_disk["weight"]) is float and on_disk["weight"] == 1.0
    assert type(on_disk["priority"]) is int
    assert on_disk["disabled"] is False and on_disk["disable_cooling"] is True
    assert on_disk["note"] is None
    assert on_disk["headers"] == {"X-Team": "blue", "X-N": 2}
    assert on_disk["excluded_models"] == ["claude-opus-4", "claude-haiku"]


def test_refresh_tokens_without_new_refresh_token_keeps_the_old_one(cred):
    refresh(cred, read(cred), Exchange(grant(refresh=None)))
    assert read(cred)["refresh_token"] == CLAUDE_REFRESH
    assert read(cred)["access_token"] == NEW_ACCESS


@pytest.mark.parametrize("newline", [False, True])
def test_refresh_tokens_compact_file_stays_compact(tmp_path, newline):
    path = write_compact(tmp_path / "claude-a.json", claude_credentials(**USER_KEYS),
                         newline=newline)
    refresh(path, read(path), Exchange())
    text = path.read_text()
    assert text.endswith("\n") is newline
    body = text.rstrip("\n")
    assert "\n" not in body
    assert json.dumps(json.loads(body), separators=(",", ":")) == body


@pytest.mark.parametrize("indent", [2, 4])
def test_refresh_tokens_pretty_file_stays_pretty(tmp_path, indent):
    path = tmp_path / "claude-a.json"
    data = claude_credentials(**USER_KEYS)
    path.write_text(json.dumps(data, indent=indent) + "\n")
    refresh(path, read(path), Exchange())
    text = path.read_text()
    assert text.endswith("}\n")
    assert text == json.dumps(read(path), indent=indent) + "\n"


def test_refresh_tokens_pretty_file_without_newline_gets_none(tmp_path):
    path = tmp_path / "claude-a.json"
    path.write_text(json.dumps(claude_credentials(), indent=2))
    refresh(path, read(path), Exchange())
    assert path.read_text().endswith("}")


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_refresh_tokens_keeps_the_permission_bits(cred, mode):
    os.chmod(cred, mode)
    refresh(cred, read(cred), Exchange())
    assert os.stat(cred).st_mode & 0o777 == mode


def test_refresh_tokens_replaces_the_file_atomically(cred):
    inode_before = os.stat(cred).st_ino
    refresh(cred, read(cred), Exchange())
    # A new inode: the file was replaced by rename, not truncated and rewritten in place.
    assert os.stat(cred).st_ino != inode_before
    assert leftovers(cred) == []


@freeze_time("2026-10-01T12:00:00Z")
def test_refresh_tokens_expiry_is_now_plus_expires_in_in_utc_z(cred):
    module.refresh_tokens(str(cred), read(cred), Exchange(grant(expires_in=3600)),
                          lambda: datetime.now(timezone.utc), 2)
    on_disk = read(cred)
    assert on_disk["expired"] == "2026-10-01T13:00:00Z"
    assert on_disk["last_refresh"] == "2026-10-01T12:00:00Z"


def test_refresh_tokens_now_with_offset_is_written_in_utc():
    from datetime import timedelta
    local = datetime(2026, 10, 1, 14, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    merged = module.merge_grant(claude_credentials(), grant(expires_in=60), local)
    assert merged["expired"] == "2026-10-01T12:01:00Z"
    assert merged["last_refresh"] == "2026-10-01T12:00:00Z"


# --- refresh_tokens: the re-read under the lock --------------------------------------------------


def rewrite(path, **changes):
    data = read(path)
    data.update(changes)
    write_compact(path, data)


def test_refresh_tokens_rotated_since_seen_uses_file_tokens_and_sends_nothing(cred):
    seen = read(cred)
    rewrite(cred, access_token="sk-ant-oat01-OTHERwriter", refresh_token="sk-ant-ort01-OTHER",
            expired="2099-06-01T00:00:00Z")
    before = cred.read_bytes()
    result = refresh(cred, seen, must_not_exchange)
    assert result.access_token == "sk-ant-oat01-OTHERwriter"
    assert result.rotated is False
    assert cred.read_bytes() == before


def test_refresh_tokens_expiry_changed_since_seen_counts_as_rotated(cred):
    seen = read(cred)
    rewrite(cred, access_token="sk-ant-oat01-SAMErefresh", expired="2099-06-01T00:00:00Z")
    result = refresh(cred, seen, must_not_exchange)
    assert result.access_token == "sk-ant-oat01-SAMErefresh"
    assert result.rotated is False


def test_refresh_tokens_rotated_file_without_access_token_is_an_error(cred):
    seen = read(cred)
    rewrite(cred, access_token="", refresh_token="sk-ant-ort01-OTHER")
    with pytest.raises(CredentialError):
        refresh(cred, seen, must_not_exchange)


def test_refresh_tokens_without_refresh_token_is_an_error_and_sends_nothing(tmp_path):
    path = write_compact(tmp_path / "claude-a.json", claude_credentials(refresh_token=""))
    before = path.read_bytes()
    with pytest.raises(CredentialError) as caught:
        refresh(path, read(path), must_not_exchange)
    assert "refresh_token" in str(caught.value)
    assert path.read_bytes() == before


# --- refresh_tokens: failures --------------------------------------------------------------------


def test_refresh_tokens_invalid_grant_after_a_rotation_adopts_the_new_tokens(cred):
    seen = read(cred)

    proxy_wrote = []

    def proxy_rotates_meanwhile():
        rewrite(cred, access_token="sk-ant-oat01-PROXY", refresh_token="sk-ant-ort01-PROXY",
                expired="2099-06-01T00:00:00Z")
        proxy_wrote.append(cred.read_bytes())

    exchange = Exchange(TokenRefreshError("rejected", invalid_grant=True),
                        action=proxy_rotates_meanwhile)
    result = refresh(cred, seen, exchange, invalid_grant_wait=2)
    assert exchange.sent == [CLAUDE_REFRESH]
    assert result.access_token == "sk-ant-oat01-PROXY"
    assert result.rotated is False
    assert cred.read_bytes() == proxy_wrote[0]  # the proxy's file, untouched by us


def test_refresh_tokens_invalid_grant_with_rotation_during_the_poll_adopts_it(cred):
    seen = read(cred)
    polled = threading.Event()
    real_read = module._read
    reads = []

    def counting_read(auth, name):
        reads.append(name)
        if len(reads) == 3:  # initial re-read, first poll read, then the proxy has written
            rewrite(cred, access_token="sk-ant-oat01-LATE", refresh_token="sk-ant-ort01-LATE")
            polled.set()
        return real_read(auth, name)

    exchange = Exchange(TokenRefreshError("rejected", invalid_grant=True))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "_read", counting_read)
        result = refresh(cred, seen, exchange, invalid_grant_wait=2)
    assert polled.is_set()
    assert result.access_token == "sk-ant-oat01-LATE"
    assert result.rotated is False


def test_refresh_tokens_invalid_grant_without_rotation_raises_after_the_poll(cred):
    before = cred.read_bytes()
    exchange = Exchange(TokenRefreshError("rejected", invalid_grant=True))
    started = time.monotonic()
    with pytest.raises(TokenRefreshError) as caught:
        refresh(cred, read(cred), exchange, invalid_grant_wait=0.3)
    elapsed = time.monotonic() - started
    assert caught.value.invalid_grant is True
    assert 0.3 <= elapsed < 2
    assert exchange.sent == [CLAUDE_REFRESH]
    assert cred.read_bytes() == before
    assert leftovers(cred) == []


def test_refresh_tokens_other_refresh_errors_raise_at_once_and_leave_the_file(cred):
    before = cred.read_bytes()
    exchange = Exchange(TokenRefreshError("Claude token refresh API returned 503", status=503))
    started = time.monotonic()
    with pytest.raises(TokenRefreshError) as caught:
        refresh(cred, read(cred), exchange, invalid_grant_wait=30)
    assert time.monotonic() - started < 5
    assert str(caught.value) == "Claude token refresh API returned 503"
    assert exchange.sent == [CLAUDE_REFRESH]
    assert cred.read_bytes() == before
    assert leftovers(cred) == []


def test_refresh_tokens_unexpected_exception_leaves_the_file_and_releases_the_lock(cred):
    before = cred.read_bytes()
    with pytest.raises(RuntimeError):
        refresh(cred, read(cred), Exchange(RuntimeError("boom")))
    assert cred.read_bytes() == before
    other = filelock.FileLock(str(cred) + ".lock", timeout=0)
    other.acquire()
    other.release()
    assert GUARD.in_flight() == 0


# --- the lock -------------------------------------------------------------------------------------


def test_refresh_tokens_lock_file_sits_beside_and_does_not_end_in_json(cred):
    lock_path = str(cred) + ".lock"
    observed = {}

    def exchange(refresh_token):
        observed["exists"] = os.path.exists(lock_path)
        other = filelock.FileLock(lock_path, timeout=0)
        try:
            other.acquire()
        except filelock.Timeout:
            observed["held"] = True
        else:
            other.release()
            observed["held"] = False
        return grant()

    refresh(cred, read(cred), exchange)
    assert observed == {"exists": True, "held": True}
    assert lock_path.endswith(".json.lock")
    assert not lock_path.endswith(".json")
    # No other file of the directory matches CLIProxyAPI's *.json glob.
    assert [n for n in os.listdir(cred.parent) if n.endswith(".json")] == [cred.name]


def test_refresh_tokens_lock_is_held_from_another_thread_too(cred):
    lock_path = str(cred) + ".lock"
    outcome = []

    def try_from_thread():
        other = filelock.FileLock(lock_path, timeout=0)
        try:
            other.acquire()
        except filelock.Timeout:
            outcome.append("held")
        else:
            other.release()
            outcome.append("free")

    def exchange(refresh_token):
        thread = threading.Thread(target=try_from_thread)
        thread.start()
        thread.join(WAIT)
        return grant()

    refresh(cred, read(cred), exchange)
    assert outcome == ["held"]


def test_refresh_tokens_waits_then_times_out_on_a_held_lock(cred):
    holder = filelock.FileLock(str(cred) + ".lock")
    holder.acquire()
    try:
        before = cred.read_bytes()
        with pytest.raises(LockTimeout) as caught:
            refresh(cred, read(cred), must_not_exchange, lock_timeout=0.2)
        assert "try again later" in str(caught.value)
        assert cred.read_bytes() == before
    finally:
        holder.release()


def test_refresh_tokens_second_caller_waits_and_takes_the_first_callers_tokens(cred):
    """Two refreshes of the same file from the same `seen`: one sends, the other re-reads."""
    seen = read(cred)
    inside = threading.Event()
    finish = threading.Event()
    results = {}

    def slow_exchange(refresh_token):
        inside.set()
        assert finish.wait(WAIT)
        return grant()

    def first():
        results["first"] = refresh(cred, seen, slow_exchange, lock_timeout=WAIT)

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(WAIT)
    second = threading.Thread(
        target=lambda: results.__setitem__("second", refresh(cred, seen, must_not_exchange,
                                                             lock_timeout=WAIT)))
    second.start()
    finish.set()
    thread.join(WAIT)
    second.join(WAIT)
    assert results["first"].rotated is True
    assert results["second"].rotated is False
    assert results["second"].access_token == NEW_ACCESS


# --- writes in flight -----------------------------------------------------------------------------


def test_writes_in_flight_cover_an_exchange_until_the_write(cred):
    entered = threading.Event()
    release = threading.Event()
    errors = []

    def blocked_exchange(refresh_token):
        entered.set()
        if not release.wait(WAIT):
            errors.append("never released")
        return grant()

    thread = threading.Thread(target=lambda: refresh(cred, read(cred), blocked_exchange))
    assert GUARD.in_flight() == 0
    assert GUARD.wait_idle(timeout=0) is True
    thread.start()
    try:
        assert entered.wait(WAIT)
        assert GUARD.in_flight() == 1
        assert GUARD.wait_idle(timeout=0.05) is False
    finally:
        release.set()
    assert GUARD.wait_idle(timeout=WAIT) is True
    assert GUARD.in_flight() == 0
    thread.join(WAIT)
    assert not thread.is_alive()
    assert errors == []
    # wait_for_writes returned only once the new tokens were on disk.
    assert read(cred)["access_token"] == NEW_ACCESS


def test_writes_in_flight_still_counted_during_the_file_write(cred, monkeypatch):
    during_write = []
    real_replace = AuthDirectory.replace

    def observing_replace(self, source, target):
        during_write.append(GUARD.in_flight())
        return real_replace(self, source, target)

    monkeypatch.setattr(AuthDirectory, "replace", observing_replace)
    refresh(cred, read(cred), Exchange())
    assert during_write == [1]
    assert GUARD.in_flight() == 0


def test_writes_in_flight_back_to_zero_after_a_failed_exchange(cred):
    with pytest.raises(TokenRefreshError):
        refresh(cred, read(cred), Exchange(TokenRefreshError("nope")))
    assert GUARD.in_flight() == 0
    assert GUARD.wait_idle(timeout=0) is True


def test_writes_in_flight_not_counted_when_nothing_is_sent(cred):
    seen = read(cred)
    rewrite(cred, refresh_token="sk-ant-ort01-OTHER")
    counts = []
    real_read = module._read

    def observing_read(*args, **kwargs):
        counts.append(GUARD.in_flight())
        return real_read(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "_read", observing_read)
        refresh(cred, seen, must_not_exchange)
    assert counts == [0]


def test_serialize_like_keeps_style():
    data = {"b": 1, "a": [1, 2]}
    assert credentials.serialize_like(data, b'{"x":1}') == b'{"b":1,"a":[1,2]}'
    assert credentials.serialize_like(data, b'{"x":1}\n') == b'{"b":1,"a":[1,2]}\n'
    assert credentials.serialize_like(data, b'{\n    "x": 1\n}\n') == \
        (json.dumps(data, indent=4) + "\n").encode()


def test_refresh_tokens_through_symlink_rewrites_the_target_and_keeps_the_link(tmp_path):
    from datetime import datetime, timezone
    from oauth_usage_tracker import credentials as store
    from oauth_usage_tracker import refresh as writer
    from support import claude_credentials, write_compact
    real = write_compact(tmp_path / "real-claude.json", claude_credentials())
    link = tmp_path / "claude-link.json"
    link.symlink_to(real.name)
    seen = store.read_json_object(str(link))
    result = writer.refresh_tokens(
        str(link), seen, lambda token: store.TokenGrant("new-access", "new-refresh", 3600),
        lambda: datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc), lock_timeout=5)
    assert result.rotated and link.is_symlink()
    assert store.read_json_object(str(real))["refresh_token"] == "new-refresh"
    assert (tmp_path / "real-claude.json.lock").exists()
