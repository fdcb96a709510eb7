"""text.printable: every character that could act on a terminal or forge a line is escaped."""
from hypothesis import given, strategies as st

from oauth_usage_tracker import text as module


def test_printable_escapes_terminal_sequences_newlines_bidi_and_surrogates():
    hostile = "a\x1b]52;c;eA==\x07\nb\r\u202ec\ud800\x9b"
    out = module.printable(hostile)
    assert out == "a\\x1b]52;c;eA==\\x07\\x0ab\\x0d\\u202ec\\ud800\\x9b"
    out.encode("utf-8")


def test_printable_keeps_ordinary_unicode():
    assert module.printable("zoë@exämple.com 日本") == "zoë@exämple.com 日本"


@given(st.text())
def test_printable_is_total_and_encodable(value):
    out = module.printable(value)
    out.encode("utf-8")
    assert not any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for c in out)


def test_printable_escapes_invisible_unassigned_and_private_use_characters():
    assert module.printable("a\u200bb\u00a0c\U00018cd6d\ue000e\u2066f") == \
        "a\\u200bb\\xa0c\\U00018cd6d\\ue000e\\u2066f"


@given(st.text())
def test_printable_output_is_printable_and_ordinary_text_is_kept(value):
    out = module.printable(value)
    assert out.isprintable()
    if value.isprintable():
        assert out == value
