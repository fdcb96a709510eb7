"""credentials: tolerant reads of credential files (SPEC §6); the writer is tested in test_refresh."""
import json
import os

import pytest

from oauth_usage_tracker import authdir
from oauth_usage_tracker import credentials as module
from oauth_usage_tracker.errors import CredentialError

from support import CLAUDE_REFRESH, claude_credentials, preads, write_compact

USER_KEYS = dict(label="work account", priority=7, headers={"X-Team": "blue", "X-N": 2},
                 excluded_models=["claude-opus-4", "claude-haiku"], disable_cooling=True,
                 weight=1.0, note=None, prefix="", proxy_url="socks5://127.0.0.1:1080")


@pytest.fixture
def cred(tmp_path):
    """A compact Claude credential file as CLIProxyAPI writes it, with user keys."""
    return write_compact(tmp_path / "claude-alice@example.com.json",
                         claude_credentials(**USER_KEYS))


# --- read_json_object -----------------------------------------------------------------------


def test_read_json_object_returns_the_object(cred):
    assert module.read_json_object(str(cred)) == claude_credentials(**USER_KEYS)


def writer_finishes_after_first_read(monkeypatch, path, complete):
    """Make the first read of `path` see what is on disk now, and CLIProxyAPI's truncate-then-write
    finish right after it; return the list of bytes each read saw."""
    real_read = module.read_capped
    reads = []

    def read_then_writer_finishes(name, limit, directory=None):
        data = real_read(name, limit)
        reads.append(data)
        path.write_bytes(complete)
        return data

    monkeypatch.setattr(module, "read_capped", read_then_writer_finishes)
    return reads


@pytest.mark.parametrize("torn", [
    b"", b"   ",
    b'{"access_token":"sk-ant-oat01-abc",',          # cut between keys
    b'{"access_token":"sk-ant-oat01-abc","ty',       # cut inside a key
    b'{"access_token":"sk-ant-oat01-TESTacce',       # cut inside a token: the likeliest place
    b'{"disabled":fa',                               # cut inside a literal
    b'{"a": "\xc3',                                  # cut inside a UTF-8 sequence
])
def test_read_json_object_rereads_a_torn_file(tmp_path, monkeypatch, torn):
    path = tmp_path / "claude-x.json"
    path.write_bytes(torn)
    reads = writer_finishes_after_first_read(monkeypatch, path,
                                             json.dumps(claude_credentials()).encode())
    assert module.read_json_object(str(path), tries=5, pause=0.001) == claude_credentials()
    assert reads[0] == torn
    assert len(reads) == 2


def test_read_json_object_rereads_every_prefix_of_a_real_file(tmp_path, monkeypatch):
    """CLIProxyAPI truncates and rewrites in place: a reader can see any prefix of the file."""
    complete = json.dumps(claude_credentials(), separators=(",", ":"), sort_keys=True).encode()
    path = tmp_path / "claude-x.json"
    reads = writer_finishes_after_first_read(monkeypatch, path, complete)
    not_reread = []
    for cut in range(len(complete)):
        path.write_bytes(complete[:cut])
        del reads[:]
        try:
            module.read_json_object(str(path), tries=3, pause=0)
        except CredentialError as error:
            not_reread.append((cut, str(error)))
    assert not_reread == []


def test_read_json_object_gives_up_after_the_tries(tmp_path, monkeypatch):
    path = tmp_path / "claude-x.json"
    path.write_bytes(b"")
    real_read = module.read_capped
    reads = []
    monkeypatch.setattr(module, "read_capped",
                        lambda name, limit, *_: reads.append(1) or real_read(name, limit))
    with pytest.raises(CredentialError) as caught:
        module.read_json_object(str(path), tries=4, pause=0.001)
    assert str(caught.value) == "file is empty"
    assert len(reads) == 4


@pytest.mark.parametrize("content, reason", [
    (b"[1, 2, 3]", "not a JSON object"),
    (b'"just a string"', "not a JSON object"),
    (b"null", "not a JSON object"),
])
def test_read_json_object_valid_json_that_is_no_object_fails_at_once(tmp_path, monkeypatch,
                                                                     content, reason):
    path = tmp_path / "claude-x.json"
    path.write_bytes(content)
    real_read = module.read_capped
    reads = []
    monkeypatch.setattr(module, "read_capped",
                        lambda name, limit, *_: reads.append(1) or real_read(name, limit))
    with pytest.raises(CredentialError) as caught:
        module.read_json_object(str(path), tries=5, pause=0.001)
    assert str(caught.value) == reason
    assert len(reads) == 1


@pytest.mark.parametrize("content, reason", [
    (b"{garbage} and more text after it", "not valid JSON"),
    (b"\xff\xfe{}" + b" " * 20, "not UTF-8 text"),
])
def test_read_json_object_unparsable_file_is_reread_then_reported(tmp_path, monkeypatch,
                                                                  content, reason):
    # SPEC §3: "A file that does not parse is re-read (about 5 tries over half a second) before
    # it is reported as unreadable."
    path = tmp_path / "claude-x.json"
    path.write_bytes(content)
    real_read = module.read_capped
    reads = []
    monkeypatch.setattr(module, "read_capped",
                        lambda name, limit, *_: reads.append(1) or real_read(name, limit))
    with pytest.raises(CredentialError) as caught:
        module.read_json_object(str(path), tries=4, pause=0.001)
    assert str(caught.value) == reason
    assert len(reads) == 4


def test_read_json_object_file_over_one_mib_is_refused(tmp_path):
    path = tmp_path / "claude-x.json"
    path.write_bytes(b'{"a": "' + b"x" * (1024 * 1024) + b'"}')
    with pytest.raises(CredentialError) as caught:
        module.read_json_object(str(path))
    assert "larger than" in str(caught.value)


def test_read_json_object_missing_file_is_a_credential_error(tmp_path):
    with pytest.raises(CredentialError):
        module.read_json_object(str(tmp_path / "gone.json"))


# --- token_field ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "   ", 12, ["a"]])
def test_token_field_missing_or_blank_is_none(value):
    assert module.token_field({"access_token": value}, "access_token") is None


@pytest.mark.parametrize("value", ["abc\nX-Evil: 1", "abc def", "abc\tdef", "abc\r\n",
                                   "sk-ant-oat01-Evil\n", "sk-ant-oat01-Evil\u00e9"])
def test_token_field_refuses_characters_no_token_has_without_quoting_them(value):
    # A trailing newline too: http.client refuses it with a ValueError that quotes the header
    # (the token) and is no requests exception.
    with pytest.raises(CredentialError) as caught:
        module.token_field({"access_token": value}, "access_token")
    assert "Evil" not in str(caught.value)
    assert "abc" not in str(caught.value)


def test_token_field_returns_a_plain_token():
    assert module.token_field({"access_token": CLAUDE_REFRESH}, "access_token") == CLAUDE_REFRESH


@pytest.mark.parametrize("length", [0, 1, 245, 4096, 64 * 1024 + 3, 200_000])
@pytest.mark.parametrize("hint", ["exact", "smaller", "zero", "larger"])
def test_a_read_through_the_directory_gives_the_file_capped_whatever_size_it_was_told(
        tmp_path, length, hint):
    # The size fstat gave only shapes the reads: a file that grew (or shrank) since is still
    # read whole, up to one byte past the limit.
    data = bytes(index % 251 for index in range(length))
    (tmp_path / "x.json").write_bytes(data)
    size = {"exact": length, "smaller": length // 3, "zero": 0, "larger": length + 999}[hint]
    for limit in (100, 150_000, 1024 * 1024):
        with authdir.AuthDirectory(str(tmp_path)) as auth:
            fd, _ = auth.open_regular("x.json")
            try:
                assert auth.read(fd, limit, size) == data[:limit + 1]
            finally:
                os.close(fd)


def test_a_credential_file_is_read_without_a_buffer_the_size_of_the_limit(tmp_path, monkeypatch):
    path = tmp_path / "claude-a.json"
    write_compact(path, claude_credentials())
    asked = preads(monkeypatch, authdir.os)
    data = module.read_capped(str(path), module.MAX_FILE_BYTES)
    assert json.loads(data) == claude_credentials()
    # The file's size and one byte more: the short read is its end, seen without a second read.
    assert asked == [len(data) + 1]


def test_a_short_read_ends_the_read_even_when_the_file_shrank_meanwhile(tmp_path, monkeypatch):
    # Told a size larger than the file now has (cut by a writer since its fstat): one read, the
    # bytes that are there.
    (tmp_path / "x.json").write_bytes(b"{}")
    asked = preads(monkeypatch, authdir.os, lambda length, offset: (length, offset))
    with authdir.AuthDirectory(str(tmp_path)) as auth:
        fd, _ = auth.open_regular("x.json")
        try:
            assert auth.read(fd, 100, 50) == b"{}"
        finally:
            os.close(fd)
    assert asked == [(51, 0)]
