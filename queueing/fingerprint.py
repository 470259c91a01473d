"""The fingerprint of a failure: what makes two failures "the same cause". Pure: no Django here.

A fingerprint is the task, the exception class and the exception message with what varies from one call to
the next taken out: URLs, quoted values, UUIDs, long hex ids and memory addresses, numbers. So
``gateway answered 503 for +15550100 at http://gw:8080/send`` and the same words for ``+15550199`` share one
fingerprint, and both land in one ``FailureGroup`` (``queueing/groups.py``).
"""

from __future__ import annotations

import hashlib
import re

#: Characters of a message read when normalising (a longer tail does not make a cause different).
MESSAGE_CHARS = 500

#: (pattern, placeholder), applied in this order: the wider shapes first, so a number inside a URL or a
#: quoted value goes with it.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b[a-z][a-z0-9+.\-]*://[^\s'\"<>()]+", re.IGNORECASE), "<url>"),
    (re.compile(r"'[^'\n]*'|\"[^\"\n]*\""), "<str>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.IGNORECASE), "<id>"),
    (re.compile(r"\b0x[0-9a-f]+\b", re.IGNORECASE), "<id>"),
    (re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{12,}\b", re.IGNORECASE), "<id>"),
    (re.compile(r"[+\-]?\d+(?:[.,:]\d+)*"), "<n>"),
    (re.compile(r"\s+"), " "),
)


def normalise(message: str) -> str:
    """The message with URLs, quoted values, ids and numbers replaced by placeholders, spaces collapsed."""
    text = message[:MESSAGE_CHARS]
    for pattern, placeholder in _RULES:
        text = pattern.sub(placeholder, text)
    return text.strip()


def fingerprint(*, task_name: str, exception_class: str, message: str) -> tuple[str, str]:
    """``(key, pattern)``: a 32-character hex key naming the cause, and the normalised message it was made from."""
    pattern = normalise(message)
    digest = hashlib.sha256("\x00".join((task_name, exception_class, pattern)).encode()).hexdigest()
    return digest[:32], pattern
