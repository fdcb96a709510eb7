"""lockout: rejected management keys remembered by fingerprint, for an hour or until the key
file changes."""
import json
import os
from datetime import datetime, timedelta, timezone

import pytest
from freezegun import freeze_time

from oauth_usage_tracker import lockout as module

KEY = "cpa-UNITlockoutKEYnotREAL-0123"
URL = "https://cpa.example.net:8317"
NOW = datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def fresh_memory():
    module.clear_memory()
    yield
    module.clear_memory()


def test_fingerprint_depends_on_url_and_key_and_hides_the_key():
    print_ = module.fingerprint(URL, KEY)
    assert len(print_) == 64 and KEY not in print_
    assert print_ != module.fingerprint(URL + "/b", KEY)
    assert print_ != module.fingerprint(URL, KEY + "x")


@pytest.mark.parametrize("minutes, version, in_force", [
    (0, "v1", True), (59, "v1", True), (60, "v1", False), (5, "v2", False), (5, None, False),
])
def test_rejection_in_force_for_an_hour_unless_the_file_changes(tmp_path, minutes, version,
                                                                in_force):
    store = module.RejectedKeys(str(tmp_path))
    store.record("abc", module.Rejection(NOW, 401, "v1"))
    module.clear_memory()  # the next run is a new process
    found = store.find("abc", version, NOW + timedelta(minutes=minutes))
    assert (found is not None) is in_force


def test_record_writes_only_the_fingerprint_with_mode_0600(tmp_path):
    store = module.RejectedKeys(str(tmp_path / "state"))
    print_ = module.fingerprint(URL, KEY)
    store.record(print_, module.Rejection(NOW, 403, None))
    path = tmp_path / "state" / module.REJECTED_FILE
    text = path.read_text()
    assert KEY not in text and print_ in text
    assert json.loads(text)["rejected"][print_]["status"] == 403
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_forget_after_an_accepted_key(tmp_path):
    store = module.RejectedKeys(str(tmp_path))
    store.record("abc", module.Rejection(NOW, 401, None))
    store.forget("abc")
    module.clear_memory()
    assert store.find("abc", None, NOW) is None
    assert "abc" not in (tmp_path / module.REJECTED_FILE).read_text()


def test_without_a_directory_the_process_remembers(tmp_path):
    store = module.RejectedKeys(None)
    store.record("abc", module.Rejection(NOW, 401, None))
    assert module.RejectedKeys(None).find("abc", None, NOW) is not None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"rejected": []}',
                                     b'{"rejected": {"abc": {"at": "soon", "status": 401}}}'])
def test_damaged_file_remembers_nothing_and_is_rewritten(tmp_path, content):
    (tmp_path / module.REJECTED_FILE).write_bytes(content)
    store = module.RejectedKeys(str(tmp_path))
    assert store.find("abc", None, NOW) is None
    store.record("def", module.Rejection(NOW, 401, None))
    assert "def" in json.loads((tmp_path / module.REJECTED_FILE).read_text())["rejected"]


def test_unwritable_directory_is_a_warning_not_a_failure(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = module.RejectedKeys(str(blocker / "state"))
    store.record("abc", module.Rejection(NOW, 401, None))
    assert "Cannot write" in caplog.text
    assert store.find("abc", None, NOW) is not None  # still remembered in this process


def test_old_entries_are_pruned_on_write(tmp_path):
    store = module.RejectedKeys(str(tmp_path))
    store.record("old", module.Rejection(NOW - timedelta(days=2), 401, None))
    store.record("new", module.Rejection(NOW, 401, None))
    assert set(json.loads((tmp_path / module.REJECTED_FILE).read_text())["rejected"]) == {"new"}


@freeze_time("2026-11-30 08:00:00")
def test_until_is_an_hour_after_the_rejection():
    rejection = module.Rejection(datetime.now(timezone.utc), 401)
    assert rejection.until == NOW + timedelta(hours=1)
