"""The spool of a refresh's new entries (state_file.Spool): its lines held in memory up to a
bound, then written to its unnamed file in pieces and read back in blocks (issue 19: fewer
system calls per account), with the state file it saves the same wherever its lines are."""
import errno
import logging
import os
import random
from datetime import datetime, timedelta, timezone

import pytest

from oauth_usage_tracker import state
from oauth_usage_tracker import state_file as module
from oauth_usage_tracker.models import UsageWindow

NOW = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)


def entry(n, hours=0):
    """A new entry of about a kilobyte (three windows, as a Claude account's), `n` in it."""
    moment = NOW + timedelta(hours=hours)
    windows = [UsageWindow("five_hour", "5-hour", float(n % 100), moment + timedelta(hours=3)),
               UsageWindow("seven_day", "7-day", 12.5, moment + timedelta(days=3)),
               UsageWindow("seven_day_opus", "7-day Opus", 3.0, moment + timedelta(days=4))]
    return state.next_state(None, moment, windows=windows)


def key(n, provider="claude"):
    return (provider, "%s-%05d@example.com.json" % (provider, n))


def as_finished(keys, seed=19):
    """`keys` in the order a refresh's workers finish them: the order they were taken, each a
    few dozen places early or late at most (32 workers)."""
    rng = random.Random(seed)
    return [k for _, k in sorted((n + rng.uniform(0, 32), k) for n, k in enumerate(keys))]


def filled(directory, keys, hours=0):
    spool = module.Spool(str(directory))
    for n, k in enumerate(keys):
        spool.add(k, entry(n, hours))
    return spool


@pytest.fixture(autouse=True)
def no_first_lines(monkeypatch):
    """Every line goes to the buffer (and the file past it), as these tests count: the first
    lines held as they are (SPOOL_FIRST_LINES) have tests of their own, which set it back."""
    monkeypatch.setattr(module, "SPOOL_FIRST_LINES", 0)


def saved_bytes(directory, changes):
    store = state.StateStore(str(directory))
    store.save(changes)
    with open(store.path, "rb") as handle:
        return handle.read(), os.getxattr(store.path, module.SEAL_ATTRIBUTE)


def where(spool):
    """How many of the spool's lines are in memory (its buffer, or held), and how many in its
    file."""
    in_file = sum(isinstance(place, int) and (place >> 32) < spool._size
                  for place in spool._members.values())
    return len(spool._members) - in_file, in_file


class SystemCalls:
    """Counts the reads and writes at an offset (os.pread, os.pwrite): the spool's file's."""

    def __init__(self, monkeypatch):
        self.counts = {"pread": 0, "pwrite": 0}
        for name in self.counts:
            monkeypatch.setattr(os, name, self._counted(name, getattr(os, name)))

    def _counted(self, name, call):
        def counted(*args):
            self.counts[name] += 1
            return call(*args)
        return counted


def test_spool_below_the_bound_holds_its_lines_in_memory_and_makes_no_file(tmp_path,
                                                                          monkeypatch):
    finished = as_finished([key(n, "codex") for n in range(100)] + [key(n) for n in range(100)])
    calls = SystemCalls(monkeypatch)
    spool = filled(tmp_path / "state", finished)
    try:
        assert spool._fd is None and where(spool) == (200, 0)
        assert not (tmp_path / "state").exists()  # no file, not even its directory
        assert spool.entries([key(3), key(999)]) == {key(3): entry(finished.index(key(3)))}
        memory = saved_bytes(tmp_path / "a", spool)
    finally:
        spool.close()
    assert calls.counts == {"pread": 0, "pwrite": 0}
    assert memory == saved_bytes(tmp_path / "b", [(k, entry(n)) for n, k in enumerate(finished)])


def test_spool_past_the_bound_saves_the_bytes_an_all_memory_and_an_all_file_spool_save(
        tmp_path, monkeypatch):
    keys = as_finished([key(n) for n in range(190)] + [key(n, "codex") for n in range(190)])
    crossing = filled(tmp_path / "crossing", keys)
    monkeypatch.setattr(module, "SPOOL_MEMORY", 0)  # every line its own write, as before
    in_file = filled(tmp_path / "file", keys)
    monkeypatch.setattr(module, "SPOOL_MEMORY", 4 << 20)
    in_memory = filled(tmp_path / "memory", keys)
    try:
        in_crossing = where(crossing)
        assert in_crossing[0] and in_crossing[1] and sum(in_crossing) == 380  # both sides
        assert where(in_file) == (0, 380) and where(in_memory) == (380, 0)
        results = [saved_bytes(tmp_path / name, spool) for name, spool in
                   (("a", crossing), ("b", in_file), ("c", in_memory))]
        assert list(crossing) == list(in_file) == list(in_memory)
    finally:
        for spool in (crossing, in_file, in_memory):
            spool.close()
    direct = saved_bytes(tmp_path / "d", [(k, entry(n)) for n, k in enumerate(keys)])
    assert results == [direct] * 3


def test_spool_a_later_entry_replaces_the_earlier_on_either_side_of_the_bound(tmp_path):
    keys = [key(n) for n in range(380)]
    spool = filled(tmp_path / "state", keys)
    try:
        first, last = module.key_to_name(keys[0]), module.key_to_name(keys[-1])
        assert spool._members[first] >> 32 < spool._size     # in the file
        assert spool._members[last] >> 32 >= spool._size     # in the buffer
        used = spool._used
        spool.add(keys[0], entry(0, hours=5))    # in the file: the new line goes to the buffer
        spool.add(keys[-1], entry(379, hours=5))  # in the buffer: the new line after it
        assert spool._used == used + len(spool.member(first)) + len(spool.member(last))
        assert spool._members[first] >> 32 >= spool._size
        for n in range(380, 700):  # enough for another write: both new lines go to the file
            spool.add(key(n), entry(n))
        assert spool._members[last] >> 32 < spool._size
        assert len(spool) == 700
        found = spool.entries([keys[0], keys[1], keys[-1]])
        assert found == {keys[0]: entry(0, hours=5), keys[1]: entry(1),
                         keys[-1]: entry(379, hours=5)}
        result = saved_bytes(tmp_path / "a", spool)
    finally:
        spool.close()
    changes = {k: entry(n) for n, k in enumerate(keys + [key(n) for n in range(380, 700)])}
    changes[keys[0]], changes[keys[-1]] = entry(0, hours=5), entry(379, hours=5)
    assert result == saved_bytes(tmp_path / "b", list(changes.items()))


def test_spool_entries_reads_lines_on_both_sides_of_the_bound_and_none_once_closed(tmp_path):
    keys = [key(n) for n in range(300)]
    spool = filled(tmp_path / "state", keys)
    in_memory, in_file = where(spool)
    assert in_memory and in_file
    wanted = keys[::7] + [key(999)]
    assert spool.entries(wanted) == {k: entry(keys.index(k)) for k in keys[::7]}
    spool.close()
    assert spool.entries(wanted) is None and len(spool) == 0
    spool.add(key(0), entry(0))  # after close: held, no buffer made again
    assert spool._buffer is None and spool.member(module.key_to_name(key(0))) == \
        module.member_bytes(module.key_to_name(key(0)), state.entry_to_json(entry(0)))


def test_spool_a_full_disk_at_a_write_holds_those_lines_and_writes_later_ones(tmp_path,
                                                                            monkeypatch, caplog):
    real = os.pwrite
    writes = []

    def full_once(fd, lines, offset):
        writes.append(len(lines))
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, lines, offset)
    monkeypatch.setattr(os, "pwrite", full_once)
    keys = [key(n) for n in range(1000)]
    with caplog.at_level(logging.DEBUG, logger="oauth_usage_tracker"):
        spool = module.Spool(str(tmp_path / "state"))
        for n, k in enumerate(keys):
            spool.add(k, entry(n, hours=5) if n == 301 else entry(n))
            if n == 301:  # replaced in the buffer whose write fails
                spool.add(keys[300], entry(300))
                spool.add(k, entry(n))
    try:
        assert len(writes) == 3  # the failed write's lines are held, the next ones written
        in_memory, in_file = where(spool)
        assert in_file > 500 and sum(isinstance(place, bytes) for place in
                                     spool._members.values()) > 250  # a buffer's lines
        assert ["Cannot spool state entries (%s); holding them"
                % OSError(errno.ENOSPC, "No space left on device")] == [
            r.getMessage() for r in caplog.records]
        assert spool.entries(keys) == {k: entry(n) for n, k in enumerate(keys)}
        result = saved_bytes(tmp_path / "a", spool)
    finally:
        spool.close()
    assert result == saved_bytes(tmp_path / "b", [(k, entry(n)) for n, k in enumerate(keys)])


def test_spool_where_no_file_can_be_made_holds_every_line_past_the_bound(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    keys = [key(n) for n in range(400)]
    with caplog.at_level(logging.DEBUG, logger="oauth_usage_tracker"):
        spool = filled(blocker / "state", keys)
    try:
        assert where(spool) == (400, 0)
        assert len([r for r in caplog.records if "Cannot spool" in r.getMessage()]) == 1
        result = saved_bytes(tmp_path / "a", spool)
    finally:
        spool.close()
    assert result == saved_bytes(tmp_path / "b", [(k, entry(n)) for n, k in enumerate(keys)])


@pytest.mark.parametrize("accounts", [200, 2000])
def test_spool_past_the_bound_writes_and_reads_in_pieces_not_a_call_per_entry(tmp_path,
                                                                             monkeypatch,
                                                                             accounts):
    """The system calls of a spool that filled its buffer a few times (200 accounts, a 64 KiB
    buffer; 2,000 accounts), and of its save: one write per buffer, one read per 64 KiB, where
    there were two system calls per account."""
    if accounts == 200:
        monkeypatch.setattr(module, "SPOOL_MEMORY", 64 * 1024)
    half = accounts // 2
    keys = as_finished([key(n, "codex") for n in range(half)] +
                       [key(n) for n in range(accounts - half)])
    calls = SystemCalls(monkeypatch)
    spool = filled(tmp_path / "state", keys)
    try:
        size = spool._size
        assert where(spool)[1] > accounts // 2  # most lines are in the file
        written = calls.counts["pwrite"]
        saved_bytes(tmp_path / "state", spool)
    finally:
        spool.close()
    assert written == -(-size // module.SPOOL_MEMORY)  # each full buffer, in one write
    assert calls.counts["pwrite"] == written  # the save writes its file with write()
    # Each block once, or twice where the two providers' lines meet (the save reads one
    # provider's lines, then the other's).
    assert calls.counts["pread"] <= -(-size // module.SPOOL_BLOCK) + 2
    assert written + calls.counts["pread"] < accounts / 10


@pytest.mark.parametrize("block", [1000, 4096, 64 * 1024])
def test_spool_reads_every_line_back_whatever_the_order_and_the_block_size(tmp_path, monkeypatch,
                                                                          block):
    """Lines asked for in no particular order, blocks smaller than a line (one line from two or
    three blocks) or holding dozens: each line is the one written."""
    monkeypatch.setattr(module, "SPOOL_MEMORY", 0)
    monkeypatch.setattr(module, "SPOOL_BLOCK", block)
    keys = [key(n) for n in range(150)]
    spool = filled(tmp_path / "state", keys)
    try:
        shuffled = keys[:]
        random.Random(7).shuffle(shuffled)
        for k in shuffled:
            assert spool.member(module.key_to_name(k)) == module.member_bytes(
                module.key_to_name(k), state.entry_to_json(entry(keys.index(k))))
        assert len(spool._blocks) <= module.SPOOL_BLOCKS
    finally:
        spool.close()


def test_spool_a_short_write_has_its_rest_written(tmp_path, monkeypatch):
    """A write that the system takes only part of (a signal, a file system's limit) goes on
    from where it stopped, in as many writes as it takes."""
    monkeypatch.setattr(module, "SPOOL_MEMORY", 16 * 1024)
    real = os.pwrite
    written = []

    def short(fd, data, offset):
        written.append(min(len(data), 1000))
        return real(fd, bytes(data[:1000]), offset)
    monkeypatch.setattr(os, "pwrite", short)
    keys = [key(n) for n in range(100)]
    spool = filled(tmp_path / "state", keys)
    monkeypatch.setattr(os, "pwrite", real)
    try:
        assert where(spool)[1] > 60 and len(written) > 60  # 16 KiB in pieces of 1,000 bytes
        assert spool.entries(keys) == {k: entry(n) for n, k in enumerate(keys)}
    finally:
        spool.close()


def test_spool_of_a_few_lines_holds_them_without_a_buffer_or_mmap(tmp_path, monkeypatch):
    monkeypatch.setattr(module, "SPOOL_FIRST_LINES", 8)
    keys = [key(n) for n in range(8)]
    few = filled(tmp_path / "few", keys)
    more = filled(tmp_path / "more", keys + [key(8), key(3)])  # the 9th starts the buffer
    try:
        assert few._buffer is None and few._fd is None and where(few) == (8, 0)
        assert all(isinstance(line, bytes) for line in few._members.values())
        assert more._buffer is not None and more._used and where(more) == (9, 0)
        assert sum(isinstance(line, bytes) for line in more._members.values()) == 7  # 3 replaced
        assert few.entries([key(2)]) == {key(2): entry(2)}
        assert more.entries([key(3)]) == {key(3): entry(9)}
        assert saved_bytes(tmp_path / "a", few) == \
            saved_bytes(tmp_path / "b", [(k, entry(n)) for n, k in enumerate(keys)])
        assert saved_bytes(tmp_path / "c", more) == saved_bytes(
            tmp_path / "d", [(k, entry(n)) for n, k in enumerate(keys + [key(8), key(3)])])
    finally:
        few.close()
        more.close()


def test_a_few_lines_spooled_and_saved_never_import_mmap(tmp_path):
    import subprocess
    import sys
    code = """
import sys
from oauth_usage_tracker import state, state_file
from oauth_usage_tracker.stored import AccountState
spool = state_file.Spool(sys.argv[1])
for n in range(state_file.SPOOL_FIRST_LINES):
    spool.add(("claude", "claude-%d.json" % n), AccountState())
state.StateStore(sys.argv[1]).save(spool)
spool.close()
assert state.StateStore(sys.argv[1]).load(), "nothing saved"
print("mmap" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_spool_whose_buffer_cannot_be_mapped_holds_its_lines(tmp_path, monkeypatch, caplog):
    # No memory map to be had (no memory, an address-space limit) for the first buffer: that
    # line is held as it is, the next gets the buffer, and every line is saved as it was.
    import logging
    import mmap
    real = mmap.mmap
    refused = []

    def mapped(*args, **kwargs):
        if not refused:
            refused.append(1)
            raise OSError(12, "Cannot allocate memory")
        return real(*args, **kwargs)
    monkeypatch.setattr(mmap, "mmap", mapped)
    keys = [key(n) for n in range(6)]
    with caplog.at_level(logging.DEBUG, logger="oauth_usage_tracker"):
        spool = filled(tmp_path / "state", keys)
    try:
        assert refused and isinstance(spool._members[state_file_name(keys[0])], bytes)
        assert spool._buffer is not None and where(spool) == (6, 0)
        assert [spool.entries([k])[k] for k in keys] == [entry(n) for n in range(6)]
        assert saved_bytes(tmp_path / "a", spool) == \
            saved_bytes(tmp_path / "b", [(k, entry(n)) for n, k in enumerate(keys)])
    finally:
        spool.close()
    assert "Cannot map a buffer for state entries" in caplog.text


def state_file_name(k):
    return module.key_to_name(k)
