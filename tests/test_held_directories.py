"""credentials.directories_held: a worker's credential reads share one open descriptor of their
auth directory, checked once, never moved, closed at the end (the per-read rules are in
test_auth_dir_identity and test_credentials)."""
import os
import shutil
import threading
from datetime import datetime, timezone

import pytest

from oauth_usage_tracker import authdir, credentials
from oauth_usage_tracker.accounts import discover_accounts
from oauth_usage_tracker.authdir import DirectoryReplaced, UnsafeFile
from oauth_usage_tracker.errors import CredentialError
from oauth_usage_tracker.models import AccountUsage, Provider, UsageWindow
from oauth_usage_tracker.tracker import OAuthUsageTracker

from support import AuthDir, claude_credentials, write_compact


def open_fds():
    """This process's open descriptors, each with what it names (the listing's own descriptor,
    closed by the time it is looked at, left out)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add((fd, os.readlink("/proc/self/fd/" + fd)))
        except FileNotFoundError:
            pass
    return found


@pytest.fixture
def directory_opens(monkeypatch):
    """The paths (or '.' of a descriptor) every auth directory open was asked for."""
    opened = []
    real = authdir._open_directory

    def counted(path, dir_fd=None):
        opened.append(path)
        return real(path, dir_fd)
    monkeypatch.setattr(authdir, "_open_directory", counted)
    return opened


def discovered(auth):
    found = discover_accounts(str(auth))
    return {account.email: account for account in found.claude + found.codex}


def read(account):
    return credentials.read_json_object(account.path, directory=account.directory_id)


def test_reads_in_a_scope_open_their_directory_once_and_close_it_at_the_end(
        tmp_path, directory_opens):
    auth = AuthDir(tmp_path / "auth")
    for index in range(5):
        auth.claude(email="u%d@example.com" % index)
    accounts = discovered(auth)
    before = open_fds()
    del directory_opens[:]
    with credentials.directories_held():
        emails = [read(account)["email"] for account in accounts.values()]
        assert len(open_fds() - before) == 1  # the directory, held
    assert sorted(emails) == sorted(accounts)
    assert directory_opens == [str(auth)]
    assert open_fds() == before
    # Outside a scope, each read opens the directory for itself, as before.
    del directory_opens[:]
    for account in accounts.values():
        read(account)
    assert directory_opens == [str(auth)] * len(accounts)
    assert open_fds() == before


def test_the_first_read_in_a_scope_still_refuses_a_directory_put_at_the_path(tmp_path):
    auth = AuthDir(tmp_path / "auth")
    auth.claude(email="alice@example.com", name="claude-a.json")
    (account,) = discovered(auth).values()
    other = tmp_path / "other"
    other.mkdir()
    write_compact(other / "claude-a.json", claude_credentials(email="root@example.com"))
    os.rename(auth.path, tmp_path / "auth.old")
    os.symlink(other, auth.path)
    with credentials.directories_held():
        for _ in range(2):  # a refused directory is not held: the next read checks it again
            with pytest.raises(DirectoryReplaced):
                read(account)


def test_a_directory_put_at_the_path_during_a_scope_is_never_read(tmp_path):
    # The scope holds the directory that was checked: once swapped, the reads go on in that
    # one (the files discovery listed), never in the directory now at the path.
    auth = AuthDir(tmp_path / "auth")
    auth.claude(email="alice@example.com", name="claude-a.json")
    auth.claude(email="bob@example.com", name="claude-b.json")
    accounts = discovered(auth)
    other = tmp_path / "other"
    other.mkdir()
    for name in ("claude-a.json", "claude-b.json"):
        write_compact(other / name, claude_credentials(email="root@example.com"))
    with credentials.directories_held():
        assert read(accounts["alice@example.com"])["email"] == "alice@example.com"
        os.rename(auth.path, tmp_path / "auth.old")
        os.symlink(other, auth.path)
        assert read(accounts["bob@example.com"])["email"] == "bob@example.com"
        assert read(accounts["alice@example.com"])["email"] == "alice@example.com"
    with pytest.raises(DirectoryReplaced):  # a read of its own checks the path again
        read(accounts["bob@example.com"])


def test_a_symlink_into_a_sub_directory_never_moves_the_held_handle(tmp_path, directory_opens):
    auth = AuthDir(tmp_path / "auth")
    (auth.path / "keep").mkdir()
    write_compact(auth.path / "keep" / "real.json", claude_credentials(email="linked@example.com"))
    os.symlink("keep/real.json", auth.path / "claude-linked.json")
    auth.claude(email="plain@example.com")
    accounts = discovered(auth)
    del directory_opens[:]
    with credentials.directories_held():
        for _ in range(2):
            for email in ("linked@example.com", "plain@example.com"):
                assert read(accounts[email])["email"] == email
    # The directory once for the scope, and a handle of its own for each symlink followed.
    assert directory_opens == [str(auth), ".", "."]


@pytest.mark.parametrize("scoped", [False, True])
def test_a_name_swapped_for_a_fifo_is_refused_with_the_same_sentence(tmp_path, scoped):
    auth = AuthDir(tmp_path / "auth")
    auth.claude(email="alice@example.com", name="claude-a.json")
    (account,) = discovered(auth).values()
    os.unlink(auth.path / "claude-a.json")
    os.mkfifo(auth.path / "claude-a.json")
    with credentials.directories_held() if scoped else open(os.devnull):
        with pytest.raises(UnsafeFile) as caught:
            read(account)
    assert str(caught.value) == "The credential file is not a regular file"


def test_a_thread_holds_at_most_a_few_directories(tmp_path, monkeypatch, directory_opens):
    monkeypatch.setattr(credentials, "HELD_DIRECTORIES", 2)
    accounts = []
    for index in range(4):
        auth = AuthDir(tmp_path / ("auth%d" % index))
        auth.claude(email="u%d@example.com" % index)
        accounts += discovered(auth).values()
    before = open_fds()
    del directory_opens[:]
    with credentials.directories_held():
        for account in accounts + accounts:
            assert read(account)["email"] == account.email
            assert len(open_fds() - before) <= 2
    assert open_fds() == before
    assert len(directory_opens) == 8  # each directory pushed out before its second read


def test_scopes_are_per_thread_and_nested_ones_share_the_outer(tmp_path, directory_opens):
    auth = AuthDir(tmp_path / "auth")
    auth.claude()
    (account,) = discovered(auth).values()
    del directory_opens[:]
    seen = []
    with credentials.directories_held():
        read(account)
        with credentials.directories_held():
            read(account)
        read(account)  # the inner scope's end closed nothing
        thread = threading.Thread(target=lambda: seen.append(read(account)["email"]))
        thread.start()
        thread.join()
    assert seen == ["alice@example.com"]
    assert directory_opens == [str(auth)] * 2  # this thread's scope, and the other thread's read


def test_a_refresh_opens_the_auth_directory_once_per_worker_and_leaves_nothing_open(
        tmp_path, directory_opens):
    auth = AuthDir(tmp_path / "auth")
    for index in range(12):
        auth.codex(email="u%02d@example.com" % index)
    found = discover_accounts(str(auth))
    window = UsageWindow(key="five_hour", title="5-hour", used_percent=1.0)

    def fetch(account, session, settings):  # reads the file as the real fetchers do
        data = credentials.read_json_object(account.path, directory=account.directory_id)
        return AccountUsage(id=account.id, provider=account.provider, email=data["email"],
                            windows=(window,), updated_at=datetime.now(timezone.utc))
    before = open_fds()
    del directory_opens[:]
    with OAuthUsageTracker(workers=3, environ={}, state_dir=str(tmp_path / "state"),
                           fetchers={Provider.CODEX: fetch, Provider.CLAUDE: fetch}) as tracker:
        results = tracker.refresh_and_wait(found.codex, found.claude)
        assert sorted(usage.email for usage in results) == \
            ["u%02d@example.com" % index for index in range(12)]
        assert all(usage.windows and not usage.error for usage in results)
        # The workers are done with the batch: each let its directory go.
        assert str(auth) not in {target for _, target in open_fds() - before}
    assert 1 <= len(directory_opens) <= 3
    assert set(directory_opens) == {str(auth)}


@pytest.mark.parametrize("then", ["removed", "removed and made again"])
def test_a_held_directory_removed_meanwhile_gives_the_sentence_a_read_of_its_own_gives(
        tmp_path, then):
    auth = AuthDir(tmp_path / "auth")
    auth.claude(email="alice@example.com", name="claude-a.json")
    auth.claude(email="bob@example.com", name="claude-b.json")
    accounts = discovered(auth)

    def outside_a_scope():
        with pytest.raises(CredentialError) as caught:
            read(accounts["bob@example.com"])
        return type(caught.value), str(caught.value)
    before = open_fds()
    with credentials.directories_held():
        assert read(accounts["alice@example.com"])["email"] == "alice@example.com"
        shutil.rmtree(auth.path)
        if then == "removed and made again":  # the same names, another directory
            AuthDir(tmp_path / "auth").claude(email="bob@example.com", name="claude-b.json")
        with pytest.raises(CredentialError) as caught:
            read(accounts["bob@example.com"])
        assert (type(caught.value), str(caught.value)) == outside_a_scope()
        assert len(open_fds() - before) == 0  # the held directory was let go
    if then == "removed":
        assert str(caught.value) == "Cannot open the auth directory (No such file or directory)"
    else:
        assert isinstance(caught.value, DirectoryReplaced)
