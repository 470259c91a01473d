"""JSON for stored calls that any database can hold: a NUL character survives PostgreSQL's ``jsonb``.

PostgreSQL refuses ``\\u0000`` in ``jsonb``; a task called with a NUL in an argument would then fail to be
recorded at all. ``NulSafeEncoder`` writes each NUL in a string (keys too) as the pair ``U+FDD0 U+FDD2`` and
each ``U+FDD0`` as ``U+FDD0 U+FDD1`` (two Unicode noncharacters, which text never carries), and
``NulSafeDecoder`` turns them back, so the call is sent again exactly as it was made. JSON without either
character is written and read unchanged (the common case costs one substring search).
"""

from __future__ import annotations

import json
from typing import Any

ESCAPE = "\ufdd0"
_NUL_PAIR = ESCAPE + "\ufdd2"
_ESCAPE_PAIR = ESCAPE + "\ufdd1"


def _map_strings(value: Any, change: Any) -> Any:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, list | tuple):
        return [_map_strings(item, change) for item in value]
    if isinstance(value, dict):
        return {change(key) if isinstance(key, str) else key: _map_strings(item, change) for key, item in value.items()}
    return value


def escape(text: str) -> str:
    return text.replace(ESCAPE, _ESCAPE_PAIR).replace("\x00", _NUL_PAIR)


def unescape(text: str) -> str:
    return text.replace(_NUL_PAIR, "\x00").replace(_ESCAPE_PAIR, ESCAPE)


class NulSafeEncoder(json.JSONEncoder):
    def encode(self, o: Any) -> str:
        text = super().encode(o)
        if "\\u0000" not in text and "\\ufdd0" not in text and ESCAPE not in text:
            return text
        return super().encode(_map_strings(o, escape))


class NulSafeDecoder(json.JSONDecoder):
    def decode(self, s: str, *args: Any, **kwargs: Any) -> Any:
        value = super().decode(s, *args, **kwargs)
        if ESCAPE not in s and "\\ufdd0" not in s:
            return value
        return _map_strings(value, unescape)
