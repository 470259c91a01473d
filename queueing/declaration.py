"""How a ``QUEUEING`` setting is declared (``setting()``, a field of ``conf.QueueingSettings``), read back from
those fields (``Setting``, ``declared_in``), parsed from the settings or the environment (``parse``) and shown as
the table at the end of ``conf.py``'s docstring (``table``).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured

ENV_PREFIX = "QUEUEING_"

T = TypeVar("T")


def setting(default: T, *, key: str, unit: str, help: str, minimum: float | None = None, secret: bool = False) -> T:
    """Declare one setting: a dataclass field of ``QueueingSettings`` carrying its key, unit and help.

    ``unit`` is what one of it counts ("seconds", "jobs", ...; "" for a switch, a text or a list); ``minimum``
    the smallest value accepted; ``secret`` keeps the value out of the ``repr``.
    """
    metadata = {"key": key, "unit": unit, "help": help, "minimum": minimum}
    return dataclasses.field(default=default, repr=not secret, metadata=metadata)


@dataclass(frozen=True)
class Setting:
    """One declared setting, as read from its ``QueueingSettings`` field."""

    key: str
    field: str
    kind: type  # int, float, bool, str or tuple (of strings)
    default: Any
    unit: str
    help: str
    minimum: float | None

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.key

    @property
    def default_text(self) -> str:
        """The default as the README and the table below write it: ``300``, ``0.5``, ``false``, ``empty``."""
        value = self.default
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, float):
            return f"{value:g}"
        if isinstance(value, tuple):
            return ",".join(value) or "empty"
        return str(value) if value != "" else "empty"


def declared_in(fields: type) -> tuple[Setting, ...]:
    """The settings declared (with ``setting()``) as the fields of the dataclass ``fields``."""
    hints = typing.get_type_hints(fields)
    declared = []
    for field in dataclasses.fields(fields):
        hint = hints[field.name]
        kind = typing.get_origin(hint) or hint
        if kind not in (int, float, bool, str, tuple):
            raise TypeError(f"{fields.__name__}.{field.name}: a setting is an int, float, bool, str or tuple[str, ...]")
        meta = field.metadata
        declared.append(
            Setting(meta["key"], field.name, kind, field.default, meta["unit"], meta["help"], meta["minimum"])
        )
    return tuple(declared)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse(where: str, raw: Any, declared: Setting) -> Any:
    """``raw`` (from ``where``: the settings or the environment) as the value of ``declared``."""
    kind, minimum = declared.kind, declared.minimum
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise ImproperlyConfigured(f"{where} must be true or false, got {raw!r}")
    if kind is str:
        return str(raw)
    if kind is tuple:
        # A list of names: a list or tuple in settings, comma-separated text in the environment.
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
            raise ImproperlyConfigured(f"{where} must be a list of strings (comma-separated in the environment)")
        return tuple(item.strip() for item in items if item.strip())
    try:
        value = kind(raw)
        if kind is int and isinstance(raw, float) and raw != value:
            raise ValueError
    except (TypeError, ValueError):
        unit = "a whole number" if kind is int else f"a number of {declared.unit or 'units'}"
        raise ImproperlyConfigured(f"{where} must be {unit}, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{where} must be at least {minimum}, got {raw!r}")
    return value


def table(settings: tuple[Setting, ...]) -> str:
    """The settings as a reStructuredText table, for ``conf.py``'s docstring."""
    rows = [(s.key, s.default_text, s.unit or "-", s.help) for s in settings]
    widths = [max(len(row[i]) for row in [("key", "default", "unit", "meaning"), *rows]) for i in range(4)]
    rule = "  ".join("=" * width for width in widths)
    lines = [
        "",
        "",
        rule,
        "  ".join(h.ljust(w) for h, w in zip(("key", "default", "unit", "meaning"), widths, strict=True)),
    ]
    lines.append(rule)
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append(rule)
    return "\n".join(lines) + "\n"
