"""State across runs (SPEC §10): cooldown arithmetic, the store, stale values in the tracker."""
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest
from freezegun import freeze_time

from oauth_usage_tracker import state as module
from oauth_usage_tracker import state_file
from oauth_usage_tracker import stored as stored_module
from oauth_usage_tracker.errors import ProviderError
from oauth_usage_tracker.models import AccountState, AccountUsage, AuthAccount, Provider, \
    UsageWindow
from oauth_usage_tracker.report import Report
from oauth_usage_tracker.tracker import OAuthUsageTracker
from support import assert_no_secrets, preads

NOW = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)
WINDOW = UsageWindow("five_hour", "5-hour", 40.0, NOW + timedelta(hours=3))


@pytest.mark.parametrize("retry_after, previous, expected", [
    (300, None, 300), (30, None, 60), (0.5, None, 60), (7200, None, 3600), (120, 600, 120),
    (None, None, 300), (0, None, 300), (None, 300, 600), (0, 600, 1200), (None, 2400, 3600),
    (None, 3600, 3600), (-5, None, 300),
])
def test_cooldown_seconds_clamps_retry_after_else_doubles_five_minutes(retry_after, previous,
                                                                       expected):
    assert module.cooldown_seconds(retry_after, previous) == expected


def test_plan_fetch_asks_reuses_young_windows_and_holds_back_while_cooling_down():
    good = module.next_state(None, NOW, windows=[WINDOW])
    cooling = module.after_failure(good, NOW, 429, 600)
    later = NOW + timedelta(seconds=30)
    assert module.plan_fetch(None, NOW, 60) is module.Plan.ASK
    assert module.plan_fetch(good, later, 0) is module.Plan.ASK          # max age 0: never reuse
    assert module.plan_fetch(good, later, 60) is module.Plan.REUSE
    assert module.plan_fetch(good, later, 30) is module.Plan.ASK         # exactly as old: ask
    assert module.plan_fetch(cooling, later, 0) is module.Plan.COOL_DOWN
    assert module.plan_fetch(cooling, later, 60) is module.Plan.REUSE    # young values win
    assert module.plan_fetch(cooling, NOW + timedelta(minutes=11), 0) is module.Plan.ASK
    no_windows = module.after_failure(None, NOW, 429, None)
    assert module.plan_fetch(no_windows, later, 60) is module.Plan.COOL_DOWN


def test_after_failure_429_starts_a_cooldown_other_failures_keep_the_state():
    good = module.next_state(None, NOW, windows=[WINDOW])
    limited = module.after_failure(good, NOW, 429, 120)
    assert limited.cooldown_until == NOW + timedelta(seconds=120)
    assert limited.windows == good.windows and limited.fetched_at == NOW
    assert module.after_failure(good, NOW, 502, 120) is good
    assert module.after_failure(None, NOW, None, None) == module.AccountState()


def test_next_state_429_starts_then_doubles_cooldown_and_keeps_windows():
    good = module.next_state(None, NOW, windows=[WINDOW])
    first = module.next_state(good, NOW + timedelta(minutes=1), rate_limited=True)
    assert first.cooldown_until == NOW + timedelta(minutes=6)
    assert first.windows == (WINDOW,) and first.fetched_at == NOW
    second = module.next_state(first, NOW + timedelta(minutes=7), rate_limited=True)
    assert second.cooldown_seconds == 600
    assert second.cooldown_until == NOW + timedelta(minutes=17)


def test_next_state_success_ends_cooldown_and_resets_doubling():
    cooling = module.next_state(None, NOW, rate_limited=True, retry_after=900)
    fresh = module.next_state(cooling, NOW + timedelta(minutes=20), windows=[WINDOW])
    assert fresh.cooldown_until is None and fresh.cooldown_seconds is None
    assert module.next_state(fresh, NOW, rate_limited=True).cooldown_seconds == 300


def test_next_state_other_failure_keeps_previous():
    good = module.next_state(None, NOW, windows=[WINDOW])
    assert module.next_state(good, NOW + timedelta(minutes=5)) == good


def test_cooling_down_is_evaluated_at_given_time():
    entry = module.next_state(None, NOW, rate_limited=True, retry_after=120)
    assert entry.cooling_down(NOW + timedelta(seconds=119))
    assert not entry.cooling_down(NOW + timedelta(seconds=120))


def test_windows_at_rolls_over_passed_resets():
    entry = module.next_state(None, NOW, windows=[WINDOW])
    later = entry.windows_at(NOW + timedelta(hours=4))
    assert later[0].used_percent == 0.0
    assert later[0].reset_text.startswith("reset 1 hour ago")
    assert entry.windows_at(NOW + timedelta(hours=1))[0].reset_text.startswith("in 2 hours")


def test_default_state_dir_prefers_xdg_state_home():
    assert module.default_state_dir({"XDG_STATE_HOME": "/x", "HOME": "/h"}) == \
        "/x/oauth-usage-tracker"
    assert module.default_state_dir({"HOME": "/h"}) == "/h/.local/state/oauth-usage-tracker"


def test_store_round_trip_keeps_windows_and_times(tmp_path):
    store = module.StateStore(str(tmp_path / "state"))
    entry = module.next_state(module.next_state(None, NOW, windows=[WINDOW]), NOW,
                              rate_limited=True)
    store.save([(("claude", "claude-a.json"), entry)])
    loaded = store.load()[("claude", "claude-a.json")]
    assert loaded.windows == (WINDOW,)
    assert loaded.fetched_at == NOW and loaded.cooldown_until == entry.cooldown_until
    assert oct((tmp_path / "state" / "state.json").stat().st_mode & 0o777) == "0o600"


def test_store_missing_file_is_empty_without_warning(tmp_path, caplog):
    assert module.StateStore(str(tmp_path / "none")).load() == {}
    assert caplog.records == []


@pytest.mark.parametrize("content", [b"", b"{not json", b"[]", b'{"accounts": 3}', b"\xff\xfe",
                                     b'{"accounts": {"claude/a.json": "x", "bogus": {}}}'])
def test_store_corrupt_file_is_ignored_with_warning_and_rewritten(tmp_path, caplog, content):
    directory = tmp_path / "state"
    directory.mkdir()
    (directory / "state.json").write_bytes(content)
    store = module.StateStore(str(directory))
    with caplog.at_level(logging.WARNING):
        assert store.load() == {}
    if content.startswith(b'{"accounts": {'):
        assert caplog.records == []  # valid file, unusable entries are just skipped
    else:
        assert "state file" in caplog.text
    store.save([(("codex", "codex-b.json"), module.next_state(None, NOW, windows=[WINDOW]))])
    assert list(store.load()) == [("codex", "codex-b.json")]
    json.loads((directory / "state.json").read_text())


def saved(store, *names):
    store.save([(("codex", name), module.next_state(None, NOW, windows=[WINDOW]))
                for name in names])


def test_store_file_holds_one_account_per_line_and_is_one_json_object(tmp_path):
    store = module.StateStore(str(tmp_path / "state"))
    saved(store, "codex-b.json", "codex-a.json", "codex-c.json")
    lines = (tmp_path / "state" / "state.json").read_bytes().splitlines()
    assert lines[0] == b'{"accounts":{' and lines[-1] == b'},"version":1}'
    assert [line.split(b":")[0] for line in lines[1:-1]] == [
        b'"codex/codex-a.json"', b'"codex/codex-b.json"', b'"codex/codex-c.json"']
    document = json.loads(b"\n".join(lines))
    # The same document one json.dumps of the whole tree would give.
    assert json.dumps(document, separators=(",", ":"), sort_keys=True).encode() == \
        b"".join(lines)
    assert sorted(store.load()) == [("codex", "codex-a.json"), ("codex", "codex-b.json"),
                                    ("codex", "codex-c.json")]


def test_store_keeps_other_entries_byte_for_byte(tmp_path):
    directory = tmp_path / "state"
    store = module.StateStore(str(directory))
    saved(store, "codex-a.json", "codex-b.json")
    path = directory / "state.json"
    # Another writer's entry, with a key this version does not know: kept as it was stored.
    other = b'"claude/claude-x.json":{"future_key":[1,2],"windows":[]}'
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join(lines[:1] + [other + b","] + lines[1:]) + b"\n")
    saved(store, "codex-b.json")
    assert other + b"," in path.read_bytes().splitlines()
    assert sorted(store.load()) == [("claude", "claude-x.json"), ("codex", "codex-a.json"),
                                    ("codex", "codex-b.json")]


def test_store_reads_a_single_line_file_of_an_older_version_and_keeps_its_entries(tmp_path):
    directory = tmp_path / "state"
    directory.mkdir()
    old = {"version": 1, "accounts": {"codex/codex-a.json": {
        "windows": [{"key": "five_hour", "title": "5-hour", "used_percent": 12.0}],
        "fetched_at": "2026-11-24T13:00:00Z"}}}
    (directory / "state.json").write_text(json.dumps(old, indent=1))
    store = module.StateStore(str(directory))
    assert store.load()[("codex", "codex-a.json")].windows[0].used_percent == 12.0
    saved(store, "codex-b.json")
    stored = json.loads((directory / "state.json").read_text())["accounts"]
    assert stored["codex/codex-a.json"] == old["accounts"]["codex/codex-a.json"]
    assert sorted(stored) == ["codex/codex-a.json", "codex/codex-b.json"]


@pytest.mark.parametrize("damage", [
    lambda lines: lines[:-1],                                  # ends before its last line
    lambda lines: lines[:1] + [b'"codex/codex-a.json":{,'] + lines[2:],  # a broken line
    lambda lines: lines + [b"trailing"],                       # data after the end
    lambda lines: lines[:-1] + [b"}"],                         # a last line that is no JSON
])
def test_store_damaged_line_layout_is_ignored_with_warning_and_rewritten(tmp_path, caplog,
                                                                         damage):
    directory = tmp_path / "state"
    store = module.StateStore(str(directory))
    saved(store, "codex-a.json", "codex-b.json")
    path = directory / "state.json"
    path.write_bytes(b"\n".join(damage(path.read_bytes().splitlines())) + b"\n")
    with caplog.at_level(logging.WARNING):
        assert store.load() == {}
    assert "corrupt state file" in caplog.text
    saved(store, "codex-c.json")
    assert list(store.load()) == [("codex", "codex-c.json")]


def test_store_save_keeps_a_damaged_line_of_its_own_accounts_out_and_others_whole(tmp_path):
    directory = tmp_path / "state"
    store = module.StateStore(str(directory))
    saved(store, "codex-a.json", "codex-b.json")
    path = directory / "state.json"
    lines = path.read_bytes().splitlines()
    lines[1] = b'"codex/codex-a.json":{"windows":[{"key":,'
    path.write_bytes(b"\n".join(lines) + b"\n")
    # The damaged line is this save's own account: replaced, never parsed; the other is kept.
    saved(store, "codex-a.json")
    assert sorted(store.load()) == [("codex", "codex-a.json"), ("codex", "codex-b.json")]


def popped(entries, *names):
    """Each name's stored state from a StoredEntries (None when it has none), then close it."""
    try:
        return [entries.pop(("codex", name)) for name in names]
    finally:
        entries.close()


def test_open_entries_reads_each_account_at_its_turn_as_load_does(tmp_path, caplog):
    store = module.StateStore(str(tmp_path / "state"))
    saved(store, "codex-a.json", "codex-b.json", "codex-c.json")
    loaded = store.load()
    entries = store.open_entries()
    with caplog.at_level(logging.WARNING):
        assert entries.pop(("codex", "codex-b.json")) == loaded[("codex", "codex-b.json")]
        assert entries.pop(("codex", "codex-b.json")) is None  # each account asks once
        assert entries.pop(("codex", "codex-x.json")) is None  # an account never stored
        assert entries.pop(("claude", "codex-a.json")) is None  # another provider's key
        assert popped(entries, "codex-c.json", "codex-a.json") == [
            loaded[("codex", "codex-c.json")], loaded[("codex", "codex-a.json")]]
    assert caplog.records == []
    assert entries.pop(("codex", "codex-a.json")) is None  # closed: nothing left


def test_open_entries_keeps_reading_the_file_it_checked_when_another_save_replaces_it(tmp_path):
    store = module.StateStore(str(tmp_path / "state"))
    saved(store, "codex-a.json", "codex-b.json")
    before = store.load()
    entries = store.open_entries()
    store.save([(("codex", "codex-a.json"), module.next_state(None, NOW + timedelta(hours=1),
                                                              windows=[WINDOW]))])
    assert store.load()[("codex", "codex-a.json")].fetched_at == NOW + timedelta(hours=1)
    assert popped(entries, "codex-a.json", "codex-b.json") == [
        before[("codex", "codex-a.json")], before[("codex", "codex-b.json")]]


@pytest.mark.parametrize("edit", [
    lambda data: data[:20],                                          # truncated
    lambda data: data.replace(b'"codex/codex-a.json":{', b'"codex/codex-a.json":[', 1),  # no JSON
    lambda data: data.replace(b'"codex/codex-a.json"', b'"codex/codex-z.json"', 1),  # renamed
])
def test_open_entries_of_a_file_edited_in_place_meanwhile_warn_and_give_no_entry(
        tmp_path, caplog, edit, monkeypatch):
    monkeypatch.setattr(module, "HELD_STATE_BYTES", 0)  # read line by line, as a large file is
    store = module.StateStore(str(tmp_path / "state"))
    saved(store, "codex-a.json", "codex-b.json")
    entries = store.open_entries()
    path = tmp_path / "state" / "state.json"
    data = path.read_bytes()
    with open(path, "r+b") as handle:  # in place: the same inode the entries read from
        handle.write(edit(data))
        handle.truncate()
    with caplog.at_level(logging.WARNING):
        assert popped(entries, "codex-a.json") == [None]
    assert "changed while it was read" in caplog.text and "codex/codex-a.json" in caplog.text


@pytest.mark.parametrize("held_bytes", [0, 1024 * 1024])
def test_open_entries_of_a_small_file_keep_its_lines_and_read_none_again(tmp_path, caplog,
                                                                         monkeypatch, held_bytes):
    # A file up to HELD_STATE_BYTES keeps the lines read at open: no read per account, and an
    # edit in place afterwards changes nothing (the lines given are the ones checked). A larger
    # one is read by offset, one pread per account, and sees the edit.
    monkeypatch.setattr(module, "HELD_STATE_BYTES", held_bytes)
    store = module.StateStore(str(tmp_path / "state"))
    saved(store, "codex-a.json", "codex-b.json")
    before = store.load()
    reads = preads(monkeypatch, state_file.os)
    entries = store.open_entries()
    path = tmp_path / "state" / "state.json"
    data = path.read_bytes()
    with open(path, "r+b") as handle:  # in place: the same inode the entries read from
        handle.write(data.replace(b'"codex/codex-a.json":{', b'"codex/codex-a.json":[', 1))
    with caplog.at_level(logging.WARNING):
        got = popped(entries, "codex-a.json", "codex-b.json", "codex-a.json")
    assert got[2] is None  # each account asks once
    if held_bytes:
        assert got[:2] == [before[("codex", "codex-a.json")], before[("codex", "codex-b.json")]]
        assert reads == [] and caplog.text == ""
    else:
        assert got[:2] == [None, before[("codex", "codex-b.json")]]
        assert len(reads) == 2 and "changed while it was read" in caplog.text


def test_open_entries_of_a_corrupt_line_ignore_the_whole_file_as_load_does(tmp_path, caplog):
    store = module.StateStore(str(tmp_path / "state"))
    saved(store, "codex-a.json", "codex-b.json")
    path = tmp_path / "state" / "state.json"
    lines = path.read_bytes().splitlines()
    lines[2] = b'"codex/codex-b.json":{"windows":[{"key":}'
    path.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING):
        assert popped(store.open_entries(), "codex-a.json", "codex-b.json") == [None, None]
    assert "corrupt state file" in caplog.text


def test_open_entries_of_a_missing_file_symlink_or_directory(tmp_path, caplog):
    directory = tmp_path / "state"
    store = module.StateStore(str(directory))
    with caplog.at_level(logging.WARNING):
        assert popped(store.open_entries(), "codex-a.json") == [None]
    assert caplog.records == []  # missing: nothing stored yet, nothing to say
    saved(module.StateStore(str(tmp_path / "elsewhere")), "codex-a.json")
    directory.mkdir()
    (directory / "state.json").symlink_to(tmp_path / "elsewhere" / "state.json")
    with caplog.at_level(logging.WARNING):
        assert popped(store.open_entries(), "codex-a.json") == [None]
        assert store.load() == {}
    assert "Ignoring the state file" in caplog.text
    (directory / "state.json").unlink()
    (directory / "state.json").mkdir()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert popped(store.open_entries(), "codex-a.json") == [None]
    assert "Ignoring the state file" in caplog.text


def test_open_entries_of_an_older_single_line_file_and_laid_over_entries(tmp_path):
    directory = tmp_path / "state"
    directory.mkdir()
    old = {"version": 1, "accounts": {"codex/codex-a.json": {
        "windows": [{"key": "five_hour", "title": "5-hour", "used_percent": 12.0}]},
        "codex/codex-b.json": {"windows": []}, "bogus": {}, "codex/codex-c.json": 3}}
    (directory / "state.json").write_text(json.dumps(old))
    entries = module.StateStore(str(directory)).open_entries()
    newer = module.next_state(None, NOW, windows=[WINDOW])
    entries.update({("codex", "codex-b.json"): newer})
    a, b, c = popped(entries, "codex-a.json", "codex-b.json", "codex-c.json")
    assert a.windows[0].used_percent == 12.0 and b is newer and c is None


def test_open_entries_laid_over_entries_win_over_the_files_lines(tmp_path):
    store = module.StateStore(str(tmp_path / "state"))
    saved(store, "codex-a.json")
    entries = store.open_entries()
    newer = module.next_state(None, NOW + timedelta(hours=1), windows=[WINDOW])
    entries.update({("codex", "codex-a.json"): newer})
    assert popped(entries, "codex-a.json") == [newer]


def seal_of(path):
    """The state file's seal, or skip the test where the file system keeps no attributes."""
    try:
        return os.getxattr(path, module.SEAL_ATTRIBUTE)
    except OSError:
        pytest.skip("this file system keeps no user attributes")


def counting_parses(monkeypatch):
    """Count the members parsed from now on (module.parse_member calls)."""
    calls = []
    real = module.parse_member

    def counting(member):
        calls.append(member)
        return real(member)

    monkeypatch.setattr(module, "parse_member", counting)
    monkeypatch.setattr(state_file, "parse_member", counting)
    return calls


def test_store_save_seals_the_file_with_the_sha256_of_its_member_lines(tmp_path):
    store = module.StateStore(str(tmp_path / "state"))
    saved(store, "codex-b.json", "codex-a.json")
    path = tmp_path / "state" / "state.json"
    lines = path.read_bytes().splitlines(keepends=True)
    assert seal_of(path) == hashlib.sha256(b"".join(lines[1:-1])).digest()
    saved(store, "codex-c.json")  # each save seals what it wrote, kept lines included
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 5 and seal_of(path) == hashlib.sha256(b"".join(lines[1:-1])).digest()


def test_open_entries_of_a_sealed_file_parse_each_line_only_when_it_is_popped(tmp_path,
                                                                            monkeypatch):
    store = module.StateStore(str(tmp_path / "state"))
    saved(store, "codex-a.json", "codex-b.json", "codex-c.json")
    seal_of(tmp_path / "state" / "state.json")
    loaded = store.load()
    parses = counting_parses(monkeypatch)
    entries = store.open_entries()
    assert parses == []
    assert popped(entries, "codex-b.json", "codex-a.json") == [
        loaded[("codex", "codex-b.json")], loaded[("codex", "codex-a.json")]]
    assert len(parses) == 2


def test_open_entries_of_an_unsealed_file_parse_every_line_at_once(tmp_path, monkeypatch):
    store = module.StateStore(str(tmp_path / "state"))
    saved(store, "codex-a.json", "codex-b.json", "codex-c.json")
    path = tmp_path / "state" / "state.json"
    seal_of(path)
    os.removexattr(path, module.SEAL_ATTRIBUTE)  # as a copy, or an older version, leaves it
    loaded = store.load()
    parses = counting_parses(monkeypatch)
    entries = store.open_entries()
    assert len(parses) == 3
    assert popped(entries, "codex-c.json") == [loaded[("codex", "codex-c.json")]]


def edited_in_place(tmp_path, sealed, edit, *names):
    """A store whose file a save wrote for `names`, then `edit`ed (a function of its lines) in
    place, as an editor may write it: the seal the save set stays (removed unless `sealed`)."""
    store = module.StateStore(str(tmp_path / "state"))
    saved(store, *names)
    path = tmp_path / "state" / "state.json"
    seal_of(path)
    if not sealed:
        os.removexattr(path, module.SEAL_ATTRIBUTE)
    lines = path.read_bytes().splitlines()
    edit(lines)
    with open(path, "r+b") as handle:
        handle.write(b"\n".join(lines) + b"\n")
        handle.truncate()
    return store


@pytest.mark.parametrize("sealed", [True, False])
def test_open_entries_and_save_of_a_file_with_a_corrupt_line_ignore_it_whole(tmp_path, caplog,
                                                                             sealed):
    # In place: a seal the save set stays, and no longer matches.
    def edit(lines):
        lines[2] = b'"codex/codex-b.json":{"windows":[{"key":}'
    store = edited_in_place(tmp_path, sealed, edit, "codex-a.json", "codex-b.json", "codex-c.json")
    with caplog.at_level(logging.WARNING):
        assert popped(store.open_entries(), "codex-a.json", "codex-b.json") == [None, None]
    assert "corrupt state file" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        saved(store, "codex-c.json")  # keeps nothing of a corrupt file
    assert "corrupt state file" in caplog.text
    assert list(store.load()) == [("codex", "codex-c.json")]


@pytest.mark.parametrize("sealed", [True, False])
def test_a_corrupt_line_of_a_name_that_comes_twice_makes_the_whole_file_ignored(tmp_path, caplog,
                                                                               sealed):
    # An edit in place puts a broken line before a good one of the same name: the reader keeps
    # one line per name, yet the broken one is checked too, with the seal kept or not.
    def edit(lines):
        lines.insert(1, b'"codex/codex-a.json":{"fetched_at": BROKEN},')
    store = edited_in_place(tmp_path, sealed, edit, "codex-a.json", "codex-b.json")
    with caplog.at_level(logging.WARNING):
        assert popped(store.open_entries(), "codex-a.json", "codex-b.json") == [None, None]
    assert "corrupt state file" in caplog.text


def test_open_entries_of_a_sealed_file_edited_in_place_into_valid_lines_read_them(tmp_path,
                                                                                  monkeypatch):
    # The seal no longer matches: every line is parsed to check it, and the edit counts.
    store = module.StateStore(str(tmp_path / "state"))
    saved(store, "codex-a.json", "codex-b.json")
    path = tmp_path / "state" / "state.json"
    seal_of(path)
    with open(path, "r+b") as handle:
        data = handle.read().replace(b'"used_percent":40.0', b'"used_percent":55.0')
        handle.seek(0)
        handle.write(data)
    parses = counting_parses(monkeypatch)
    entries = store.open_entries()
    assert len(parses) == 2
    a, b = popped(entries, "codex-a.json", "codex-b.json")
    assert a.windows[0].used_percent == b.windows[0].used_percent == 55.0


def test_open_entries_of_a_sealed_file_with_a_line_that_is_no_json_lose_only_that_entry(
        tmp_path, caplog):
    # A seal that matches a broken line (none of our saves writes one): the line is found at
    # its account's turn and costs that account its stored state, as a line edited meanwhile.
    store = module.StateStore(str(tmp_path / "state"))
    saved(store, "codex-a.json", "codex-b.json")
    path = tmp_path / "state" / "state.json"
    seal_of(path)
    loaded = store.load()
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = b'"codex/codex-a.json":{"windows":[{"key":},\n'
    path.write_bytes(b"".join(lines))
    os.setxattr(path, module.SEAL_ATTRIBUTE, hashlib.sha256(b"".join(lines[1:-1])).digest())
    with caplog.at_level(logging.WARNING):
        assert popped(store.open_entries(), "codex-a.json", "codex-b.json") == [
            None, loaded[("codex", "codex-b.json")]]
    assert "codex/codex-a.json" in caplog.text and "corrupt state file" not in caplog.text


@pytest.fixture
def parsed_parts(monkeypatch):
    """How many times each part of a stored entry was parsed: windows, details, histories."""
    counts = {"windows": 0, "details": 0, "histories": 0}

    def counting(name, function):
        def wrapper(raw):
            counts[name] += 1
            return function(raw)
        return wrapper
    monkeypatch.setattr(stored_module, "window_from_json", counting("windows", stored_module.window_from_json))
    monkeypatch.setattr(stored_module, "details_from_json", counting("details", stored_module.details_from_json))
    monkeypatch.setattr(stored_module, "_history_from_json",
                        counting("histories", stored_module._history_from_json))
    return counts


def stored_twice(tmp_path):
    """A store holding codex-a.json's entry after two good fetches (a window, a reading, a
    plan), and that entry as load() reads it."""
    store = module.StateStore(str(tmp_path / "state"))
    first = module.next_state(None, NOW, windows=[WINDOW],
                              details=module.models.AccountDetails(plan="pro"))
    later = module.next_state(first, NOW + timedelta(minutes=30),
                              windows=[WINDOW], details=first.details)
    store.save([(("codex", "codex-a.json"), later)])
    return store, store.load()[("codex", "codex-a.json")]


def test_a_popped_entry_parses_each_part_when_asked_and_once(tmp_path, parsed_parts):
    store, loaded = stored_twice(tmp_path)
    assert loaded.readings and loaded.details.plan == "pro"
    parsed_parts.update(windows=0, details=0, histories=0)
    entry, = popped(store.open_entries(), "codex-a.json")
    assert isinstance(entry, module.StoredEntry)
    # The plan reads the moments and whether windows are stored: nothing else is made.
    assert module.plan_fetch(entry, NOW + timedelta(minutes=31), 3600) is module.Plan.REUSE
    assert module.plan_fetch(entry, NOW + timedelta(minutes=31), 0) is module.Plan.ASK
    assert (entry.fetched_at, entry.cooldown_until, entry.has_windows) == (
        loaded.fetched_at, None, True)
    assert parsed_parts == {"windows": 0, "details": 0, "histories": 0}
    # A success reads the readings alone, once.
    assert entry.readings == loaded.readings and entry.readings is entry.readings
    assert parsed_parts == {"windows": 0, "details": 0, "histories": 1}
    # The whole entry (a reuse, a cooldown, a failure) parses the rest, once.
    assert entry.whole() == loaded and entry.whole() is entry.whole()
    assert entry.windows == loaded.windows and entry.details == loaded.details
    assert entry.has_windows and entry.windows_at(NOW) == loaded.windows_at(NOW)
    assert parsed_parts == {"windows": 1, "details": 1, "histories": 1}
    assert entry == loaded and loaded == entry and entry == module.StoredEntry(
        {"windows": [stored_module.window_to_json(WINDOW)], "fetched_at": "2026-11-24T14:30:00Z",
         "extra": {"plan": "pro"}, "readings": module.entry_to_json(loaded)["readings"]})
    assert entry != module.AccountState() and entry != "an entry"
    assert repr(entry) == "StoredEntry(%r)" % (loaded,)


def test_a_popped_entry_on_each_path_gives_what_the_whole_entry_gives(tmp_path, parsed_parts):
    store, loaded = stored_twice(tmp_path)
    later = NOW + timedelta(hours=1)

    def popped_entry():
        return popped(store.open_entries(), "codex-a.json")[0]
    parsed_parts.update(windows=0, details=0, histories=0)
    success = module.next_state(popped_entry(), later, windows=[WINDOW])
    assert success == module.next_state(loaded, later, windows=[WINDOW])
    assert parsed_parts == {"windows": 0, "details": 0, "histories": 1}  # readings alone
    for status in (429, 502, None):
        assert module.after_failure(popped_entry(), later, status, 120) == \
            module.after_failure(loaded, later, status, 120)
    assert type(module.after_failure(popped_entry(), later, 502, None)) is module.AccountState
    cooling = module.after_failure(loaded, later, 429, 600)
    store.save([(("codex", "codex-a.json"), cooling)])
    entry = popped_entry()
    assert module.plan_fetch(entry, later, 0) is module.Plan.COOL_DOWN
    assert module.cooldown_message(entry) == module.cooldown_message(cooling)
    account = module.AuthAccount("codex-a.json", Provider.CODEX, None, "codex-a.json", "p")
    assert module.from_store(account, entry, later, stale=True) == \
        module.from_store(account, cooling, later, stale=True)


def test_only_windows_that_read_as_windows_count_as_stored(tmp_path):
    directory = tmp_path / "state"
    directory.mkdir()
    entries = {"codex/codex-a.json": {"windows": [{"key": 1, "title": "t"}, "x"],
                                      "fetched_at": "2026-11-24T14:00:00Z"},
               "codex/codex-b.json": {"windows": {"key": "k"}, "fetched_at": "2026-11-24T14:00:00Z"},
               "codex/codex-c.json": {"windows": [{"key": "k", "title": "t"}],
                                      "fetched_at": "2026-11-24T14:00:00Z"}}
    body = b",\n".join(module.member_bytes(name, raw) for name, raw in sorted(entries.items()))
    (directory / "state.json").write_bytes(state_file._HEAD + body + b"\n" + state_file._TAIL)
    a, b, c = popped(module.StateStore(str(directory)).open_entries(),
                     "codex-a.json", "codex-b.json", "codex-c.json")
    later = NOW + timedelta(minutes=1)
    assert [entry.has_windows for entry in (a, b, c)] == [False, False, True]
    assert [module.plan_fetch(entry, later, 3600) for entry in (a, b, c)] == [
        module.Plan.ASK, module.Plan.ASK, module.Plan.REUSE]
    assert [bool(entry.whole().windows) for entry in (a, b, c)] == [False, False, True]
    assert [entry.has_windows for entry in (a, b, c)] == [False, False, True]


def test_store_file_over_the_cap_is_ignored_with_warning(tmp_path, caplog, monkeypatch):
    store = module.StateStore(str(tmp_path / "state"))
    saved(store, *["codex-%03d.json" % index for index in range(20)])
    monkeypatch.setattr(module, "MAX_STATE_BYTES", 1000)
    with caplog.at_level(logging.WARNING):
        assert store.load() == {}
    assert "larger than" in caplog.text


def test_store_unwritable_directory_logs_and_does_not_raise(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = module.StateStore(str(blocker / "state"))
    with caplog.at_level(logging.WARNING):
        store.save([(("codex", "x.json"), module.next_state(None, NOW, windows=[WINDOW]))])
    assert "Cannot write the state file" in caplog.text


WRITER = """
import sys
from datetime import datetime, timezone
from oauth_usage_tracker import state
from oauth_usage_tracker.models import UsageWindow
store = state.StateStore(sys.argv[1])
now = datetime.now(timezone.utc)
window = UsageWindow("five_hour", "5-hour", 10.0, None)
for index in range(40):
    store.save([(("codex", "%s-%d.json" % (sys.argv[2], index)),
                 state.next_state(None, now, windows=[window]))])
"""


def test_store_two_processes_saving_at_once_lose_nothing(tmp_path):
    directory = str(tmp_path / "state")
    processes = [subprocess.Popen([sys.executable, "-c", WRITER, directory, name])
                 for name in ("left", "right")]
    for process in processes:
        assert process.wait(timeout=60) == 0
    keys = set(module.StateStore(directory).load())
    assert len(keys) == 80
    assert {name for _, name in keys} == {"%s-%d.json" % (side, index)
                                          for side in ("left", "right") for index in range(40)}


# --- the tracker with state --------------------------------------------------------------------

def account(name="claude-a@example.com.json", provider=Provider.CLAUDE):
    return AuthAccount(id=name, provider=provider, email="a@example.com", display_name="a",
                       path="/nonexistent/" + name)


class ScriptedFetcher:
    """Answers each call with the next outcome: windows, or an exception to raise."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.calls = 0

    def __call__(self, acct, session, settings):
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        now = datetime.now(timezone.utc)
        return AccountUsage(id=acct.id, provider=acct.provider, email=acct.email,
                            windows=tuple(outcome), updated_at=now)


def tracker_with(fetcher, tmp_path, **kwargs):
    return OAuthUsageTracker(fetchers={Provider.CLAUDE: fetcher, Provider.CODEX: fetcher},
                             state_dir=str(tmp_path / "state"), **kwargs)


def test_tracker_429_shows_stale_values_then_cooldown_sends_nothing(tmp_path):
    rate_limited = ProviderError("Claude usage API returned 429 (rate limited; retry after 300 s)",
                                 status=429, retry_after=300)
    fetcher = ScriptedFetcher([WINDOW], rate_limited)
    with freeze_time(NOW) as frozen, tracker_with(fetcher, tmp_path) as tracker:
        [first] = tracker.refresh_and_wait([], [account()])
        assert not first.stale and first.fetched_at == NOW
        frozen.tick(timedelta(minutes=12))
        [second] = tracker.refresh_and_wait([], [account()])
        assert second.stale and second.fetched_at == NOW
        assert second.windows[0].used_percent == 40.0
        assert "429" in second.error
        frozen.tick(timedelta(minutes=4))
        [third] = tracker.refresh_and_wait([], [account()])
        assert fetcher.calls == 2  # inside the cooldown: no request
        assert third.stale and "cooldown" in third.error
        report = Report(accounts=(third,), skipped=(), generated_at=NOW + timedelta(minutes=16))
        assert report.failed == ()
        frozen.tick(timedelta(minutes=2))  # 300 s after the 429: the cooldown is over
        fetcher.outcomes.append([WINDOW])
        [fourth] = tracker.refresh_and_wait([], [account()])
        assert fetcher.calls == 3 and not fourth.stale and fourth.error is None


def test_tracker_login_problem_is_reported_beside_stale_values(tmp_path):
    rejected = ProviderError("Claude usage returned 401 after refresh retry", status=401,
                             login_problem=True)
    fetcher = ScriptedFetcher([WINDOW], rejected)
    with freeze_time(NOW), tracker_with(fetcher, tmp_path) as tracker:
        tracker.refresh_and_wait([], [account()])
        [usage] = tracker.refresh_and_wait([], [account()])
    assert usage.error == "Claude usage returned 401 after refresh retry"
    assert usage.login_problem and usage.stale and usage.windows
    assert Report(accounts=(usage,), skipped=(), generated_at=NOW).failed == (usage,)


def test_tracker_stale_values_older_than_max_stale_fail_the_run(tmp_path):
    timeout = ProviderError("Claude usage request timed out after 15 s")
    fetcher = ScriptedFetcher([WINDOW], timeout)
    with freeze_time(NOW) as frozen, tracker_with(fetcher, tmp_path) as tracker:
        tracker.refresh_and_wait([], [account()])
        frozen.tick(timedelta(hours=2))
        [usage] = tracker.refresh_and_wait([], [account()])
    assert usage.stale
    young = Report(accounts=(usage,), skipped=(), generated_at=NOW + timedelta(hours=2),
                   max_stale_seconds=3 * 3600)
    old = Report(accounts=(usage,), skipped=(), generated_at=NOW + timedelta(hours=2))
    assert young.failed == () and old.failed == (usage,)


def test_tracker_max_age_reuses_stored_result_without_asking(tmp_path):
    fetcher = ScriptedFetcher([WINDOW])
    with freeze_time(NOW) as frozen, tracker_with(fetcher, tmp_path, max_age=60) as tracker:
        tracker.refresh_and_wait([], [account()])
        frozen.tick(timedelta(seconds=30))
        [usage] = tracker.refresh_and_wait([], [account()])
    assert fetcher.calls == 1
    assert [(w.key, w.used_percent, w.reset_date) for w in usage.windows] == [
        ("five_hour", 40.0, WINDOW.reset_date)]
    assert usage.windows[0].reset_text == "in 3 hours (Nov 24, 2026, 5:00 PM)"
    assert not usage.stale and usage.fetched_at == NOW and usage.error is None


def test_tracker_without_state_dir_keeps_nothing(tmp_path):
    fetcher = ScriptedFetcher([WINDOW], ProviderError("x", status=429, retry_after=300), [WINDOW])
    with OAuthUsageTracker(fetchers={Provider.CLAUDE: fetcher}, state_dir=None) as tracker:
        tracker.refresh_and_wait([], [account()])
        [failed] = tracker.refresh_and_wait([], [account()])
        tracker.refresh_and_wait([], [account()])
    assert fetcher.calls == 3  # no cooldown without state
    assert failed.windows == () and not failed.stale
    assert not (tmp_path / "state").exists()


def test_state_file_never_holds_a_token(tmp_path):
    from support import CLAUDE_ACCESS
    fetcher = ScriptedFetcher([WINDOW])
    with tracker_with(fetcher, tmp_path) as tracker:
        tracker.refresh_and_wait([], [account()])
    text = (tmp_path / "state" / "state.json").read_text()
    assert "claude/claude-a@example.com.json" in text
    assert_no_secrets(text)
    assert CLAUDE_ACCESS not in text and "token" not in text


def test_store_round_trip_keeps_window_length_and_bounded_readings(tmp_path):
    from oauth_usage_tracker import pace
    store = module.StateStore(str(tmp_path / "state"))
    reset = NOW + timedelta(hours=4)
    entry = None
    for minute in range(0, 200, 5):
        window = UsageWindow("five_hour", "5-hour", minute / 4, reset, length_seconds=18000.0)
        entry = module.next_state(entry, NOW + timedelta(minutes=minute), windows=[window])
    store.save([(("claude", "claude-a.json"), entry)])
    loaded = store.load()[("claude", "claude-a.json")]
    assert loaded.windows[0].length_seconds == 18000.0
    history = loaded.readings["five_hour"]
    assert history == entry.readings["five_hour"]
    assert len(history.readings) == pace.MAX_READINGS
    assert history.readings[-1] == pace.Reading(NOW + timedelta(minutes=195), 195 / 4)
    limited = module.next_state(loaded, NOW + timedelta(minutes=200), rate_limited=True)
    assert limited.readings == loaded.readings


def test_store_damaged_readings_are_dropped_not_fatal(tmp_path):
    import json
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text(json.dumps({"version": 1, "accounts": {"claude/a.json": {
        "windows": [], "readings": {"five_hour": {"reset": "garbage", "readings": []},
                                    "seven_day": {"reset": "2026-11-25T00:00:00Z",
                                                  "readings": [["x", 1], [1, "y"], 5,
                                                               ["2026-11-24T10:00:00Z", 7]],
                                                  "previous": "nope"},
                                    "7": [1, 2]}}}}))
    loaded = module.StateStore(str(state)).load()[("claude", "a.json")]
    assert set(loaded.readings) == {"seven_day"}
    assert [r.used_percent for r in loaded.readings["seven_day"].readings] == [7.0]
    assert loaded.readings["seven_day"].previous is None


def test_from_store_gives_stale_windows_their_pace_at_fetch_time_but_not_rolled_over_ones():
    from oauth_usage_tracker.models import AuthAccount
    five = UsageWindow("five_hour", "5-hour", 80.0, NOW + timedelta(hours=1), length_seconds=18000.0)
    week = UsageWindow("seven_day", "Weekly", 40.0, NOW + timedelta(days=3),
                       length_seconds=604800.0)
    entry = module.next_state(None, NOW, windows=[five, week])
    account = AuthAccount("claude-a.json", Provider.CLAUDE, "a@x", "a@x", "/nonexistent")
    usage = module.from_store(account, entry, NOW + timedelta(hours=2), stale=True, error="429")
    rolled, weekly = usage.windows
    assert rolled.rolled_over and rolled.pace is None
    assert weekly.pace is not None
    assert weekly.pace.expected_used_percent == pytest.approx(100 * 4 / 7)


# --- the tracker publishes first, saves after --------------------------------------------------

class BlockedSave:
    """Stands in for StateStore.save: records what is saved, and holds the first save until
    the test releases it."""

    def __init__(self, store):
        self.store, self.real = store, store.save
        self.entered, self.release = threading.Event(), threading.Event()
        self.saved = []

    def __call__(self, changes, seen=None):
        changes = list(changes)
        self.entered.set()
        assert self.release.wait(10), "the test never released the save"
        self.saved.append(changes)
        self.real(changes)


def test_tracker_publishes_before_saving_and_a_refresh_meanwhile_keeps_the_cooldown(tmp_path):
    limited = ProviderError("Claude usage API returned 429", status=429, retry_after=600)
    fetcher = ScriptedFetcher(limited)
    with tracker_with(fetcher, tmp_path) as tracker:
        blocked = BlockedSave(tracker.state)
        tracker.state.save = blocked
        try:
            [first] = tracker.refresh([], [account()]).result(5)  # published; save waiting
            assert blocked.entered.wait(10)
            assert first.state is AccountState.RATE_LIMITED and blocked.saved == []
            assert not (tmp_path / "state" / "state.json").exists()
            handle = tracker.refresh([], [account()])  # knows the cooldown before it is saved
        finally:
            blocked.release.set()
        [second] = handle.result(10)
    assert fetcher.calls == 1
    assert second.state is AccountState.RATE_LIMITED and "cooldown" in second.error
    stored = module.StateStore(str(tmp_path / "state")).load()[("claude", account().id)]
    assert stored.cooldown_until is not None


def test_tracker_saves_a_superseded_batchs_429(tmp_path):
    started, release = threading.Event(), threading.Event()
    fetched = []

    def fetcher(acct, session, settings):
        fetched.append(acct.id)
        if acct.id == "claude-slow.json":
            started.set()
            assert release.wait(10)
            raise ProviderError("Claude usage API returned 429", status=429, retry_after=600)
        return AccountUsage(id=acct.id, provider=acct.provider, windows=(WINDOW,),
                            updated_at=datetime.now(timezone.utc))

    with tracker_with(fetcher, tmp_path) as tracker:
        old = tracker.refresh([], [account("claude-slow.json")])
        assert started.wait(10)
        newer = tracker.refresh([], [account("claude-other.json")])
        newer.result(10)
        release.set()
    assert old.superseded
    stored = module.StateStore(str(tmp_path / "state")).load()
    assert stored[("claude", "claude-slow.json")].cooldown_until is not None
    assert stored[("claude", "claude-other.json")].windows


# --- a history written from its floats, as it was from its datetimes -------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from oauth_usage_tracker import pace  # noqa: E402
from oauth_usage_tracker.parsing import format_timestamp  # noqa: E402

HISTORY_MOMENT = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30),
                              timezones=st.just(timezone.utc))
HISTORY_PERCENT = st.floats(min_value=0, max_value=100, allow_nan=False)


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(reset=HISTORY_MOMENT, points=st.lists(st.tuples(HISTORY_MOMENT, HISTORY_PERCENT),
                                             max_size=14),
       previous=st.one_of(st.none(), st.tuples(HISTORY_MOMENT, HISTORY_PERCENT)))
def test_history_json_is_what_its_readings_and_moments_give(reset, points, previous):
    history = pace.WindowHistory(reset, [pace.Reading(at, used) for at, used in sorted(points)],
                                 pace.Reading(*previous) if previous else None)
    expected = {"reset": format_timestamp(history.reset),
                "readings": [[format_timestamp(r.at), r.used_percent] for r in history.readings],
                "previous": [format_timestamp(history.previous.at), history.previous.used_percent]
                if history.previous else None}
    assert stored_module._history_to_json(history) == expected
    stored = stored_module._history_from_json(json.loads(json.dumps(expected)))
    assert stored.reset == history.reset.replace(microsecond=0)
    assert [r.used_percent for r in stored.readings] == [r.used_percent for r in history.readings]


def _history_from_json_before(raw):
    """_history_from_json as it was before it packed the floats itself: a Reading per reading,
    sorted, then WindowHistory(...)."""
    from oauth_usage_tracker.parsing import clamp_percent, number_value, parse_timestamp

    def reading(item):
        if not isinstance(item, list) or len(item) != 2:
            return None
        at = parse_timestamp(item[0])
        used = clamp_percent(number_value(item[1]))
        return pace.Reading(at, used) if at is not None and used is not None else None

    reset = parse_timestamp(raw.get("reset")) if isinstance(raw, dict) else None
    if reset is None:
        return None
    readings = raw.get("readings") if isinstance(raw.get("readings"), list) else []
    kept = [r for r in map(reading, readings[-pace.MAX_READINGS:]) if r is not None]
    return pace.WindowHistory(reset=reset, readings=tuple(sorted(kept, key=lambda r: r.at)),
                              previous=reading(raw.get("previous")))


STORED_TIME = st.one_of(
    HISTORY_MOMENT.map(format_timestamp),                              # the canonical form
    HISTORY_MOMENT.map(lambda moment: moment.isoformat()),             # an offset, fractions
    st.integers(min_value=-10**13, max_value=10**13),                  # unix seconds or ms
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "2026-13-01T00:00:00Z", "soon", "12%", "1e3", None, True]))
STORED_PERCENT = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                           st.integers(min_value=-1000, max_value=1000),
                           st.sampled_from(["50", "50%", " 7.5 ", "x", None, False, [1]]))
STORED_READING = st.one_of(st.lists(st.one_of(STORED_TIME, STORED_PERCENT), max_size=3),
                           st.tuples(STORED_TIME, STORED_PERCENT).map(list),
                           st.tuples(STORED_TIME, STORED_PERCENT).map(list),
                           st.sampled_from([None, "x", {"at": 1}]))


@settings(max_examples=500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.one_of(
    st.fixed_dictionaries({"reset": STORED_TIME},
                          optional={"readings": st.one_of(st.lists(STORED_READING, max_size=16),
                                                          STORED_READING),
                                    "previous": STORED_READING}),
    st.sampled_from([None, [], "x", {}])))
def test_history_from_json_gives_what_it_gave_before_it_packed_the_floats_itself(raw):
    """Old (a Reading per reading) against new (floats packed straight) on generated stored
    histories, junk included: the same history (compared by its packed floats), or None."""
    raw = json.loads(json.dumps(raw))  # as read back from the file
    before = _history_from_json_before(raw)
    after = stored_module._history_from_json(raw)
    assert after == before
    if before is not None:
        assert (after.reset, after.readings, after.previous) == (
            before.reset, before.readings, before.previous)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(),
              st.floats(allow_nan=True, allow_infinity=True)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)


@settings(max_examples=300, deadline=None, database=None)
@given(name=st.text(), raw=JSON_VALUES)
def test_member_is_json_dumps_compact_with_sorted_keys(name, raw):
    """The shared encoder writes what json.dumps wrote with the same arguments."""
    assert module.member_bytes(name, raw) == (
        json.dumps(name) + ":" + json.dumps(raw, separators=(",", ":"), sort_keys=True)
    ).encode("utf-8")


# --- the spool: new entries written out as they come --------------------------------------------

def entry_at(hours=0):
    return module.next_state(None, NOW + timedelta(hours=hours), windows=[WINDOW])


def test_spool_save_writes_the_file_a_save_of_the_same_pairs_writes(tmp_path):
    spooled, direct = module.StateStore(str(tmp_path / "a")), module.StateStore(str(tmp_path / "b"))
    saved(spooled, "codex-k.json")
    saved(direct, "codex-k.json")
    spool = module.Spool(spooled.directory)
    try:
        spool.add(("codex", "codex-b.json"), entry_at(0))
        spool.add(("claude", "claude-a.json"), entry_at(1))
        spool.add(("codex", "codex-b.json"), entry_at(2))  # a later entry replaces the first
        assert len(spool) == 2
        # The spool file has no name: the directory holds what the save left, nothing more.
        assert sorted(os.listdir(spooled.directory)) == ["state.json", "state.json.lock"]
        assert list(spool) == [(("claude", "claude-a.json"), entry_at(1)),
                               (("codex", "codex-b.json"), entry_at(2))]
        spooled.save(spool)
    finally:
        spool.close()
    direct.save([(("claude", "claude-a.json"), entry_at(1)),
                 (("codex", "codex-b.json"), entry_at(2))])
    assert (tmp_path / "a" / "state.json").read_bytes() == \
        (tmp_path / "b" / "state.json").read_bytes()
    assert len(spool) == 0 and spool.entries([("codex", "codex-b.json")]) is None


def test_spool_holds_entries_in_memory_where_it_cannot_make_its_file(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    spool = module.Spool(str(blocker / "state"))
    spool.add(("codex", "codex-a.json"), entry_at(0))
    spool.add(("codex", "codex-b.json"), entry_at(1))
    assert spool.entries([("codex", "codex-a.json"), ("codex", "codex-x.json")]) == {
        ("codex", "codex-a.json"): entry_at(0)}
    target = module.StateStore(str(tmp_path / "state"))
    target.save(spool)
    spool.close()
    assert target.load() == {("codex", "codex-a.json"): entry_at(0),
                             ("codex", "codex-b.json"): entry_at(1)}
    with caplog.at_level(logging.WARNING):
        module.StateStore(str(blocker / "state")).save(spool)  # closed and empty: no write
    assert caplog.records == []


def spool_without_memory(monkeypatch):
    """Spools made from now on write each line to their file as it comes, as they all did
    before they held their lines in memory up to a bound."""
    monkeypatch.setattr(state_file, "SPOOL_MEMORY", 0)
    monkeypatch.setattr(state_file, "SPOOL_FIRST_LINES", 0)


def test_spool_holds_an_entry_it_cannot_write_and_reads_back_the_others(tmp_path, monkeypatch):
    spool_without_memory(monkeypatch)
    spool = module.Spool(str(tmp_path / "state"))
    spool.add(("codex", "codex-a.json"), entry_at(0))
    real = state_file._write_at

    def full(fd, data, offset):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(state_file, "_write_at", full)
    spool.add(("codex", "codex-b.json"), entry_at(1))
    monkeypatch.setattr(state_file, "_write_at", real)
    spool.add(("codex", "codex-c.json"), entry_at(2))
    try:
        assert spool.entries([("codex", "codex-%s.json" % x) for x in "abc"]) == {
            ("codex", "codex-a.json"): entry_at(0), ("codex", "codex-b.json"): entry_at(1),
            ("codex", "codex-c.json"): entry_at(2)}
    finally:
        spool.close()


def test_spool_closed_before_its_save_logs_and_writes_nothing(tmp_path, caplog):
    store = module.StateStore(str(tmp_path / "state"))
    saved(store, "codex-k.json")
    before = (tmp_path / "state" / "state.json").read_bytes()
    spool = module.Spool(store.directory)
    spool.add(("codex", "codex-a.json"), entry_at(0))
    names = spool.names()
    spool.close()
    with pytest.raises(KeyError):
        spool.member("codex/codex-a.json")
    # A save that began before the close: its lines can no longer be read.
    spool._members, spool._fd = {"codex/codex-a.json": 10}, None
    with caplog.at_level(logging.WARNING):
        store._write(names, spool.member)
    assert "Cannot write the state file" in caplog.text
    assert (tmp_path / "state" / "state.json").read_bytes() == before


def test_spool_shorter_than_what_was_written_is_an_error(tmp_path, caplog, monkeypatch):
    spool_without_memory(monkeypatch)
    store = module.StateStore(str(tmp_path / "state"))
    spool = module.Spool(store.directory)
    spool.add(("codex", "codex-a.json"), entry_at(0))
    try:
        os.ftruncate(spool._fd, 5)
        with pytest.raises(OSError, match="shorter"):
            spool.member("codex/codex-a.json")
        with caplog.at_level(logging.WARNING):
            store.save(spool)
        assert "Cannot write the state file" in caplog.text
        assert not (tmp_path / "state" / "state.json").exists()
    finally:
        spool.close()


def test_tracker_refresh_reads_the_file_again_when_an_unsaved_spool_is_saved_meanwhile(tmp_path):
    fetcher = ScriptedFetcher()
    with tracker_with(fetcher, tmp_path) as tracker:
        cooling = module.next_state(module.next_state(None, NOW, windows=[WINDOW]),
                                    datetime.now(timezone.utc).replace(microsecond=0),
                                    rate_limited=True)
        key = module.state_key(account())

        class SavedMeanwhile(module.Spool):
            """A finished batch's spool whose save ends while the refresh reads it."""

            def entries(self, keys):
                tracker.state.save(self)
                tracker._unsaved.remove(self)
                self.close()
                return super().entries(keys)
        spool = SavedMeanwhile(tracker.state.directory)
        spool.add(key, cooling)
        tracker._unsaved.append(spool)
        stored = tracker._stored_entries([account()])
        try:
            assert stored.pop(key) == cooling  # from the file the spool was saved to
        finally:
            stored.close()
    assert fetcher.calls == 0


# --- a save that replaces every line of the file it started from ------------------------------

def later(*names, hours=1):
    """New entries for `names`, an hour after the saved ones."""
    return [(("codex", name), module.next_state(None, NOW + timedelta(hours=hours),
                                                windows=[WINDOW])) for name in names]


@pytest.fixture
def reads(monkeypatch):
    """How many times a save read the state file (StateStore._each_member)."""
    count = []
    real = module.StateStore._each_member

    def each_member(self, *args, **kwargs):
        count.append(1)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(module.StateStore, "_each_member", each_member)
    return count


def seen_after_saving(store, *names):
    """Save entries for `names`, then return the file as StoredEntries saw it."""
    saved(store, *names)
    entries = store.open_entries()
    entries.close()
    return entries.seen


def test_a_save_replacing_every_line_of_the_unchanged_file_does_not_read_it(tmp_path, reads):
    store = module.StateStore(str(tmp_path / "state"))
    seen = seen_after_saving(store, "codex-a.json", "codex-b.json")
    assert seen.names == {"codex/codex-a.json", "codex/codex-b.json"}
    del reads[:]
    store.save(later("codex-a.json", "codex-b.json", "codex-c.json"), seen)
    assert reads == []
    shortcut = (tmp_path / "state" / "state.json").read_bytes()
    # The same bytes as a save that reads the file first.
    other = module.StateStore(str(tmp_path / "other"))
    saved(other, "codex-a.json", "codex-b.json")
    del reads[:]
    other.save(later("codex-a.json", "codex-b.json", "codex-c.json"))
    assert reads == [1]
    assert (tmp_path / "other" / "state.json").read_bytes() == shortcut
    assert set(store.load()) == {("codex", "codex-a.json"), ("codex", "codex-b.json"),
                                 ("codex", "codex-c.json")}


@pytest.mark.parametrize("meanwhile", ["another save", "an edit in place", "a symlink"])
def test_a_file_changed_since_it_was_read_is_read_again_and_its_lines_kept(
        tmp_path, reads, meanwhile):
    store = module.StateStore(str(tmp_path / "state"))
    seen = seen_after_saving(store, "codex-a.json")
    path = tmp_path / "state" / "state.json"
    if meanwhile == "another save":  # another process: a new file, with one more account
        saved(module.StateStore(str(tmp_path / "state")), "codex-a.json", "codex-z.json")
    elif meanwhile == "an edit in place":  # the same inode, one more line
        saved(module.StateStore(str(tmp_path / "copy")), "codex-a.json", "codex-z.json")
        data = (tmp_path / "copy" / "state.json").read_bytes()
        with open(path, "r+b") as handle:
            handle.write(data)
    else:  # the name now a symlink to a file of the same stamp's size: refused, not followed
        os.rename(path, tmp_path / "state" / "moved.json")
        os.symlink("moved.json", path)
    del reads[:]
    store.save(later("codex-a.json"), seen)
    assert reads == [1]
    stored = store.load()
    if meanwhile == "a symlink":
        assert not path.is_symlink() and set(stored) == {("codex", "codex-a.json")}
    else:
        assert set(stored) == {("codex", "codex-a.json"), ("codex", "codex-z.json")}
    assert stored[("codex", "codex-a.json")].fetched_at == NOW + timedelta(hours=1)


def test_an_edit_in_place_of_the_same_size_is_seen_by_its_times(tmp_path, reads):
    # Another account's name written over one of the same length: only the file's times say
    # it changed (set a second on here: a coarse clock could give the edit the same moment).
    store = module.StateStore(str(tmp_path / "state"))
    seen = seen_after_saving(store, "codex-a.json", "codex-b.json")
    path = tmp_path / "state" / "state.json"
    info = os.stat(path)
    data = path.read_bytes()
    with open(path, "r+b") as handle:
        handle.write(data.replace(b'"codex/codex-b.json"', b'"codex/codex-z.json"', 1))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    assert os.stat(path).st_size == info.st_size
    del reads[:]
    store.save(later("codex-a.json", "codex-b.json"), seen)
    assert reads == [1]
    assert set(store.load()) == {("codex", "codex-a.json"), ("codex", "codex-b.json"),
                                 ("codex", "codex-z.json")}


def test_a_save_that_leaves_a_line_of_the_file_reads_it_and_keeps_it(tmp_path, reads):
    store = module.StateStore(str(tmp_path / "state"))
    seen = seen_after_saving(store, "codex-a.json", "codex-b.json")
    del reads[:]
    store.save(later("codex-a.json"), seen)
    assert reads == [1]
    assert set(store.load()) == {("codex", "codex-a.json"), ("codex", "codex-b.json")}


def test_a_file_too_large_to_keep_has_no_names_seen(tmp_path, monkeypatch):
    monkeypatch.setattr(module, "HELD_STATE_BYTES", 0)
    store = module.StateStore(str(tmp_path / "state"))
    saved(store, "codex-a.json")
    entries = store.open_entries()
    try:
        assert entries.seen is None
    finally:
        entries.close()


def test_a_refresh_of_every_stored_account_saves_without_reading_the_file_again(tmp_path,
                                                                                 reads):
    # Two runs, as cron makes them (the first one's save is over when the second starts).
    fetcher = ScriptedFetcher([WINDOW], [WINDOW])
    for _ in range(2):
        with tracker_with(fetcher, tmp_path) as tracker:
            tracker.refresh_and_wait([], [account()])
    assert reads == [1]  # the first save found no file it had seen
    assert ("claude", "claude-a@example.com.json") in \
        module.StateStore(str(tmp_path / "state")).load()


def test_make_directory_makes_missing_parents_and_refuses_a_file(tmp_path):
    store = module.StateStore(str(tmp_path / "a" / "b" / "state"))
    store.make_directory()
    store.make_directory()
    assert (tmp_path / "a" / "b" / "state").is_dir()
    assert os.stat(tmp_path / "a" / "b" / "state").st_mode & 0o777 == 0o700 & ~_umask()
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError):
        module.StateStore(str(tmp_path / "file")).make_directory()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
