"""refresh: what the write-back serialises. A number JSON cannot carry (`1e400`, `NaN`) is
refused before the refresh token is sent; after the exchange, a re-read file that does not
serialise falls back to the checked content, and then to a recovery file: the old refresh
token is spent, its successor must never be lost."""
import json
import logging
import os
from datetime import datetime, timezone

import pytest

from oauth_usage_tracker import credentials, refresh as module
from oauth_usage_tracker.errors import CredentialError

from support import CLAUDE_REFRESH, claude_credentials, write_compact

NOW = datetime(2026, 10, 1, 12, 0, 0, tzinfo=timezone.utc)
NEW_ACCESS = "sk-ant-oat01-SERIALISEnewACCESS000000000000"
NEW_REFRESH = "sk-ant-ort01-SERIALISEnewREFRESH00000000000"


class Exchange:
    """An `exchange` that counts what it was sent, runs `action` (a writer racing the
    exchange), then returns fresh tokens."""

    def __init__(self, action=None):
        self.sent = []
        self.action = action

    def __call__(self, token):
        self.sent.append(token)
        if self.action is not None:
            self.action()
        return credentials.TokenGrant(NEW_ACCESS, NEW_REFRESH, 3600)


def with_raw_field(path, raw):
    """Rewrite the credential file with `"extra": <raw>` added as literal JSON text."""
    text = path.read_text().rstrip()
    path.write_text(text[:-1] + ',"extra":' + raw + "}")


def refresh(path, exchange):
    seen = credentials.read_json_object(str(path))
    return module.refresh_tokens(str(path), seen, exchange, lambda: NOW, lock_timeout=2)


@pytest.mark.parametrize("raw", ["1e400", "-1e400", "NaN", "Infinity"])
def test_a_number_json_cannot_carry_is_refused_before_sending(tmp_path, raw):
    path = write_compact(tmp_path / "claude-a.json", claude_credentials())
    with_raw_field(path, raw)
    before = path.read_bytes()
    exchange = Exchange()
    with pytest.raises(CredentialError) as caught:
        refresh(path, exchange)
    assert exchange.sent == []
    assert str(caught.value).startswith("Cannot store new tokens: ")
    assert str(caught.value).endswith("; not refreshing")
    assert "1e400" in str(caught.value) or "Infinity or NaN" in str(caught.value)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["claude-a.json", "claude-a.json.lock"]


def test_serialize_like_never_writes_infinity():
    with pytest.raises(ValueError):
        credentials.serialize_like({"a": float("inf")}, b"{}")


def test_a_file_edited_during_the_exchange_into_1e400_gets_the_checked_content(tmp_path,
                                                                                caplog):
    path = write_compact(tmp_path / "claude-a.json", claude_credentials(label="kept"))
    exchange = Exchange(action=lambda: with_raw_field(path, "1e400"))
    result = refresh(path, exchange)
    assert result.rotated and exchange.sent == [CLAUDE_REFRESH]
    written = json.loads(path.read_text())  # strict enough: Infinity would parse, so check it
    assert "extra" not in written and written["label"] == "kept"
    assert (written["access_token"], written["refresh_token"]) == (NEW_ACCESS, NEW_REFRESH)
    assert "Infinity" not in path.read_text()
    assert "content read before the refresh" in caplog.text
    assert sorted(os.listdir(tmp_path)) == ["claude-a.json", "claude-a.json.lock"]


def test_any_failure_to_serialise_after_the_exchange_ends_in_a_recovery_file(tmp_path,
                                                                             monkeypatch,
                                                                             caplog):
    path = write_compact(tmp_path / "claude-a.json", claude_credentials())
    before = path.read_bytes()
    calls = []
    real = module.serialize_like

    def fails_after_the_preflight(data, original):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("unforeseen")
        return real(data, original)

    monkeypatch.setattr(module, "serialize_like", fails_after_the_preflight)
    exchange = Exchange()
    with pytest.raises(CredentialError) as caught:
        refresh(path, exchange)
    assert exchange.sent == [CLAUDE_REFRESH]
    [recovered] = [name for name in os.listdir(tmp_path) if ".recovered-" in name]
    assert recovered in str(caught.value)
    kept = json.loads((tmp_path / recovered).read_text())
    assert (kept["access_token"], kept["refresh_token"]) == (NEW_ACCESS, NEW_REFRESH)
    assert kept["type"] == "claude"
    assert os.stat(tmp_path / recovered).st_mode & 0o777 == 0o600
    assert path.read_bytes() == before
    assert NEW_REFRESH not in str(caught.value) and NEW_REFRESH not in caplog.text
    assert any(r.levelno == logging.ERROR for r in caplog.records)
