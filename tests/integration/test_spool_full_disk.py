"""A refresh's spool on a full disk: a real, small tmpfs (the `disk` of the refresh's full-disk
test), filled up to leave a few pages. The writes that find no room keep their lines in
memory, the ones before them stay in the file, and the save writes every entry."""
import logging

import pytest
from test_refresh_full_disk import PAGE, disk, fill  # noqa: F401 (disk: the fixture)
from test_state_file import entry, filled, key, saved_bytes, where

from oauth_usage_tracker import state, state_file


def test_spool_on_a_full_disk_holds_what_it_cannot_write_and_saves_every_entry(
        disk, tmp_path, monkeypatch, caplog):  # noqa: F811 (the fixture imported above)
    if disk is None:
        pytest.skip("covered by test_state_file's injected ENOSPC")
    monkeypatch.setattr(state_file, "SPOOL_MEMORY", 8 * 1024)
    monkeypatch.setattr(state_file, "SPOOL_FIRST_LINES", 0)
    directory = disk / "state"
    directory.mkdir()
    fill(disk, 4 * PAGE)
    keys = [key(n) for n in range(60)]  # about 60 KB of lines: room for a quarter of them
    with caplog.at_level(logging.DEBUG, logger="oauth_usage_tracker"):
        spool = filled(directory, keys)
    try:
        in_memory, in_file = where(spool)
        print("in memory, in the file:", in_memory, in_file)
        assert in_memory and in_file and in_memory + in_file == len(keys)
        assert "No space left on device" in caplog.text
        assert spool.entries(keys) == {k: entry(n) for n, k in enumerate(keys)}
        result = saved_bytes(tmp_path / "a", spool)
    finally:
        spool.close()
    assert result == saved_bytes(tmp_path / "b", [(k, entry(n)) for n, k in enumerate(keys)])
    assert state.StateStore(str(tmp_path / "a")).load() == {
        k: entry(n) for n, k in enumerate(keys)}
