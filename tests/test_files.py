"""Capped reads and atomic replacement (SPEC §3, §6, §8): temp names match no reader's glob."""
import os
import stat

import pytest

from oauth_usage_tracker import files as module


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# --- read_capped ---------------------------------------------------------------------------------

def test_read_capped_under_limit_gives_bytes(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b'{"type":"claude"}')
    assert module.read_capped(str(path), 1024) == b'{"type":"claude"}'


def test_read_capped_exactly_limit_gives_bytes(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b"x" * 100)
    assert module.read_capped(str(path), 100) == b"x" * 100


def test_read_capped_one_byte_over_limit_raises_file_too_large(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b"x" * 101)
    with pytest.raises(module.FileTooLarge):
        module.read_capped(str(path), 100)


def test_read_capped_over_one_mib_names_the_cap(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b" " * (1024 * 1024 + 1))
    with pytest.raises(module.FileTooLarge) as caught:
        module.read_capped(str(path), 1024 * 1024)
    assert "1024 KiB" in str(caught.value)


def test_read_capped_empty_file_gives_empty_bytes(tmp_path):
    path = tmp_path / "empty.json"
    path.write_bytes(b"")
    assert module.read_capped(str(path), 10) == b""


def test_file_too_large_is_an_os_error():
    assert issubclass(module.FileTooLarge, OSError)


def test_read_capped_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        module.read_capped(str(tmp_path / "missing.json"), 10)


def test_read_capped_accepts_path_objects(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"\x00\xff")
    assert module.read_capped(path, 2) == b"\x00\xff"


# --- atomic_write --------------------------------------------------------------------------------

def test_atomic_write_new_file_gives_content_and_mode_0600(tmp_path):
    path = tmp_path / "claude-a@example.com.json"
    module.atomic_write(str(path), b'{"a":1}')
    assert path.read_bytes() == b'{"a":1}'
    assert mode_of(path) == 0o600


def test_atomic_write_new_file_ignores_a_permissive_umask(tmp_path):
    path = tmp_path / "new.json"
    old = os.umask(0o000)
    try:
        module.atomic_write(str(path), b"data")
    finally:
        os.umask(old)
    assert mode_of(path) == 0o600


def test_atomic_write_new_file_uses_given_default_mode(tmp_path):
    path = tmp_path / "report.prom"
    module.atomic_write(str(path), b"metric 1\n", default_mode=0o644)
    assert mode_of(path) == 0o644


@pytest.mark.parametrize("existing_mode", [0o640, 0o600, 0o644, 0o400])
def test_atomic_write_existing_file_keeps_its_mode(tmp_path, existing_mode):
    path = tmp_path / "claude-a@example.com.json"
    path.write_bytes(b"old")
    os.chmod(path, existing_mode)
    module.atomic_write(str(path), b"new content", default_mode=0o600)
    assert path.read_bytes() == b"new content"
    assert mode_of(path) == existing_mode


def test_atomic_write_existing_file_is_replaced_not_rewritten_in_place(tmp_path):
    # A reader holding the old inode (CLIProxyAPI mid-read) keeps the whole old file.
    path = tmp_path / "claude-a@example.com.json"
    path.write_bytes(b"old content")
    old_inode = os.stat(path).st_ino
    with open(path, "rb") as reader:
        module.atomic_write(str(path), b"new")
        assert reader.read() == b"old content"
    assert os.stat(path).st_ino != old_inode
    assert path.read_bytes() == b"new"


def test_atomic_write_leaves_no_other_file_in_directory(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b"old")
    module.atomic_write(str(path), b"new")
    module.atomic_write(str(path), b"newer")
    assert sorted(os.listdir(tmp_path)) == ["a.json"]


def test_atomic_write_accepts_empty_and_binary_data(tmp_path):
    path = tmp_path / "a.bin"
    module.atomic_write(str(path), b"")
    assert path.read_bytes() == b""
    payload = bytes(range(256)) * 10
    module.atomic_write(str(path), payload)
    assert path.read_bytes() == payload


@pytest.mark.parametrize("name", ["claude-alice@example.com.json", "oauth_usage.prom",
                                  "report.json", "metrics.prom"])
def test_atomic_write_temp_file_name_matches_no_reader_glob(tmp_path, monkeypatch, name):
    seen = []
    real_replace = os.replace

    def spying_replace(source, target, **dir_fds):
        # Names relative to the directory's descriptor (the only one open here: tmp_path).
        seen.append((os.path.join(tmp_path, source), os.path.join(tmp_path, target),
                     sorted(os.listdir(tmp_path))))
        return real_replace(source, target, **dir_fds)

    monkeypatch.setattr(os, "replace", spying_replace)
    path = tmp_path / name
    module.atomic_write(str(path), b"data")
    assert len(seen) == 1
    source, target, listing = seen[0]
    temp_name = os.path.basename(source)
    assert os.path.dirname(os.path.abspath(source)) == str(tmp_path)
    assert os.path.abspath(target) == str(path)
    assert temp_name != name
    assert not temp_name.endswith(".json")
    assert not temp_name.endswith(".prom")
    # The temp file is the only entry while it is being written, and it is complete then.
    assert listing == [temp_name]
    assert path.read_bytes() == b"data"


def test_atomic_write_temp_file_is_complete_and_fsynced_before_replace(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def spying_fsync(fd):
        events.append("fsync")
        return real_fsync(fd)

    def spying_replace(source, target, **dir_fds):
        with open(tmp_path / source, "rb") as handle:
            events.append(("replace", handle.read(), mode_of(tmp_path / source)))
        return real_replace(source, target, **dir_fds)

    monkeypatch.setattr(os, "fsync", spying_fsync)
    monkeypatch.setattr(os, "replace", spying_replace)
    path = tmp_path / "a.json"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    module.atomic_write(str(path), b"new data")
    replace_at = [i for i, e in enumerate(events) if isinstance(e, tuple)]
    assert len(replace_at) == 1
    assert "fsync" in events[:replace_at[0]]
    assert events[replace_at[0]][1:] == (b"new data", 0o640)


def test_atomic_write_replace_fails_leaves_old_file_and_no_stray_files(tmp_path, monkeypatch):
    path = tmp_path / "claude-a@example.com.json"
    path.write_bytes(b"old content")
    os.chmod(path, 0o640)

    def failing_replace(source, target, **dir_fds):
        assert os.path.exists(tmp_path / source)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        module.atomic_write(str(path), b"new content")
    assert sorted(os.listdir(tmp_path)) == ["claude-a@example.com.json"]
    assert path.read_bytes() == b"old content"
    assert mode_of(path) == 0o640


def test_atomic_write_fsync_fails_leaves_no_stray_files(tmp_path, monkeypatch):
    path = tmp_path / "a.prom"

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        module.atomic_write(str(path), b"metric 1\n")
    assert os.listdir(tmp_path) == []


def test_atomic_write_interrupted_leaves_no_stray_files(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    path.write_bytes(b"old")

    def interrupted_replace(source, target, **dir_fds):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        module.atomic_write(str(path), b"new")
    assert os.listdir(tmp_path) == ["a.json"]
    assert path.read_bytes() == b"old"


def test_atomic_write_missing_directory_raises_os_error(tmp_path):
    with pytest.raises(OSError):
        module.atomic_write(str(tmp_path / "missing" / "a.json"), b"x")
    assert os.listdir(tmp_path) == []


def test_atomic_write_relative_path_writes_in_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module.atomic_write("rel.json", b"x")
    assert (tmp_path / "rel.json").read_bytes() == b"x"
    assert os.listdir(tmp_path) == ["rel.json"]


def test_atomic_write_chunks_are_written_in_order_as_one_file(tmp_path):
    path = tmp_path / "report.json"
    chunks = (piece.encode("utf-8") for piece in ["{", '"a": 1', ", ", '"b": "\u00e9"', "}"])
    module.atomic_write(str(path), chunks, default_mode=0o644)
    assert path.read_bytes() == '{"a": 1, "b": "\u00e9"}'.encode("utf-8")
    assert mode_of(path) == 0o644


def test_atomic_write_chunks_that_raise_midway_leave_the_old_file(tmp_path):
    path = tmp_path / "report.json"
    path.write_bytes(b"old")

    def chunks():
        yield b"new, part one"
        raise RuntimeError("the renderer failed")

    with pytest.raises(RuntimeError):
        module.atomic_write(str(path), chunks())
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["report.json"]


def test_atomic_write_gathers_small_chunks_into_writes_of_write_size(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    chunks = [bytes([65 + n % 26]) * 1000 for n in range(200)]  # a state file: a chunk a line
    sizes = []
    real_write = os.write

    def counting_write(fd, data):
        sizes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting_write)
    module.atomic_write(str(path), iter(chunks))
    assert path.read_bytes() == b"".join(chunks)
    assert len(sizes) == 4 and all(size >= module.WRITE_SIZE for size in sizes[:-1])


@pytest.mark.parametrize("lengths", [[], [0], [1, 0, 2], [65536], [65535, 1, 1],
                                     [70000, 3, 65533, 5], [10] * 7000])
def test_gathered_keeps_every_byte_in_order_in_pieces_of_write_size(lengths):
    chunks = [bytes([n % 251]) * length for n, length in enumerate(lengths)]
    pieces = list(module._gathered(iter(chunks)))
    assert b"".join(pieces) == b"".join(chunks)
    assert all(len(piece) >= module.WRITE_SIZE for piece in pieces[:-1])
    assert len(pieces) <= 1 + sum(lengths) // module.WRITE_SIZE


def test_atomic_write_sets_attributes_made_from_the_data_before_the_rename(tmp_path):
    path = tmp_path / "state.json"
    written = []

    def chunks():
        for chunk in (b"one\n", b"two\n"):
            written.append(chunk)
            yield chunk

    def attributes():
        return {"user.test": b"".join(written)}  # asked for once every chunk is written

    module.atomic_write(str(path), chunks(), attributes=attributes)
    try:
        value = os.getxattr(path, "user.test")
    except OSError:
        pytest.skip("this file system keeps no user attributes")
    assert value == b"one\ntwo\n"
    with open(path, "rb") as handle:
        assert module.read_attribute(handle.fileno(), "user.test") == b"one\ntwo\n"
        assert module.read_attribute(handle.fileno(), "user.absent") is None


def test_atomic_write_without_attribute_support_writes_the_file_without_them(tmp_path,
                                                                              monkeypatch):
    path = tmp_path / "state.json"

    def refused(*_args):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", refused)
    module.atomic_write(str(path), [b"data"], attributes=lambda: {"user.test": b"x"})
    assert path.read_bytes() == b"data"
    monkeypatch.delattr(os, "setxattr")
    monkeypatch.delattr(os, "getxattr")
    module.atomic_write(str(path), [b"more"], attributes=lambda: {"user.test": b"x"})
    assert path.read_bytes() == b"more"
    with open(path, "rb") as handle:
        assert module.read_attribute(handle.fileno(), "user.test") is None


# --- write_output, in process (the script's runs through it are in integration/) -------------

def test_write_output_new_file_gets_exactly_the_new_mode_whatever_the_umask(tmp_path):
    target = tmp_path / "report.json"
    old = os.umask(0o077)
    try:
        module.write_output(str(target), b"{}", 0o640)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"{}"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_write_output_existing_regular_file_is_replaced_and_keeps_its_mode(tmp_path):
    target = tmp_path / "m.prom"
    target.write_bytes(b"old")
    target.chmod(0o600)
    inode = target.stat().st_ino
    module.write_output(str(target), iter([b"a", b"b"]), 0o644)
    assert target.read_bytes() == b"ab"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.stat().st_ino != inode  # replaced, not written into


def test_write_output_into_a_fifo_with_a_reader_writes_every_chunk(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        module.write_output(str(fifo), [b"one ", b"two"], 0o644)
        assert os.read(reader, 100) == b"one two"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_write_output_fifo_nobody_reads_is_an_error_not_a_hang(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="nothing is reading"):
        module.write_output(str(fifo), b"x", 0o644)


def test_write_output_directory_is_an_error(tmp_path):
    with pytest.raises(IsADirectoryError):
        module.write_output(str(tmp_path), b"x", 0o644)


def test_write_output_link_in_a_private_directory_is_followed(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    real = tmp_path / "real.json"
    real.write_bytes(b"old")
    (private / "link.json").symlink_to(real)
    module.write_output(str(private / "link.json"), b"new", 0o644)
    assert real.read_bytes() == b"new"
    assert (private / "link.json").is_symlink()


def test_write_output_link_in_a_shared_directory_is_replaced_never_followed(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (shared / "m.prom").symlink_to(victim)
    module.write_output(str(shared / "m.prom"), b"metrics", 0o644)
    assert victim.read_bytes() == b"keep"
    assert not (shared / "m.prom").is_symlink()
    assert (shared / "m.prom").read_bytes() == b"metrics"


def test_write_output_link_to_nowhere_in_a_private_directory_is_an_error(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "a").symlink_to(private / "b")
    (private / "b").symlink_to(private / "a")
    with pytest.raises(OSError):
        module.write_output(str(private / "a"), b"x", 0o644)
