"""Stored text on an operator's terminal: its control characters are shown, never obeyed.

A task name, an error message, a queue name or a host name read from the database or the status Redis was
written by whoever made the failing call (or tampered with the row). Printed as it is, ``\\x1b[2J`` clears the
operator's screen, ``\\r`` overwrites the start of a line with what follows, ``\\x1b]8;;…`` makes a link, and
``\\u202e`` reverses the text after it. The commands print every such value through ``printable``, which
writes each of those characters as its Python escape (``\\x1b``, ``\\r``, ``\\u202e``).
"""

from __future__ import annotations

import re

#: Besides the C0 controls (below): DEL and the C1 controls, and the invisible marks that reorder or hide text
#: (zero-width characters, bidi marks, overrides and isolates, the byte-order mark).
_INVISIBLE = "\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
_INVISIBLE_CHARACTER = re.compile(f"[{_INVISIBLE}]")
_UNSAFE_CHARACTER = re.compile(f"[\x00-\x1f{_INVISIBLE}]")
_UNSAFE_BUT_NEWLINE = re.compile(f"[\x00-\x09\x0b-\x1f{_INVISIBLE}]")


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def printable(value: object, *, keep_newlines: bool = False) -> str:
    """``value`` as text a terminal shows as it is: every control character written as its escape.

    ``keep_newlines``: a plain newline stays a line break (for a multi-line text such as a traceback);
    otherwise it is written ``\\n`` too, so that one value stays on its own line.
    """
    pattern = _UNSAFE_BUT_NEWLINE if keep_newlines else _UNSAFE_CHARACTER
    return pattern.sub(_escaped, str(value))


def printable_json(text: str) -> str:
    """JSON text made by ``json.dumps(..., ensure_ascii=False)``, which leaves DEL, the C1 controls and the
    invisible marks raw (it escapes only the C0 controls): each written ``\\uXXXX``. The same JSON, safe to print.
    """
    return _INVISIBLE_CHARACTER.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
