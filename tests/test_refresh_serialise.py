"""refresh: what the write-back serialises. A number JSON cannot carry (`1e400`, `NaN`) is
refused before the refresh token is sent."""
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
