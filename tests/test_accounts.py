"""Finding the accounts (SPEC §3): CLIProxyAPI's auth directory, read-only and tolerant."""
import json
import logging
import os
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from freezegun import freeze_time

from oauth_usage_tracker import accounts as module
from oauth_usage_tracker import credentials
from oauth_usage_tracker.errors import ConfigurationError
from oauth_usage_tracker.models import Discovery, Provider
from support import (SECRETS, assert_no_secrets, claude_credentials, codex_credentials,
                     write_compact)

UTC = timezone.utc


@pytest.fixture
def fast_rereads(monkeypatch):
    """Torn-file re-reads pause 1 ms instead of 100 ms (same number of tries)."""
    monkeypatch.setattr(credentials, "READ_PAUSE", 0.001)


@pytest.fixture
def read_log(monkeypatch):
    """Record every capped read, by file name, as the bytes it returned."""
    log = {}
    real_read = credentials.read_in

    def recording_read(auth, name, limit):
        data = real_read(auth, name, limit)
        log.setdefault(name, []).append(data)
        return data

    monkeypatch.setattr(credentials, "read_in", recording_read)
    return log


def skipped_by_id(found):
    return {skipped.id: skipped.reason for skipped in found.skipped}


def ids(accounts):
    return sorted(account.id for account in accounts)


# --- files as CLIProxyAPI and other tools write them ---------------------------------------------

def test_discover_accounts_compact_cliproxyapi_files_give_both_providers(auth_dir):
    claude_path = auth_dir.claude(email="alice@example.com",
                                  expired="2026-08-22T14:39:03+02:00")
    codex_path = auth_dir.codex(email="bob@example.com", expired="2026-09-01T10:15:00+02:00")
    assert claude_path.read_text().startswith('{"access_token":"sk-ant-oat01-')

    found = module.discover_accounts(str(auth_dir))

    assert isinstance(found, Discovery)
    assert found.skipped == ()
    assert found.auth_dir == str(auth_dir.path)
    (claude,) = found.claude
    (codex,) = found.codex
    assert claude.id == "claude-alice@example.com.json"
    assert claude.provider is Provider.CLAUDE
    assert claude.email == "alice@example.com"
    assert claude.display_name == "alice@example.com"
    assert claude.path == str(claude_path)
    assert os.path.isabs(claude.path)
    assert claude.expired == datetime(2026, 8, 22, 12, 39, 3, tzinfo=UTC)
    assert claude.is_disabled is False
    assert codex.id == "codex-bob@example.com.json"
    assert codex.provider is Provider.CODEX
    assert codex.email == "bob@example.com"
    assert codex.path == str(codex_path)
    assert codex.expired == datetime(2026, 9, 1, 8, 15, tzinfo=UTC)
    assert found.accounts == (claude, codex)


def test_discover_accounts_compact_file_with_trailing_newline_is_read(auth_dir):
    write_compact(auth_dir.path / "claude-nl@example.com.json",
                  claude_credentials(email="nl@example.com"), newline=True)
    found = module.discover_accounts(auth_dir)
    assert [a.email for a in found.claude] == ["nl@example.com"]
    assert found.skipped == ()


def test_discover_accounts_pretty_files_with_utc_z_are_read(auth_dir):
    auth_dir.claude(email="carol@example.com", pretty=True, expired="2026-11-24T17:00:00Z")
    auth_dir.codex(email="dave@example.com", pretty=True, expired="2026-11-30T00:00:00Z")
    found = module.discover_accounts(auth_dir)
    assert [a.email for a in found.claude] == ["carol@example.com"]
    assert [a.email for a in found.codex] == ["dave@example.com"]
    assert found.claude[0].expired == datetime(2026, 11, 24, 17, 0, tzinfo=UTC)
    assert found.codex[0].expired == datetime(2026, 11, 30, 0, 0, tzinfo=UTC)


def test_discover_accounts_old_file_without_optional_keys_is_read(auth_dir):
    # Files older than 2026-08, or from other tools: no account_uuid, organization_*,
    # claude_device_ids, disabled.
    data = {"access_token": "x", "email": "old@example.com", "expired": "2026-08-22T14:39:03Z",
            "refresh_token": "y", "type": "claude"}
    write_compact(auth_dir.path / "claude-old@example.com.json", data)
    (account,) = module.discover_accounts(auth_dir).claude
    assert account.email == "old@example.com"
    assert account.is_disabled is False


def test_discover_accounts_user_keys_do_not_disturb_discovery(auth_dir):
    auth_dir.claude(email="keys@example.com", label="work", prefix="w", priority=3,
                    headers={"X-Note": "1"}, excluded_models=["claude-opus"], weight=2.5,
                    disable_cooling=True, note=None)
    (account,) = module.discover_accounts(auth_dir).claude
    assert account.email == "keys@example.com"


def test_discover_accounts_many_files_finds_all(auth_dir):
    for index in range(60):
        auth_dir.claude(email="c%02d@example.com" % index)
        auth_dir.codex(email="x%02d@example.com" % index)
    found = module.discover_accounts(auth_dir)
    assert len(found.claude) == 60
    assert len(found.codex) == 60
    assert found.skipped == ()


# --- the provider comes from `type` --------------------------------------------------------------

@pytest.mark.parametrize("raw_type, provider", [
    ("claude", Provider.CLAUDE), ("Claude", Provider.CLAUDE), ("CLAUDE", Provider.CLAUDE),
    (" claude ", Provider.CLAUDE), ("codex", Provider.CODEX), ("CODEX", Provider.CODEX),
    ("Codex", Provider.CODEX),
])
def test_discover_accounts_type_any_case_gives_provider(auth_dir, raw_type, provider):
    auth_dir.claude(email="a@example.com", name="account.json", type=raw_type)
    found = module.discover_accounts(auth_dir)
    assert [a.provider for a in found.accounts] == [provider]
    assert found.skipped == ()


def test_discover_accounts_file_named_codex_with_type_claude_is_claude(auth_dir):
    auth_dir.claude(email="alice@example.com", name="codex-x.json")
    found = module.discover_accounts(auth_dir)
    assert ids(found.claude) == ["codex-x.json"]
    assert found.codex == ()
    assert found.claude[0].provider is Provider.CLAUDE


def test_discover_accounts_file_named_claude_with_type_codex_is_codex(auth_dir):
    auth_dir.codex(email="bob@example.com", name="claude-bob@example.com.json")
    found = module.discover_accounts(auth_dir)
    assert ids(found.codex) == ["claude-bob@example.com.json"]
    assert found.claude == ()


@pytest.mark.parametrize("name", [
    "codex-1a2b3c4d-bob@example.com-plus.json",
    "codex-bob@example.com.json",
    "codex-bob@example.com-Plus.json",
    "bob.json",
    "gemini-bob@example.com.json",
])
def test_discover_accounts_any_file_name_scheme_gives_type_provider(auth_dir, name):
    auth_dir.codex(email="bob@example.com", name=name)
    found = module.discover_accounts(auth_dir)
    assert ids(found.codex) == [name]
    assert found.codex[0].email == "bob@example.com"
    assert found.claude == () and found.skipped == ()


@pytest.mark.parametrize("raw_type", ["gemini", "gemini-cli", "qwen", "antigravity", "iflow",
                                      "kimi", "cursor", "github-copilot", "zai"])
def test_discover_accounts_other_type_is_skipped_as_unsupported(auth_dir, raw_type):
    name = "%s-user@example.com.json" % raw_type
    write_compact(auth_dir.path / name, {"access_token": "t", "email": "user@example.com",
                                         "type": raw_type})
    auth_dir.claude(email="alice@example.com")
    found = module.discover_accounts(auth_dir)
    assert skipped_by_id(found) == {name: "unsupported type '%s'" % raw_type}
    assert ids(found.claude) == ["claude-alice@example.com.json"]
    assert found.codex == ()
    (skipped,) = found.skipped
    assert skipped.provider is None
    assert skipped.email is None


def test_discover_accounts_gemini_named_claude_is_still_skipped(auth_dir):
    write_compact(auth_dir.path / "claude-g@example.com.json",
                  {"email": "g@example.com", "type": "gemini"})
    found = module.discover_accounts(auth_dir)
    assert found.accounts == ()
    assert skipped_by_id(found) == {"claude-g@example.com.json": "unsupported type 'gemini'"}


@pytest.mark.parametrize("extra", [{}, {"type": None}, {"type": 42}, {"type": ""},
                                   {"type": ["claude"]}])
def test_discover_accounts_missing_or_bad_type_is_skipped_not_guessed(auth_dir, extra):
    data = {"access_token": "t", "email": "who@example.com"}
    data.update(extra)
    write_compact(auth_dir.path / "claude-who@example.com.json", data)
    found = module.discover_accounts(auth_dir)
    assert found.accounts == ()
    (skipped,) = found.skipped
    assert skipped.id == "claude-who@example.com.json"


# --- flags: disabled and expired -----------------------------------------------------------------

def test_discover_accounts_disabled_true_is_included_with_flag(auth_dir):
    auth_dir.claude(email="off@example.com", disabled=True)
    auth_dir.codex(email="offx@example.com", disabled=True)
    found = module.discover_accounts(auth_dir)
    assert [a.is_disabled for a in found.accounts] == [True, True]
    assert found.skipped == ()


@pytest.mark.parametrize("value", [False, "true", "True", 1, "1", "yes", None, [], {}])
def test_discover_accounts_disabled_not_json_true_is_enabled(auth_dir, value):
    auth_dir.claude(email="on@example.com", disabled=value)
    (account,) = module.discover_accounts(auth_dir).claude
    assert account.is_disabled is False


def test_discover_accounts_disabled_missing_is_enabled(auth_dir):
    data = claude_credentials(email="nodis@example.com")
    del data["disabled"]
    write_compact(auth_dir.path / "claude-nodis@example.com.json", data)
    (account,) = module.discover_accounts(auth_dir).claude
    assert account.is_disabled is False


def test_discover_accounts_disabled_non_bool_is_logged_at_debug(auth_dir, caplog):
    auth_dir.claude(email="str@example.com", disabled="true")
    with caplog.at_level(logging.DEBUG, logger="oauth_usage_tracker"):
        module.discover_accounts(auth_dir)
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG
             and "claude-str@example.com.json" in r.getMessage()]
    assert debug


@pytest.mark.parametrize("raw, expected", [
    ("2026-08-22T14:39:03Z", datetime(2026, 8, 22, 14, 39, 3, tzinfo=UTC)),
    ("2026-08-22T14:39:03+02:00", datetime(2026, 8, 22, 12, 39, 3, tzinfo=UTC)),
    ("2026-08-22T14:39:03-07:00", datetime(2026, 8, 22, 21, 39, 3, tzinfo=UTC)),
    ("2026-08-22T14:39:03.5Z", datetime(2026, 8, 22, 14, 39, 3, 500000, tzinfo=UTC)),
    ("2026-08-22T14:39:03.123456789+02:00",
     datetime(2026, 8, 22, 12, 39, 3, 123456, tzinfo=UTC)),
    ("2026-08-22 14:39:03", datetime(2026, 8, 22, 14, 39, 3, tzinfo=UTC)),
    (1790856000, datetime(2026, 10, 1, 12, 0, tzinfo=UTC)),
    (1790856000000, datetime(2026, 10, 1, 12, 0, tzinfo=UTC)),
    ("1790856000", datetime(2026, 10, 1, 12, 0, tzinfo=UTC)),
    ("1790856000000", datetime(2026, 10, 1, 12, 0, tzinfo=UTC)),
])
def test_discover_accounts_expired_formats_give_aware_utc(auth_dir, raw, expected):
    auth_dir.claude(email="t@example.com", expired=raw)
    (account,) = module.discover_accounts(auth_dir).claude
    assert account.expired == expected
    assert account.expired.utcoffset() == timedelta(0)


@pytest.mark.parametrize("raw", ["soon", "", None, True, "2026-13-45T99:00:00Z", [], {},
                                 "9999-12-31T23:59:59-01:00"])
def test_discover_accounts_expired_unparseable_is_unknown_not_error(auth_dir, raw):
    auth_dir.claude(email="u@example.com", expired=raw)
    found = module.discover_accounts(auth_dir)
    (account,) = found.claude
    assert account.expired is None
    assert account.is_expired is False
    assert found.skipped == ()


def test_discover_accounts_expired_missing_is_unknown(auth_dir):
    data = codex_credentials(email="m@example.com")
    del data["expired"]
    write_compact(auth_dir.path / "codex-m@example.com.json", data)
    (account,) = module.discover_accounts(auth_dir).codex
    assert account.expired is None
    assert account.is_expired is False


def test_discover_accounts_expired_account_is_included_and_flagged_when_read(auth_dir):
    auth_dir.claude(email="e@example.com", expired="2026-11-24T16:00:00+02:00")  # 14:00 UTC
    with freeze_time("2026-11-24T13:59:00Z") as frozen:
        found = module.discover_accounts(auth_dir)
        (account,) = found.claude
        assert account.is_expired is False
        frozen.move_to("2026-11-24T14:00:01Z")
        assert account.is_expired is True
    assert found.skipped == ()


# --- display name --------------------------------------------------------------------------------

def test_discover_accounts_display_name_prefers_email(auth_dir):
    auth_dir.claude(email="mail@example.com", name="a.json", login="loginname")
    (account,) = module.discover_accounts(auth_dir).claude
    assert account.display_name == "mail@example.com"


@pytest.mark.parametrize("email", ["", "   ", None, 42])
def test_discover_accounts_display_name_without_email_uses_login(auth_dir, email):
    auth_dir.claude(email=email, name="a.json", login="loginname")
    (account,) = module.discover_accounts(auth_dir).claude
    assert account.display_name == "loginname"
    assert account.email is None


def test_discover_accounts_display_name_without_email_or_login_uses_file_name(auth_dir):
    data = codex_credentials()
    del data["email"]
    write_compact(auth_dir.path / "codex-1a2b3c4d-team.json", data)
    (account,) = module.discover_accounts(auth_dir).codex
    assert account.email is None
    assert account.display_name == "codex-1a2b3c4d-team.json"


def test_discover_accounts_display_name_empty_login_uses_file_name(auth_dir):
    auth_dir.claude(email="", name="b.json", login="")
    (account,) = module.discover_accounts(auth_dir).claude
    assert account.display_name == "b.json"


# --- what counts as a credential file ------------------------------------------------------------

def test_discover_accounts_sub_folders_are_ignored(auth_dir):
    auth_dir.claude(email="top@example.com")
    sub = auth_dir.path / "backup"
    sub.mkdir()
    write_compact(sub / "claude-old@example.com.json", claude_credentials(email="old@example.com"))
    (auth_dir.path / "folder.json").mkdir()
    found = module.discover_accounts(auth_dir)
    assert [a.email for a in found.accounts] == ["top@example.com"]
    assert found.skipped == ()


@pytest.mark.parametrize("name", [
    "claude-a@example.com.json.bak", "claude-a@example.com.json.lock", "notes.txt", "README",
    ".claude-a@example.com.json.k2j3h4.tmp", "claude-a@example.com.json~", "config.yaml",
    "claude-a@example.com.jsonl",
])
def test_discover_accounts_non_json_files_are_ignored(auth_dir, name):
    write_compact(auth_dir.path / name, claude_credentials(email="hidden@example.com"))
    auth_dir.raw("junk-" + name, b"\xff\x00 not json")
    auth_dir.codex(email="bob@example.com")
    found = module.discover_accounts(auth_dir)
    assert [a.email for a in found.accounts] == ["bob@example.com"]
    assert found.skipped == ()


def test_discover_accounts_empty_directory_finds_nothing(auth_dir):
    found = module.discover_accounts(auth_dir)
    assert (found.claude, found.codex, found.skipped) == ((), (), ())


def test_discover_accounts_fifo_named_json_is_unreadable_without_blocking(auth_dir):
    os.mkfifo(auth_dir.path / "pipe.json")
    auth_dir.claude(email="alice@example.com")
    found = module.discover_accounts(auth_dir)
    assert [a.email for a in found.claude] == ["alice@example.com"]
    assert skipped_by_id(found)["pipe.json"].startswith("unreadable: ")


def test_discover_accounts_reads_only_and_writes_nothing(auth_dir, fast_rereads):
    auth_dir.claude(email="alice@example.com", expired="2000-01-01T00:00:00Z")
    auth_dir.codex(email="bob@example.com")
    auth_dir.raw("broken.json", '{"type":"claude",')
    before = {p.name: (p.read_bytes(), os.stat(p).st_mtime_ns, os.stat(p).st_mode)
              for p in auth_dir.path.iterdir()}
    module.discover_accounts(auth_dir)
    after = {p.name: (p.read_bytes(), os.stat(p).st_mtime_ns, os.stat(p).st_mode)
             for p in auth_dir.path.iterdir()}
    assert after == before


def test_discover_accounts_result_and_logs_hold_no_token(auth_dir, fast_rereads,
                                                         caplog):
    auth_dir.claude(email="alice@example.com")
    auth_dir.codex(email="bob@example.com")
    auth_dir.raw("broken.json", '{"access_token":"%s"' % SECRETS[0])
    write_compact(auth_dir.path / "gem.json", {"type": "gemini", "access_token": SECRETS[1]})
    with caplog.at_level(logging.DEBUG):
        found = module.discover_accounts(auth_dir)
    assert len(found.accounts) == 2
    assert_no_secrets(repr(found), str(found), caplog.text,
                      *(reason for _, reason in skipped_by_id(found).items()))


# --- where the directory is ----------------------------------------------------------------------

def test_discover_accounts_env_variable_gives_directory(auth_dir, monkeypatch):
    auth_dir.claude(email="env@example.com")
    monkeypatch.setenv("OAUTH_USAGE_TRACKER_AUTH_DIR", str(auth_dir))
    found = module.discover_accounts()
    assert [a.email for a in found.claude] == ["env@example.com"]
    assert found.auth_dir == str(auth_dir.path)


def test_discover_accounts_env_variable_with_tilde_is_expanded(tmp_path, monkeypatch):
    home = tmp_path / "home"
    directory = home / "creds"
    directory.mkdir(parents=True)
    write_compact(directory / "claude-t@example.com.json",
                  claude_credentials(email="t@example.com"))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("OAUTH_USAGE_TRACKER_AUTH_DIR", "~/creds")
    found = module.discover_accounts()
    assert [a.email for a in found.claude] == ["t@example.com"]
    assert found.auth_dir == str(directory)
    assert found.claude[0].path == str(directory / "claude-t@example.com.json")


def test_discover_accounts_no_setting_uses_home_cli_proxy_api(tmp_path):
    directory = tmp_path / "home" / ".cli-proxy-api"
    directory.mkdir(parents=True)
    write_compact(directory / "codex-d@example.com.json", codex_credentials(email="d@example.com"))
    found = module.discover_accounts()
    assert [a.email for a in found.codex] == ["d@example.com"]
    assert found.auth_dir == str(directory)


def test_discover_accounts_argument_with_tilde_is_expanded(tmp_path):
    directory = tmp_path / "home" / "auth"
    directory.mkdir(parents=True)
    write_compact(directory / "claude-a@example.com.json", claude_credentials())
    found = module.discover_accounts("~/auth")
    assert found.auth_dir == str(directory)
    assert len(found.claude) == 1


def test_discover_accounts_argument_beats_env_variable(auth_dir, tmp_path, monkeypatch):
    auth_dir.claude(email="arg@example.com")
    other = tmp_path / "other"
    other.mkdir()
    write_compact(other / "claude-env@example.com.json",
                  claude_credentials(email="env@example.com"))
    monkeypatch.setenv("OAUTH_USAGE_TRACKER_AUTH_DIR", str(other))
    found = module.discover_accounts(auth_dir.path)
    assert [a.email for a in found.claude] == ["arg@example.com"]


def test_discover_accounts_environ_argument_is_used_instead_of_os_environ(auth_dir, monkeypatch):
    auth_dir.codex(email="mapped@example.com")
    monkeypatch.setenv("OAUTH_USAGE_TRACKER_AUTH_DIR", "/nonexistent/elsewhere")
    found = module.discover_accounts(environ={"OAUTH_USAGE_TRACKER_AUTH_DIR": str(auth_dir)})
    assert [a.email for a in found.codex] == ["mapped@example.com"]


def test_discover_accounts_relative_directory_gives_absolute_paths(auth_dir, tmp_path,
                                                                   monkeypatch):
    auth_dir.claude(email="rel@example.com")
    monkeypatch.chdir(tmp_path)
    found = module.discover_accounts("auth")
    assert found.auth_dir == str(auth_dir.path)
    assert found.claude[0].path == str(auth_dir.path / "claude-rel@example.com.json")


def test_discover_accounts_missing_directory_raises_configuration_error(tmp_path):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(ConfigurationError) as caught:
        module.discover_accounts(str(missing))
    assert str(missing) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_discover_accounts_default_directory_missing_raises_configuration_error():
    with pytest.raises(ConfigurationError) as caught:
        module.discover_accounts()
    assert ".cli-proxy-api" in str(caught.value)


def test_discover_accounts_file_instead_of_directory_raises_configuration_error(tmp_path):
    not_a_dir = tmp_path / "file.json"
    not_a_dir.write_text("{}")
    with pytest.raises(ConfigurationError):
        module.discover_accounts(str(not_a_dir))


# --- unreadable files ----------------------------------------------------------------------------

UNREADABLE = {
    "empty.json": b"",
    "blank.json": b"  \n\t\n",
    "binary.json": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
    "latin1.json": '{"type":"claude","email":"jos\xe9@example.com"}'.encode("latin-1"),
    "list.json": b'[{"type":"claude","email":"l@example.com"}]',
    "null.json": b"null",
    "number.json": b"42",
    "string.json": b'"claude"',
    "invalid.json": b"{not json at all}",
    "python.json": b"{'type': 'claude', 'email': 'p@example.com'}",
    "two-objects.json": b'{"type":"claude"}{"type":"codex"}',
    "deep.json": b"[" * 200000,
    "huge.json": b'{"type":"claude","email":"h@example.com","pad":"' + b"x" * (1024 * 1024)
                 + b'"}',
}


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_discover_accounts_unreadable_file_is_skipped_and_others_found(auth_dir, fast_rereads,
                                                                      name):
    auth_dir.claude(email="alice@example.com")
    auth_dir.codex(email="bob@example.com")
    auth_dir.raw(name, UNREADABLE[name])
    found = module.discover_accounts(auth_dir)
    assert [a.email for a in found.claude] == ["alice@example.com"]
    assert [a.email for a in found.codex] == ["bob@example.com"]
    reasons = skipped_by_id(found)
    assert list(reasons) == [name]
    assert reasons[name].startswith("unreadable: ")
    assert len(reasons[name]) < 80
    (skipped,) = found.skipped
    assert skipped.provider is None and skipped.email is None


def test_discover_accounts_all_unreadable_kinds_at_once_keep_the_good_accounts(auth_dir,
                                                                              fast_rereads):
    for name, content in UNREADABLE.items():
        auth_dir.raw(name, content)
    auth_dir.claude(email="alice@example.com")
    auth_dir.codex(email="bob@example.com")
    found = module.discover_accounts(auth_dir)
    assert len(found.accounts) == 2
    reasons = skipped_by_id(found)
    assert sorted(reasons) == sorted(UNREADABLE)
    assert all(reason.startswith("unreadable: ") for reason in reasons.values())


def test_discover_accounts_exactly_one_mib_is_readable(auth_dir):
    data = claude_credentials(email="big@example.com")
    text = json.dumps(data, separators=(",", ":"))
    text = text[:-1] + ',"pad":"' + "x" * (1024 * 1024 - len(text) - 9) + '"}'
    assert len(text.encode()) == 1024 * 1024
    auth_dir.raw("claude-big@example.com.json", text)
    found = module.discover_accounts(auth_dir)
    assert [a.email for a in found.claude] == ["big@example.com"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_discover_accounts_permission_denied_is_unreadable(auth_dir):
    path = auth_dir.claude(email="locked@example.com")
    auth_dir.codex(email="bob@example.com")
    os.chmod(path, 0)
    found = module.discover_accounts(auth_dir)
    assert [a.email for a in found.codex] == ["bob@example.com"]
    assert skipped_by_id(found)[path.name].startswith("unreadable: ")


# --- symlinks ------------------------------------------------------------------------------------

def test_discover_accounts_symlink_inside_directory_is_followed(auth_dir):
    store = auth_dir.path / "store"
    store.mkdir()
    target = write_compact(store / "real.json", claude_credentials(email="linked@example.com"))
    os.symlink(target, auth_dir.path / "claude-linked@example.com.json")
    found = module.discover_accounts(auth_dir)
    assert [(a.id, a.email) for a in found.claude] == [
        ("claude-linked@example.com.json", "linked@example.com")]
    assert found.skipped == ()


def test_discover_accounts_relative_symlink_inside_directory_is_followed(auth_dir):
    (auth_dir.path / "store").mkdir()
    write_compact(auth_dir.path / "store" / "x.json", codex_credentials(email="rel@example.com"))
    os.symlink(os.path.join("store", "x.json"), auth_dir.path / "codex-rel.json")
    found = module.discover_accounts(auth_dir)
    assert [a.email for a in found.codex] == ["rel@example.com"]


def test_discover_accounts_symlink_pointing_outside_is_refused_unread(auth_dir, tmp_path,
                                                                     read_log):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = write_compact(outside / "secret.json", claude_credentials(email="evil@example.com"))
    os.symlink(target, auth_dir.path / "claude-evil@example.com.json")
    auth_dir.codex(email="bob@example.com")
    found = module.discover_accounts(auth_dir)
    assert found.claude == ()
    assert [a.email for a in found.codex] == ["bob@example.com"]
    assert skipped_by_id(found)["claude-evil@example.com.json"].startswith("unreadable: ")
    assert "secret.json" not in read_log


def test_discover_accounts_symlink_to_sibling_with_same_prefix_is_refused(auth_dir, tmp_path):
    # tmp/auth-evil starts with the text tmp/auth but is not inside it.
    sibling = tmp_path / (auth_dir.path.name + "-evil")
    sibling.mkdir()
    target = write_compact(sibling / "x.json", claude_credentials(email="evil@example.com"))
    os.symlink(target, auth_dir.path / "claude-evil.json")
    found = module.discover_accounts(auth_dir)
    assert found.claude == ()
    assert skipped_by_id(found)["claude-evil.json"].startswith("unreadable: ")


def test_discover_accounts_symlink_chain_leaving_directory_is_refused(auth_dir, tmp_path):
    outside = write_compact(tmp_path / "outside.json",
                            claude_credentials(email="evil@example.com"))
    (auth_dir.path / "hop").mkdir()
    os.symlink(outside, auth_dir.path / "hop" / "next.json")
    os.symlink(auth_dir.path / "hop" / "next.json", auth_dir.path / "claude-chain.json")
    found = module.discover_accounts(auth_dir)
    assert found.claude == ()
    assert skipped_by_id(found)["claude-chain.json"].startswith("unreadable: ")


def test_discover_accounts_broken_symlink_is_unreadable(auth_dir):
    os.symlink(auth_dir.path / "gone.json.old", auth_dir.path / "claude-gone.json")
    auth_dir.codex(email="bob@example.com")
    found = module.discover_accounts(auth_dir)
    assert [a.email for a in found.codex] == ["bob@example.com"]
    assert skipped_by_id(found)["claude-gone.json"].startswith("unreadable: ")


def test_discover_accounts_directory_itself_a_symlink_accepts_links_inside(tmp_path):
    real = tmp_path / "data" / "creds"
    real.mkdir(parents=True)
    write_compact(real / "store.json.real", claude_credentials(email="deep@example.com"))
    os.symlink(real / "store.json.real", real / "claude-deep@example.com.json")
    link = tmp_path / "home" / ".cli-proxy-api"
    link.parent.mkdir(parents=True)
    os.symlink(real, link)
    found = module.discover_accounts()
    assert [a.email for a in found.claude] == ["deep@example.com"]
    assert found.skipped == ()


# --- files rewritten in place while we read them (CLIProxyAPI: truncate, then write) -----------

class InPlaceWriter(threading.Thread):
    """Rewrites `path` in place like CLIProxyAPI: open with truncation, write `first`, pause until
    the reader has seen that state, then write the rest."""

    def __init__(self, path, content, first=b""):
        super().__init__(daemon=True)
        self.path, self.content, self.first = path, content, first
        self.torn = threading.Event()          # the file holds only `first`
        self.reader_saw_torn = threading.Event()
        self.rewritten = threading.Event()     # the file is whole again
        self.error = None

    def run(self):
        try:
            with open(self.path, "wb") as handle:
                handle.write(self.first)
                handle.flush()
                self.torn.set()
                assert self.reader_saw_torn.wait(5), "the reader never read the torn file"
                handle.write(self.content[len(self.first):])
            self.rewritten.set()
        except BaseException as error:  # surfaced by the test
            self.error = error
            self.torn.set()
            self.rewritten.set()


def hold_first_read(monkeypatch, name, writer, log):
    """Make the first read of `name` report to `writer`, and return only once it rewrote."""
    real_read = credentials.read_in

    def read(auth, entry, limit):
        data = real_read(auth, entry, limit)
        if entry == name:
            log.append(data)
            if len(log) == 1:
                writer.reader_saw_torn.set()
                assert writer.rewritten.wait(5), "the writer never finished"
        return data

    monkeypatch.setattr(credentials, "read_in", read)


def cut_points(content):
    """Where a torn compact CLIProxyAPI file can end: each kind of JSON token."""
    email_value = content.index(b'"email":"') + len(b'"email":"')
    disabled_value = content.index(b'"disabled":') + len(b'"disabled":')
    return {
        "empty": 0,
        "after_comma": content.index(b",") + 1,
        "inside_key": content.index(b'"email"') + 3,
        "inside_string_value": email_value + 3,
        "inside_literal": disabled_value + 3,
        "missing_last_brace": len(content.rstrip()) - 1,
    }


@pytest.mark.parametrize("cut", ["empty", "after_comma", "inside_key", "inside_string_value",
                                 "inside_literal", "missing_last_brace"])
def test_discover_accounts_file_rewritten_in_place_during_read_is_read_whole(auth_dir,
                                                                            monkeypatch, cut):
    path = auth_dir.claude(email="alice@example.com", disabled=False)
    auth_dir.codex(email="bob@example.com")
    content = path.read_bytes()
    writer = InPlaceWriter(path, content, content[:cut_points(content)[cut]])
    reads = []
    hold_first_read(monkeypatch, path.name, writer, reads)
    writer.start()
    assert writer.torn.wait(5)

    found = module.discover_accounts(auth_dir)

    writer.join(5)
    assert not writer.is_alive()
    assert writer.error is None
    assert found.skipped == ()
    assert [a.email for a in found.claude] == ["alice@example.com"]
    assert [a.email for a in found.codex] == ["bob@example.com"]
    assert reads[0] == writer.first
    assert reads[-1] == content


def test_discover_accounts_permanently_truncated_file_is_not_valid_json_after_retries(
        auth_dir, read_log):
    path = auth_dir.claude(email="alice@example.com")
    content = path.read_bytes()
    auth_dir.raw("claude-cut@example.com.json", content[:content.index(b",") + 1])
    auth_dir.codex(email="bob@example.com")
    started = time.monotonic()
    found = module.discover_accounts(auth_dir)
    elapsed = time.monotonic() - started
    assert skipped_by_id(found) == {"claude-cut@example.com.json": "unreadable: not valid JSON"}
    assert [a.email for a in found.claude] == ["alice@example.com"]
    assert [a.email for a in found.codex] == ["bob@example.com"]
    # About five tries over about half a second.
    assert len(read_log["claude-cut@example.com.json"]) == credentials.READ_TRIES
    assert 4 <= credentials.READ_TRIES <= 6
    assert 0.25 <= elapsed < 2.0


@pytest.mark.parametrize("cut", ["after_comma", "inside_key", "inside_string_value",
                                 "inside_literal", "missing_last_brace"])
def test_discover_accounts_truncated_anywhere_is_reread_before_unreadable(auth_dir, fast_rereads,
                                                                         read_log, cut):
    content = auth_dir.claude(email="alice@example.com", disabled=False).read_bytes()
    auth_dir.raw("claude-cut.json", content[:cut_points(content)[cut]])
    found = module.discover_accounts(auth_dir)
    assert skipped_by_id(found)["claude-cut.json"] == "unreadable: not valid JSON"
    assert len(read_log["claude-cut.json"]) == credentials.READ_TRIES


def test_discover_accounts_permanently_empty_file_is_reread_then_unreadable(auth_dir,
                                                                           fast_rereads,
                                                                           read_log):
    auth_dir.raw("claude-empty.json", b"")
    found = module.discover_accounts(auth_dir)
    assert skipped_by_id(found)["claude-empty.json"].startswith("unreadable: ")
    assert len(read_log["claude-empty.json"]) == credentials.READ_TRIES
