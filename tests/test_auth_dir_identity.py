"""The auth directory's identity: recorded by discovery, checked by every later read and refresh,
and by `--watch`'s look at the directory (a swap by this same uid; the second-uid runs are in
tests/integration/test_auth_dir_swap.py)."""
import os
from datetime import datetime, timezone

import pytest

from oauth_usage_tracker import credentials, refresh
from oauth_usage_tracker.accounts import discover_accounts
from oauth_usage_tracker.authdir import AuthDirectory, DirectoryReplaced
from oauth_usage_tracker.watch import directory_fingerprint

from support import AuthDir, claude_credentials, write_compact

REFUSED = "The auth directory was replaced since it was read; not "


@pytest.fixture
def swapped(tmp_path):
    """An account discovered in tmp/auth, then auth moved away and a symlink to tmp/other (a
    credential of the same name, expired: a refresh would want to send its refresh token) put
    in its place. Returns the account and the other directory."""
    auth = AuthDir(tmp_path / "auth")
    auth.claude(email="alice@example.com", name="claude-a.json")
    (account,) = discover_accounts(str(auth)).claude
    other = tmp_path / "other"
    other.mkdir()
    write_compact(other / "claude-a.json",
                  claude_credentials(email="root@example.com", refresh_token="other-refresh",
                                     expired="2000-01-01T00:00:00Z"))
    os.rename(auth.path, tmp_path / "auth.old")
    os.symlink(other, auth.path)
    return account, other


def test_discovery_records_the_directory_it_listed(tmp_path):
    auth = AuthDir(tmp_path / "auth")
    auth.claude()
    auth.codex()
    found = discover_accounts(str(auth))
    info = os.stat(auth.path)
    assert {a.directory_id for a in found.claude + found.codex} == {(info.st_dev, info.st_ino)}
    assert "directory_id" not in repr(found.claude[0])


def test_read_of_a_swapped_directory_is_refused(swapped):
    account, _ = swapped
    with pytest.raises(DirectoryReplaced) as caught:
        credentials.read_json_object(account.path, directory=account.directory_id)
    assert str(caught.value) == REFUSED + "reading the credential file"
    assert not caught.value.unreadable  # the file is fine: state `error`, not `unreadable`
    # Without an identity (an account made by hand), the path is read as it stands.
    assert credentials.read_json_object(account.path)["email"] == "root@example.com"


def test_refresh_in_a_swapped_directory_sends_nothing_and_creates_nothing(swapped):
    account, other = swapped
    sent = []

    def exchange(token):
        sent.append(token)
        raise AssertionError("no refresh token may be sent")

    before = sorted(os.listdir(other))
    with pytest.raises(DirectoryReplaced, match="^" + REFUSED + "refreshing the token$"):
        refresh.refresh_tokens(account.path, {}, exchange, lambda: datetime.now(timezone.utc),
                               2.0, directory_id=account.directory_id)
    assert sent == []
    assert sorted(os.listdir(other)) == before  # no lock file, no temporary file


def test_a_second_handle_is_the_same_directory_even_after_a_swap(tmp_path):
    auth = AuthDir(tmp_path / "auth")
    auth.claude(name="claude-a.json")
    (tmp_path / "other").mkdir()
    with AuthDirectory(str(auth)) as first:
        os.rename(auth.path, tmp_path / "auth.old")
        os.symlink(tmp_path / "other", auth.path)
        with first.again() as second:
            assert second.identity == first.identity
            assert os.listdir(second.fd) == ["claude-a.json"]


def test_watch_fingerprint_changes_when_another_directory_is_put_at_the_path(tmp_path):
    auth = AuthDir(tmp_path / "auth")
    path = auth.claude(name="claude-a.json")
    before = directory_fingerprint(str(auth))
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "claude-a.json").write_bytes(path.read_bytes())
    info = os.stat(path)
    os.utime(copy / "claude-a.json", ns=(info.st_atime_ns, info.st_mtime_ns))
    os.rename(auth.path, tmp_path / "auth.old")
    os.symlink(copy, auth.path)
    after = directory_fingerprint(str(auth))
    assert after is not None and after != before
    # Same names, mtimes and sizes: only the directory's identity differs.
    assert {entry for entry in after if entry[0] != "."} == {
        entry for entry in before if entry[0] != "."}
