"""Text a peer chose (a gateway's banner, XAUTH message or prompt, a reject reason, a protocol
name; a client's user name on the gateway), made safe for a terminal and a log line.

A terminal obeys control characters: ``ESC ] 0 ; ... BEL`` retitles the window, ``ESC [ 2 J``
clears the screen, ``CR`` overwrites the line, OSC 52 writes the clipboard, bidirectional
overrides (U+202E) reorder what is shown; a newline in a log line forges a second line. So
every character that is not printable (Unicode categories "Other" and "Separator", except the
ASCII space: C0/C1 controls, DEL, format characters, line and paragraph separators) is shown
as its Python escape (``\\x1b``, ``\\u202e``). Banners keep ``\\n`` and ``\\t`` (``keep_lines``).

The text stays readable; what the peer sent can still be recognised in the escaped form.
"""

from __future__ import annotations

import logging

_KEPT_IN_BLOCKS = frozenset("\n\t")


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def for_terminal(text: object, *, keep_lines: bool = False) -> str:
    """``text`` with every non-printable character escaped (``\\n`` and ``\\t`` kept if
    ``keep_lines``; ``\\r\\n`` is then a newline too). Safe to print or to log."""
    text = str(text)
    if keep_lines:
        text = text.replace("\r\n", "\n")
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() or (keep_lines and char in _KEPT_IN_BLOCKS) else _escape(char)
        for char in text
    )


def quoted(text: object) -> str:
    """A name a peer chose, quoted and escaped (for messages like ``protocol 'x'``)."""
    return "'" + for_terminal(text).replace("'", "\\'") + "'"


class SafeFormatter(logging.Formatter):
    """A log formatter that escapes control characters in the message (a peer's text in a log
    argument cannot forge a log line or drive the terminal); tracebacks keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return for_terminal(super().formatMessage(record))

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return for_terminal(super().formatException(ei), keep_lines=True)


__all__ = ["SafeFormatter", "for_terminal", "quoted"]
