"""Guards around the token refresh that the review of the whole change asked for: an unclear
answer is never re-sent, shutdown starts no new refresh, odd text and other owners survive a
write-back, one file under two names is one account."""
import json
import os
from datetime import datetime, timezone

import pytest

from oauth_usage_tracker import accounts, credentials, refresh as writer
from oauth_usage_tracker.errors import CredentialError, TokenRefreshError
from support import CLAUDE_REFRESH, claude_credentials, fork, write_compact

NOW = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)


def refresh(path, exchange):
    seen = credentials.read_json_object(str(path))
    return writer.refresh_tokens(str(path), seen, exchange, lambda: NOW, lock_timeout=5,
                                      invalid_grant_wait=0.05)


class Exchange:
    def __init__(self, outcome):
        self.outcome = outcome
        self.sent = []

    def __call__(self, token):
        self.sent.append(token)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


@pytest.mark.parametrize("unknown, resent", [(True, False), (False, True)])
def test_refresh_tokens_unclear_answer_is_never_sent_again(tmp_path, unknown, resent):
    path = write_compact(tmp_path / "claude-a.json", claude_credentials())
    exchange = Exchange(TokenRefreshError("Claude token refresh request timed out after 15 s",
                                          outcome_unknown=unknown))
    with pytest.raises(TokenRefreshError):
        refresh(path, exchange)
    with pytest.raises(TokenRefreshError) as second:
        refresh(path, exchange)
    assert exchange.sent == [CLAUDE_REFRESH] * (2 if resent else 1)
    if not resent:
        assert "not sent again" in str(second.value)
        assert CLAUDE_REFRESH not in str(second.value)


def test_refresh_tokens_unclear_token_rotated_by_another_writer_is_used(tmp_path):
    path = write_compact(tmp_path / "claude-a.json", claude_credentials())
    with pytest.raises(TokenRefreshError):
        refresh(path, Exchange(TokenRefreshError("502", outcome_unknown=True)))
    write_compact(path, claude_credentials(refresh_token="sk-ant-ort01-rotated-by-proxy"))
    exchange = Exchange(credentials.TokenGrant("new-access", "new-refresh", 3600))
    assert refresh(path, exchange).rotated
    assert exchange.sent == ["sk-ant-ort01-rotated-by-proxy"]


def test_refresh_tokens_refused_during_shutdown_sends_nothing(tmp_path):
    path = write_compact(tmp_path / "claude-a.json", claude_credentials())
    before = path.read_bytes()
    writer.GUARD.refuse_new()
    exchange = Exchange(credentials.TokenGrant("new-access", "new-refresh", 3600))
    with pytest.raises(CredentialError, match="Stopping"):
        refresh(path, exchange)
    assert exchange.sent == [] and path.read_bytes() == before


def test_refresh_tokens_account_disabled_meanwhile_is_not_refreshed(tmp_path):
    path = write_compact(tmp_path / "claude-a.json", claude_credentials())
    seen = credentials.read_json_object(str(path))
    write_compact(path, claude_credentials(disabled=True))
    exchange = Exchange(credentials.TokenGrant("new-access", "new-refresh", 3600))
    with pytest.raises(CredentialError, match="disabled"):
        writer.refresh_tokens(str(path), seen, exchange, lambda: NOW, lock_timeout=5)
    assert exchange.sent == []


def test_refresh_tokens_lone_surrogate_in_file_is_written_escaped(tmp_path):
    path = tmp_path / "claude-a.json"
    text = json.dumps(claude_credentials(), separators=(",", ":"))[:-1] + ',"note":"\\ud800x"}'
    path.write_text(text)
    exchange = Exchange(credentials.TokenGrant("new-access", "new-refresh", 3600))
    assert refresh(path, exchange).rotated
    written = json.loads(path.read_bytes().decode("ascii"))
    assert written["note"] == "\ud800x" and written["refresh_token"] == "new-refresh"


def test_refresh_tokens_same_expiry_written_differently_is_not_a_rotation(tmp_path):
    path = write_compact(tmp_path / "claude-a.json",
                         claude_credentials(expired="2026-11-24T15:39:03+02:00"))
    seen = dict(credentials.read_json_object(str(path)), expired="2026-11-24T13:39:03Z")
    exchange = Exchange(credentials.TokenGrant("new-access", "new-refresh", 3600))
    assert writer.refresh_tokens(str(path), seen, exchange, lambda: NOW, 5).rotated
    assert exchange.sent == [CLAUDE_REFRESH]


def test_refresh_tokens_edit_made_during_exchange_survives(tmp_path):
    path = write_compact(tmp_path / "claude-a.json", claude_credentials(label="old"))

    def exchange(token):
        write_compact(path, claude_credentials(label="edited meanwhile"))
        return credentials.TokenGrant("new-access", "new-refresh", 3600)

    assert refresh(path, exchange).rotated
    written = json.loads(path.read_text())
    assert written["label"] == "edited meanwhile" and written["access_token"] == "new-access"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_refresh_tokens_as_root_keeps_the_owner_of_file_and_lock(tmp_path):
    path = write_compact(tmp_path / "claude-a.json", claude_credentials())
    os.chown(path, 1234, 2345)
    exchange = Exchange(credentials.TokenGrant("new-access", "new-refresh", 3600))
    assert refresh(path, exchange).rotated
    info = os.stat(path)
    assert (info.st_uid, info.st_gid) == (1234, 2345)
    lock = os.stat(str(path) + ".lock")
    assert (lock.st_uid, lock.st_gid) == (1234, 2345)
    assert json.loads(path.read_text())["access_token"] == "new-access"


def test_discover_accounts_one_file_under_two_names_is_one_account(auth_dir):
    real = auth_dir.claude("alice@example.com")
    (auth_dir.path / "a-symlink.json").symlink_to(real.name)
    os.link(real, auth_dir.path / "z-hardlink.json")
    found = accounts.discover_accounts(auth_dir)
    assert [account.id for account in found.claude] == [real.name]
    assert sorted((s.id, s.reason) for s in found.skipped) == [
        ("a-symlink.json", "duplicate of '%s'" % real.name),
        ("z-hardlink.json", "duplicate of '%s'" % real.name)]


def test_guard_lifecycle_closing_then_reset():
    guard = writer.RefreshGuard()
    with guard.critical():
        assert guard.in_flight() == 1 and guard.wait_idle(timeout=0) is False
    guard.mark_unclear("token-a")
    guard.refuse_new()
    with pytest.raises(CredentialError, match="Stopping"):
        with guard.critical():
            pass  # never entered
    assert guard.in_flight() == 0 and guard.wait_idle(timeout=0) is True
    assert guard.is_unclear("token-a") and not guard.is_unclear("token-b")
    guard.reset()
    assert not guard.is_unclear("token-a")
    with guard.critical():
        assert guard.in_flight() == 1


def test_child_forked_during_a_refresh_starts_with_none_in_flight(tmp_path):
    """fork() while another thread is inside a refresh: the child does not inherit that refresh
    (nor a lock held by it) and can refresh on its own; it keeps the unclear tokens."""
    import threading
    path = write_compact(tmp_path / "claude-a.json", claude_credentials())
    inside, release = threading.Event(), threading.Event()

    def blocked(token):
        inside.set()
        release.wait(10)
        return credentials.TokenGrant("new-access", "new-refresh", 3600)

    writer.GUARD.mark_unclear("spent-elsewhere")
    thread = threading.Thread(target=refresh, args=(path, blocked))
    thread.start()
    assert inside.wait(10)
    reader, writer_fd = os.pipe()
    pid = fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            report = [writer.GUARD.in_flight(), writer.GUARD.is_unclear("spent-elsewhere"),
                      writer.GUARD.wait_idle(timeout=1)]
            os.write(writer_fd, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(writer_fd)
    with os.fdopen(reader) as handle:
        report = json.loads(handle.read())
    os.waitpid(pid, 0)
    release.set()
    thread.join(10)
    assert report == [0, True, True]
    assert writer.GUARD.in_flight() == 0
