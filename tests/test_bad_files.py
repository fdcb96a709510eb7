"""Bad credential files (SPEC §3, §9): whatever lies in the auth directory, discovery and a real
fetch give a short skip reason or a sentence for that one account, never a traceback; the healthy
accounts beside it are fetched as usual; and no token reaches the output, at -vv included.

Each kind is one file (or directory entry) next to a healthy Claude and a healthy Codex account.
It goes through `discover_accounts`, then through the script in-process (`cli.main --json -vv`)
against the loopback fake of both providers, which knows the support tokens, so a file that is odd
but usable is fetched for real.
"""
import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Optional

import pytest

from oauth_usage_tracker import cli, credentials, demo
from oauth_usage_tracker.accounts import discover_accounts
from oauth_usage_tracker.config import Settings
from oauth_usage_tracker.tracker import OAuthUsageTracker
from support import (CLAUDE_ACCESS, CLAUDE_REFRESH, CODEX_ACCESS, CODEX_REFRESH, SECRETS,
                     claude_credentials, codex_credentials)

NOW = datetime.now(timezone.utc)
HEALTHY_CLAUDE = ("healthy-claude-access-3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f",
                  "healthy-claude-refresh-0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d")
HEALTHY_CODEX = ("healthy-codex-access-f0e1d2c3b4a5968778695a4b3c2d1e0ff0e1d2c3",
                 "healthy-codex-refresh-a9b8c7d6e5f4031201f2e3d4c5b6a79880a9b8c7")
HEALTHY_IDS = ("claude-healthy@example.com.json", "codex-healthy@example.com.json")
DELETE = object()
ODD_TOKENS = ("sk-ant-oat01-CTRL\x00char\x1btoken0000000000000000000000000",
              "sk-ant-oat01-spacedTOKEN with space 0000000000000000000000",
              "sk-ant-oat01-nonASCIIt\u00f6ken\u2603000000000000000000000000000",
              "sk-ant-ort01-CTRLrefresh\x07\x08token000000000000000000000",
              "LONGTOKEN-" + "q" * 200000)
ALL_TOKENS = SECRETS + HEALTHY_CLAUDE + HEALTHY_CODEX + ODD_TOKENS


# --- building files -----------------------------------------------------------------------------

def _data(provider, changes):
    maker = claude_credentials if provider == "claude" else codex_credentials
    data = maker(email="bad@example.com")
    for key, value in changes.items():
        if value is DELETE:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def compact(provider="claude", **changes) -> bytes:
    """The support credentials as CLIProxyAPI writes them, with some keys changed or deleted."""
    return json.dumps(_data(provider, changes), separators=(",", ":"), sort_keys=True).encode()


CLAUDE_TEXT = compact()
PRETTY_TEXT = json.dumps(_data("claude", {}), indent=2).encode()


def with_field(provider, key, literal):
    """A file whose `key` holds a JSON literal json.dumps cannot write (NaN, 1e400, huge ints)."""
    data = _data(provider, {key: "@@"})
    return json.dumps(data, separators=(",", ":"), sort_keys=True).replace(
        '"@@"', literal).encode()


@dataclass(frozen=True)
class Case:
    make: Callable[[Path, Path], None]
    """Given the auth directory and a scratch directory outside it, create the entry."""
    outcome: str
    """`skip`, `error`, `ok`, `filtered`, `ignored`, or `ok|skip` when either is right."""
    pattern: str = ""
    """A regex the skip reason or the error must match."""
    name: str = "bad.json"
    provider: Optional[str] = None
    """For `ok` and `error`: the provider the entry must be read as."""


def content(data: bytes, outcome: str, pattern: str = "", provider: Optional[str] = None,
            name="bad.json") -> Case:
    """A regular file holding `data`; `name` may be bytes (a name that is not UTF-8)."""
    def make(auth: Path, outside: Path) -> None:
        with open(os.path.join(os.fsencode(str(auth)), os.fsencode(name)), "wb") as handle:
            handle.write(data)
    return Case(make, outcome, pattern, os.fsdecode(name), provider)


UNREADABLE = r"^unreadable: "
NOT_JSON = r"^unreadable: .*(JSON|UTF-8|empty)"
NOT_OBJECT = r"^unreadable: .*(object|JSON)"
NO_TYPE = r"^unreadable: .*type"
BAD_CHARS = r"characters|token"


def _symlink_outside(auth: Path, outside: Path) -> None:
    secret = outside / "secret.json"
    secret.write_bytes(CLAUDE_TEXT)
    os.symlink(str(secret), str(auth / "bad.json"))


def _broken_symlink(auth: Path, outside: Path) -> None:
    os.symlink(str(auth / "missing-target.json"), str(auth / "bad.json"))


def _symlink_loop(auth: Path, outside: Path) -> None:
    os.symlink(str(auth / "loop-b.jsonx"), str(auth / "bad.json"))
    os.symlink(str(auth / "bad.json"), str(auth / "loop-b.jsonx"))


def _directory(auth: Path, outside: Path) -> None:
    (auth / "bad.json").mkdir()
    (auth / "bad.json" / "claude-inner@example.com.json").write_bytes(CLAUDE_TEXT)


def _fifo(auth: Path, outside: Path) -> None:
    os.mkfifo(str(auth / "bad.json"))


def _socket(auth: Path, outside: Path) -> None:
    cwd = os.getcwd()
    os.chdir(str(auth))  # a relative name keeps within the 108-byte socket path limit
    try:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind("bad.json")
        server.close()
    finally:
        os.chdir(cwd)


def _three_mib(auth: Path, outside: Path) -> None:
    data = _data("claude", {"padding": "x" * (3 << 20)})
    (auth / "bad.json").write_text(json.dumps(data))


def cut_after(marker: bytes, offset: int) -> bytes:
    """The compact Claude file cut `offset` bytes after the start of `marker`."""
    return CLAUDE_TEXT[:CLAUDE_TEXT.index(marker) + offset]


def cut_at(fraction: float, source: bytes = CLAUDE_TEXT) -> bytes:
    return source[:int(len(source) * fraction)]


def with_escape(provider: str, key: str, escaped: str) -> bytes:
    """A file whose `key` is a JSON string written with escapes (e.g. a lone `\\ud800`)."""
    return with_field(provider, key, '"%s"' % escaped)


CASES = {
    # Cut off at various points (CLIProxyAPI truncates, then writes).
    "truncated-after-1-byte": content(CLAUDE_TEXT[:1], "skip", NOT_JSON),
    "truncated-after-10-bytes": content(CLAUDE_TEXT[:10], "skip", NOT_JSON),
    "truncated-mid-key": content(cut_after(b'"refresh_tok', 7), "skip",
                                 NOT_JSON),
    "truncated-mid-access-token": content(cut_after(CLAUDE_ACCESS.encode(), 30), "skip",
                                          NOT_JSON),
    "truncated-mid-refresh-token": content(cut_after(CLAUDE_REFRESH.encode(), 40), "skip",
                                           NOT_JSON),
    "truncated-before-closing-brace": content(CLAUDE_TEXT[:-1], "skip", NOT_JSON),
    "truncated-at-half": content(cut_at(0.5), "skip", NOT_JSON),
    "truncated-pretty-mid-line": content(cut_at(0.7, PRETTY_TEXT), "skip", NOT_JSON),
    # Not JSON text at all.
    "empty": content(b"", "skip", NOT_JSON),
    "whitespace-only": content(b" \n\t\r\n  ", "skip", NOT_JSON),
    "nul-bytes-only": content(b"\x00" * 64, "skip", NOT_JSON),
    "binary-png-header": content(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
                                 "skip", NOT_JSON),
    "binary-all-byte-values": content(bytes(range(256)) * 8, "skip", NOT_JSON),
    "latin-1-not-utf8": content('{"type":"claude","email":"jos\xe9@example.com"}'.encode(
        "latin-1"), "skip", NOT_JSON),
    "utf16-with-bom": content(CLAUDE_TEXT.decode().encode("utf-16"), "skip", NOT_JSON),
    "utf8-bom-before-json": content(b"\xef\xbb\xbf" + CLAUDE_TEXT, "ok|skip", NOT_JSON,
                                    "claude"),
    "python-dict-literal": content(b"{'type': 'claude', 'email': 'p@example.com'}", "skip",
                                   NOT_JSON),
    "two-objects": content(b'{"type":"claude"}{"type":"codex"}', "skip", NOT_JSON),
    "trailing-comma": content(CLAUDE_TEXT[:-1] + b",}", "skip", NOT_JSON),
    "javascript-comments": content(b"// CLIProxyAPI\n" + CLAUDE_TEXT, "skip", NOT_JSON),
    # JSON, but not an object.
    "json-list": content(b"[" + CLAUDE_TEXT + b"]", "skip", NOT_OBJECT),
    "json-null": content(b"null", "skip", NOT_OBJECT),
    "json-number": content(b"42", "skip", NOT_OBJECT),
    "json-string": content(b'"claude"', "skip", NOT_OBJECT),
    "json-true": content(b"true", "skip", NOT_OBJECT),
    "json-empty-object": content(b"{}", "skip", NO_TYPE),
    # `type`: wrong types, odd spellings, other providers.
    "type-as-number": content(compact(type=1), "skip", NO_TYPE),
    "type-as-list": content(compact(type=["claude"]), "skip", NO_TYPE),
    "type-as-object": content(compact(type={"name": "claude"}), "skip", NO_TYPE),
    "type-null": content(compact(type=None), "skip", NO_TYPE),
    "type-empty-string": content(compact(type="  "), "skip", NO_TYPE),
    "type-missing": content(compact(type=DELETE), "skip", NO_TYPE),
    "type-padded-Claude": content(compact(type=" Claude "), "ok", provider="claude"),
    "type-CODEX-upper-case": content(compact("codex", type="CODEX"), "ok", provider="codex"),
    "type-with-trailing-newline": content(compact(type="claude\n"), "ok", provider="claude"),
    "type-gemini": content(compact(type="gemini"), "skip", r"^unsupported type 'gemini'$"),
    "type-qwen": content(compact(type="qwen"), "skip", r"^unsupported type 'qwen'$"),
    "type-antigravity": content(compact(type="antigravity"), "skip",
                                r"^unsupported type 'antigravity'$"),
    "type-claude-code": content(compact(type="claude-code"), "skip",
                                r"^unsupported type 'claude-code'$"),
    "type-with-terminal-escape": content(compact(type="\x1b[31mgemini\x07"), "skip",
                                         r"^unsupported type '[^\x00-\x1f\x7f]*'$"),
    "type-1000-characters": content(compact(type="x" * 1000), "skip",
                                    r"^unsupported type '.{1,60}'$"),
    "type-lone-surrogate": content(with_escape("claude", "type", "\\ud800gemini"), "skip",
                                   r"^unsupported type '[^\ud800]*'$"),
    "type-duplicate-key-last-wins": content(b'{"type":"claude",' + CLAUDE_TEXT[1:-1]
                                            .replace(b'"type":"claude"', b'"type":"gemini"')
                                            + b"}", "skip", r"^unsupported type 'gemini'$"),
    # `email`: wrong types and hostile text.
    "email-as-number": content(compact(email=12345), "ok", provider="claude"),
    "email-as-object": content(compact(email={"address": "x@example.com"}), "ok",
                               provider="claude"),
    "email-as-list": content(compact(email=["x@example.com"]), "ok", provider="claude"),
    "email-empty": content(compact(email=""), "ok", provider="claude"),
    "email-lone-surrogate": content(with_escape("claude", "email", "\\ud800@example.com"), "ok",
                                    provider="claude"),
    "email-with-terminal-escape": content(compact(email="\x1b]0;pwned\x07\x1b[2Jx@example.com"),
                                          "ok", provider="claude"),
    # `expired`: wrong types, out of range, unparseable (unknown: never expired).
    "expired-as-object": content(compact(expired={"at": "2026"}), "ok", provider="claude"),
    "expired-as-list": content(compact(expired=[2026, 8, 22]), "ok", provider="claude"),
    "expired-as-true": content(compact(expired=True), "ok", provider="claude"),
    "expired-as-false": content(compact(expired=False), "ok", provider="claude"),
    "expired-1e300": content(compact(expired=1e300), "ok", provider="claude"),
    "expired-1e400-infinite": content(with_field("claude", "expired", "1e400"), "ok",
                                      provider="claude"),
    "expired-10-to-the-400": content(with_field("claude", "expired", str(10 ** 400)), "ok",
                                     provider="claude"),
    "expired-5000-digit-integer": content(with_field("claude", "expired", "9" * 5000),
                                          "ok|skip", NOT_JSON, "claude"),
    "expired-NaN-literal": content(with_field("claude", "expired", "NaN"), "ok",
                                   provider="claude"),
    "expired-negative-number": content(compact(expired=-86400), "filtered", "expired"),
    "expired-garbage-string": content(compact(expired="next tuesday"), "ok", provider="claude"),
    "expired-month-13": content(compact(expired="2026-13-45T99:99:99Z"), "ok",
                                provider="claude"),
    "expired-year-9999-minus-offset": content(compact(expired="9999-12-31T23:59:59-23:59"),
                                              "ok", provider="claude"),
    "expired-year-0001-plus-offset": content(compact(expired="0001-01-01T00:00:00+23:59"),
                                             "filtered|ok", "expired", "claude"),
    "expired-empty-string": content(compact(expired=""), "ok", provider="claude"),
    # `disabled`: only JSON true disables.
    "disabled-as-string-true": content(compact(disabled="true"), "ok", provider="claude"),
    "disabled-as-number-1": content(compact(disabled=1), "ok", provider="claude"),
    "disabled-null": content(compact(disabled=None), "ok", provider="claude"),
    "disabled-as-object": content(compact(disabled={"yes": True}), "ok", provider="claude"),
    # Tokens of the wrong type or with characters no token has.
    "claude-access_token-as-number": content(compact(access_token=12345), "ok",
                                             provider="claude"),
    "claude-access_token-as-list": content(compact(access_token=[CLAUDE_ACCESS]), "ok",
                                           provider="claude"),
    "claude-access_token-empty": content(compact(access_token=""), "ok", provider="claude"),
    "claude-access_token-control-characters": content(compact(access_token=ODD_TOKENS[0]),
                                                      "error", BAD_CHARS, "claude"),
    "claude-access_token-trailing-newline": content(compact(access_token=CLAUDE_ACCESS + "\n"),
                                                    "error", BAD_CHARS, "claude"),
    "claude-access_token-inner-space": content(compact(access_token=ODD_TOKENS[1]), "error",
                                               BAD_CHARS, "claude"),
    "claude-access_token-non-ascii": content(compact(access_token=ODD_TOKENS[2]), "error",
                                             BAD_CHARS, "claude"),
    "claude-access_token-200-kib": content(compact(access_token=ODD_TOKENS[4]), "error",
                                           r"\d{3}|connection|reset|header|large", "claude"),
    "claude-no-tokens-at-all": content(compact(access_token=DELETE, refresh_token=DELETE),
                                       "error", r"refresh_token|log in", "claude"),
    "claude-refresh_token-as-number": content(compact(access_token=DELETE, refresh_token=7),
                                              "error", r"refresh_token|log in", "claude"),
    "claude-refresh_token-as-list": content(compact(access_token=DELETE,
                                                    refresh_token=[CLAUDE_REFRESH]),
                                            "error", r"refresh_token|log in", "claude"),
    "claude-refresh_token-empty": content(compact(access_token=DELETE, refresh_token=""),
                                          "error", r"refresh_token|log in", "claude"),
    "claude-refresh_token-control-characters": content(compact(access_token=DELETE,
                                                               refresh_token=ODD_TOKENS[3]),
                                                       "error", BAD_CHARS, "claude"),
    "claude-refresh_token-trailing-newline": content(compact(
        access_token=DELETE, refresh_token=CLAUDE_REFRESH + "\n"), "error", BAD_CHARS, "claude"),
    "claude-refresh_token-as-number-unused": content(compact(refresh_token=7), "ok",
                                                     provider="claude"),
    "codex-access_token-as-number": content(compact("codex", access_token=12345), "error",
                                            r"access_token", "codex"),
    "codex-access_token-as-list": content(compact("codex", access_token=[CODEX_ACCESS]),
                                          "error", r"access_token", "codex"),
    "codex-access_token-empty": content(compact("codex", access_token=""), "error",
                                        r"access_token", "codex"),
    "codex-access_token-missing": content(compact("codex", access_token=DELETE), "error",
                                          r"access_token", "codex"),
    "codex-access_token-trailing-newline": content(compact("codex",
                                                           access_token=CODEX_ACCESS + "\n"),
                                                   "error", BAD_CHARS, "codex"),
    "codex-access_token-control-characters": content(compact("codex",
                                                             access_token=ODD_TOKENS[0]),
                                                     "error", BAD_CHARS, "codex"),
    "codex-refresh_token-as-list": content(compact("codex", refresh_token=[CODEX_REFRESH]),
                                           "ok", provider="codex"),
    "codex-account_id-as-object": content(compact("codex", account_id={"id": 1}), "ok",
                                          provider="codex"),
    "codex-account_id-as-list": content(compact("codex", account_id=["a"]), "ok",
                                        provider="codex"),
    "codex-account_id-as-number": content(compact("codex", account_id=7), "ok",
                                          provider="codex"),
    "codex-account_id-with-crlf-header-injection": content(compact(
        "codex", account_id="abc\r\nX-Injected: 1"), "ok|error", r"account|header|request",
        "codex"),
    "codex-account_id-not-latin-1": content(compact("codex", account_id="acct-\u2603"),
                                            "ok|error", r"account|header|request", "codex"),
    # Huge numbers, huge files, deep nesting.
    "user-key-1e400": content(with_field("claude", "priority", "1e400"), "ok",
                              provider="claude"),
    "user-key-10-to-the-400": content(with_field("claude", "weight", str(10 ** 400)), "ok",
                                      provider="claude"),
    "user-key-nested-500-deep": content(with_field("claude", "headers", "[" * 500 + "]" * 500),
                                        "ok", provider="claude"),
    "nested-100000-deep": content(with_field("claude", "headers",
                                             "[" * 100000 + "]" * 100000), "skip",
                                  r"^unreadable: .*(nested|deep|JSON)"),
    "file-of-3-mib": Case(_three_mib, "skip", r"^unreadable: .*(larger|large|MiB|KiB)"),
    # Not regular files.
    "symlink-out-of-the-directory": Case(_symlink_outside, "skip", r"^unreadable: .*symlink"),
    "broken-symlink": Case(_broken_symlink, "skip", r"^unreadable: .*(symlink|link)"),
    "symlink-loop": Case(_symlink_loop, "skip", UNREADABLE),
    "directory-named-x.json": Case(_directory, "ignored"),
    "fifo-named-x.json": Case(_fifo, "skip", r"^unreadable: .*regular"),
    "unix-socket-named-x.json": Case(_socket, "skip", r"^unreadable: .*regular"),
    # Odd file names (the id in every output is the file name).
    "file-name-not-utf8": content(CLAUDE_TEXT, "ok", provider="claude",
                                  name=b"claude-\xff\xfe.json"),
    "file-name-with-newline": content(CLAUDE_TEXT, "ok", provider="claude",
                                      name="claude-a\nb.json"),
    "file-name-with-terminal-escape": content(CLAUDE_TEXT, "ok", provider="claude",
                                              name="claude-\x1b[2J.json"),
}


# --- the run ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake():
    with demo.FakeProviders() as server:
        yield server


@pytest.fixture
def scene(fake, auth_dir, monkeypatch):
    """The fake knows the support tokens (single-use refresh tokens re-armed for every test)
    and the two healthy accounts, which are already in the auth directory."""
    monkeypatch.setattr(credentials, "READ_PAUSE", 0.001)
    fake.add_account(demo.FakeAccount("claude", "bad@example.com"), CLAUDE_ACCESS,
                     CLAUDE_REFRESH)
    fake.add_account(demo.FakeAccount("codex", "bad@example.com"), CODEX_ACCESS, CODEX_REFRESH)
    fake.add_account(demo.FakeAccount("claude", "healthy@example.com"), *HEALTHY_CLAUDE)
    fake.add_account(demo.FakeAccount("codex", "healthy@example.com"), *HEALTHY_CODEX)
    demo.write_credential(str(auth_dir), "claude", "healthy@example.com", *HEALTHY_CLAUDE,
                          NOW + timedelta(hours=6))
    demo.write_credential(str(auth_dir), "codex", "healthy@example.com", *HEALTHY_CODEX,
                          NOW + timedelta(days=5))
    for name, value in fake.environ().items():
        monkeypatch.setenv(name, value)
    return fake


def run_cli(argv, capsys):
    """cli.main() in this process; the package logger is put back afterwards (main points it at
    the captured stderr of this test and stops it from propagating)."""
    logger = logging.getLogger("oauth_usage_tracker")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    capsys.readouterr()
    started = time.monotonic()
    try:
        status = cli.main(argv)
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    return status, captured.out, captured.err, elapsed


def assert_no_tokens(tokens, *texts):
    for token in tokens:
        pieces = {token} | ({token[12:36]} if len(token) >= 36 else set())
        for text in texts:
            for piece in pieces:
                assert piece not in text, "a token leaked into the output"


def assert_sentence(message):
    assert isinstance(message, str) and message.strip(), "no error message"
    assert "Traceback" not in message and 'File "' not in message
    assert " " in message.strip() and len(message) < 400, message
    assert not message.startswith("Unexpected"), message


def tokens_in_directory(directory):
    """Tokens the fake issued and that were written back into any file."""
    found = []
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if not name.endswith(".json") or not os.path.isfile(path):
            continue
        try:
            data = json.loads(Path(path).read_bytes())
        except (ValueError, RecursionError):
            continue
        if isinstance(data, dict):
            found += [v for k, v in data.items() if k.endswith("_token")
                      and isinstance(v, str) and v.startswith("demo-")]
    return found


@pytest.mark.parametrize("kind", sorted(CASES))
def test_bad_file_is_skipped_or_fails_alone_with_a_clear_reason(scene, auth_dir, tmp_path,
                                                                capsys, caplog, kind):
    case = CASES[kind]
    outside = tmp_path / "outside"
    outside.mkdir()
    case.make(auth_dir.path, outside)
    caplog.set_level(logging.DEBUG)

    # Discovery, on its own.
    found = discover_accounts(auth_dir)
    skipped = {item.id: item.reason for item in found.skipped}
    listed = {account.id: account for account in found.accounts}
    assert set(HEALTHY_IDS) <= set(listed)
    outcomes = case.outcome.split("|")
    if case.name in skipped:
        assert "skip" in outcomes, skipped[case.name]
        assert re.search(case.pattern, skipped[case.name]), skipped[case.name]
        assert len(skipped[case.name]) < 100
    elif case.name in listed:
        assert set(outcomes) & {"ok", "error", "filtered"}, case.outcome
        assert listed[case.name].provider.value == (case.provider or
                                                    listed[case.name].provider.value)
    else:
        assert outcomes == ["ignored"]
    discovery_texts = [caplog.text, repr(found)]

    # A real fetch through the script.
    status, out, err, elapsed = run_cli(["--auth-dir", str(auth_dir), "--json", "--timeout", "2",
                                         "-vv"], capsys)
    assert elapsed < 20
    assert "Traceback" not in err and "Traceback" not in out
    assert all(line.startswith("oauth-usage-tracker: ") for line in err.splitlines() if line), err
    report = json.loads(out)
    accounts_by_id = {account["id"]: account for account in report["accounts"]}
    skipped_by_id = {item["id"]: item for item in report["skipped"]}
    for healthy in HEALTHY_IDS:
        assert accounts_by_id[healthy]["error"] is None, accounts_by_id[healthy]["error"]
        assert accounts_by_id[healthy]["windows"]
    if case.name in skipped_by_id and skipped_by_id[case.name]["provider"] is None:
        reason = skipped_by_id[case.name]["reason"]
        assert "skip" in outcomes and re.search(case.pattern, reason), reason
        assert status == (1 if reason.startswith("unreadable") else 0)
    elif case.name in skipped_by_id:
        assert "filtered" in outcomes
        assert re.search(case.pattern, skipped_by_id[case.name]["reason"])
        # An expired account needs a human (log in again): it fails the run; disabled does not.
        assert status == (1 if skipped_by_id[case.name]["state"] == "expired" else 0)
    elif case.name in accounts_by_id:
        account = accounts_by_id[case.name]
        assert account["provider"] == case.provider
        if account["error"] is None:
            assert "ok" in outcomes, case.outcome
            assert account["windows"], "fetched without windows"
            assert status == 0, err
        else:
            assert "error" in outcomes, account["error"]
            assert_sentence(account["error"])
            assert re.search(case.pattern, account["error"], re.IGNORECASE), account["error"]
            assert status == 1
    else:
        assert outcomes == ["ignored"], "the entry vanished from the report"
        assert status == 0, err
    assert_no_tokens(ALL_TOKENS + tuple(tokens_in_directory(str(auth_dir))),
                     out, err, *discovery_texts)


# --- files that go bad between discovery and fetch ----------------------------------------------

def _truncate(path):
    path.write_bytes(path.read_bytes()[:40])


def _to_list(path):
    path.write_text("[1, 2, 3]")


def _delete(path):
    path.unlink()


def _to_directory(path):
    path.unlink()
    path.mkdir()


def _grow(path):
    data = json.loads(path.read_text())
    data["padding"] = "x" * (3 << 20)
    path.write_text(json.dumps(data))


def _lose_tokens(path):
    data = json.loads(path.read_text())
    data.pop("access_token")
    data.pop("refresh_token")
    path.write_text(json.dumps(data))


CHANGES = {
    "truncated": (_truncate, r"JSON|read|unreadable"),
    "replaced-by-a-list": (_to_list, r"object|JSON"),
    "deleted": (_delete, r"file|directory|exist|found|read"),
    "replaced-by-a-directory": (_to_directory, r"directory|file|read"),
    "grown-to-3-mib": (_grow, r"larger|large|KiB|MiB"),
    "tokens-removed": (_lose_tokens, r"token|log in"),
}


@pytest.mark.parametrize("provider", ["claude", "codex"])
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_file_gone_bad_after_discovery_fails_that_account_only(scene, auth_dir, caplog, provider,
                                                               change):
    make, pattern = CHANGES[change]
    path = auth_dir.path / "bad.json"
    path.write_bytes(compact(provider))
    found = discover_accounts(auth_dir)
    make(path)
    caplog.set_level(logging.DEBUG)
    settings = Settings.from_environ(timeout=2)
    with OAuthUsageTracker(settings=settings) as tracker:
        results = tracker.refresh_and_wait(found.codex, found.claude)
    by_id = {result.id: result for result in results}
    for healthy in HEALTHY_IDS:
        assert by_id[healthy].error is None and by_id[healthy].windows
    error = by_id["bad.json"].error
    assert_sentence(error)
    assert re.search(pattern, error, re.IGNORECASE), error
    assert_no_tokens(ALL_TOKENS, caplog.text, repr(results))


def test_file_replaced_by_a_fifo_after_discovery_does_not_hang(scene, auth_dir, caplog):
    """Discovery refuses a FIFO; a fetch that opens a credential file that has become one since
    must not block forever waiting for a writer."""
    caplog.set_level(logging.DEBUG)
    path = auth_dir.path / "bad.json"
    path.write_bytes(compact("codex"))
    found = discover_accounts(auth_dir)
    path.unlink()
    os.mkfifo(str(path))
    settings = Settings.from_environ(timeout=2)
    outcome = {}

    def fetch():
        with OAuthUsageTracker(settings=settings) as tracker:
            outcome["results"] = tracker.refresh_and_wait(found.codex, found.claude)

    started = time.monotonic()
    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    worker.join(3)  # a 2 s timeout; reading a file takes milliseconds
    hung = worker.is_alive()
    deadline = time.monotonic() + 10
    while worker.is_alive() and time.monotonic() < deadline:
        # Release the blocked reader(s): open the FIFO for writing and close it (EOF).
        try:
            fd = os.open(str(path), os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            pass
        else:
            os.close(fd)
        time.sleep(0.02)
    worker.join(1)
    assert not worker.is_alive()
    assert not hung, "the fetch blocked for %.0f s opening a FIFO" % (time.monotonic() - started)
    by_id = {result.id: result for result in outcome["results"]}
    assert_sentence(by_id["bad.json"].error)
    assert_no_tokens(ALL_TOKENS, caplog.text, repr(outcome["results"]))


def test_table_output_never_carries_control_characters_from_a_file(scene, auth_dir, capsys):
    """The table goes to terminals and cron mails: an e-mail or file name holding escape
    sequences must not reach them raw (they can retitle the terminal, clear it, hide lines)."""
    (auth_dir.path / "claude-\x1b[2J.json").write_bytes(
        compact(email="\x1b]0;pwned\x07\x1b[1Ax@example.com"))
    (auth_dir.path / "gemini-\x1b[31m.json").write_bytes(compact(type="\x1b[31mgemini"))
    status, out, err, _ = run_cli(["--auth-dir", str(auth_dir), "-vv"], capsys)
    assert status == 0, err
    assert "healthy@example.com" in out
    assert_no_tokens(ALL_TOKENS, out, err)
    for text in (out, err):
        bad = sorted({repr(ch) for ch in text if ord(ch) < 32 and ch not in "\n\t"})
        assert not bad, "control characters in the output: %s" % ", ".join(bad)
