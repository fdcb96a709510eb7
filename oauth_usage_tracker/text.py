"""Text from files and servers made safe to show: one function, used by every output. Pure."""
import re

# C0 and C1 controls (tab and newline included: they forge columns and lines), DEL, the bidi
# controls that reorder a line (U+061C, U+200E/F, U+202A–E, U+2066–9), line and paragraph
# separators, and lone surrogates (a "\ud800" escape in JSON, a file name that is not UTF-8).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                          "\u2066-\u2069\ud800-\udfff]")


def _escape(match: "re.Match[str]") -> str:
    code = ord(match.group())
    return "\\x%02x" % code if code < 0x100 else "\\u%04x" % code


def printable(text: str) -> str:
    """Given text from a file or a server, return it with every character that could move the
    cursor, start an escape sequence, forge a line, reorder a line or fail to encode written as a
    visible backslash escape. Total: never raises on any `str`."""
    return _UNPRINTABLE.sub(_escape, text)
