"""Text from files and servers made safe to show: one function, used by every output. Pure."""
from __future__ import annotations


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return "\\x%02x" % code
    return "\\u%04x" % code if code < 0x10000 else "\\U%08x" % code


def printable(text: str) -> str:
    """Given text from a file or a server, return it with every character that could move the
    cursor, start an escape sequence, forge a line, reorder a line, hide itself or fail to encode
    written as a visible backslash escape (`\\x1b`, `\\u202e`, `\\ud800`). Total: never raises on
    any `str`.

    The rule is `str.isprintable`: C0 and C1 controls (tab and newline included: they forge
    columns and lines), DEL, format characters (the bidi controls that reorder a line, zero-width
    ones), line and paragraph separators, spaces other than U+0020, private-use and unassigned
    code points, and lone surrogates (a "\\ud800" escape in JSON, a file name that is not UTF-8)
    are escaped; every other character, letters of any script included, is kept."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)
