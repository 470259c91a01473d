"""Sensitive task arguments: encrypted at rest in ``FailedJob.args``/``kwargs``, masked wherever a call is shown.

Which arguments are sensitive (``sensitivity_of``):

- a keyword argument, or a key of a dict at any depth, whose name is in ``SENSITIVE_ARGUMENTS`` (compared without
  case; ``password``, ``token``, ``secret``, ``api_key``, ``authorization`` by default) or in the task's own
  ``sensitive_kwargs``;
- a positional argument at one of the task's ``sensitive_args`` positions, or bound to a parameter of such a name.

Stored, a sensitive value is ``{"$encrypted": "<Fernet token>"}`` (``protect``): the JSON of the value, encrypted
with the first key of ``keys()`` (``ENCRYPTION_KEYS``; else one derived from Django's ``SECRET_KEY``, then one per
``SECRET_KEY_FALLBACKS`` entry). Any of the keys decrypts (``reveal``, only when the call is sent again), so a key
is rotated by putting the new one first. Shown (admin, broker ``argsrepr``/``kwargsrepr``, hence Flower and the
worker's log), it is ``MASK``; a stored error text has each secret value replaced by ``MASK`` (``redact``).
docs/security.md tells the whole of it, and what is not covered.
"""

from __future__ import annotations

import base64
import functools
import inspect
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from queueing.conf import get_settings

#: The key of the object that stands for an encrypted value in a stored call.
ENCRYPTED = "$encrypted"
#: What is shown instead of a sensitive value.
MASK = "********"
#: Shorter secret values are not looked for in error texts (masking every "1" of a traceback would hide it all).
REDACT_MIN_CHARS = 4

#: HKDF of a key derived from a Django secret key (``derived_key``): documented, so the keys can be rebuilt.
HKDF_SALT = b"queueing.sensitive"
HKDF_INFO = b"fernet key of sensitive task arguments"

NEW_KEY_HINT = (
    "make one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)


class Undecryptable(Exception):
    """A stored value none of the keys in force decrypts (its key was lost or removed)."""


# --- keys --------------------------------------------------------------------------------------------------


def derived_key(secret_key: str) -> bytes:
    """The Fernet key derived from a Django secret key (HKDF-SHA256, ``HKDF_SALT``, ``HKDF_INFO``)."""
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=HKDF_INFO).derive(secret_key.encode())
    return base64.urlsafe_b64encode(raw)


def check_keys(configured: Iterable[str]) -> None:
    """Raise ``ImproperlyConfigured`` for a key of ``ENCRYPTION_KEYS`` that is not a Fernet key (never its value)."""
    configured = list(configured)
    for number, key in enumerate(configured, start=1):
        try:
            Fernet(key.encode())
        except ValueError:
            raise ImproperlyConfigured(
                f"QUEUEING ENCRYPTION_KEYS: key {number} of {len(configured)} is not a Fernet key (32 url-safe "
                f"base64-encoded bytes); {NEW_KEY_HINT}"
            ) from None


def keys() -> MultiFernet:
    """The keys in force, the first encrypting: ``ENCRYPTION_KEYS``, else those of Django's secret keys."""
    configured = get_settings().encryption_keys
    if configured:
        return _multi(tuple(key.encode() for key in configured))
    secrets = (settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ()))
    return _multi(tuple(derived_key(str(secret)) for secret in secrets))


@functools.lru_cache(maxsize=8)
def _multi(raw_keys: tuple[bytes, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in raw_keys])


# --- which arguments -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sensitivity:
    """The sensitive argument names (lower case) and positions of one task's calls."""

    names: frozenset[str]
    positions: frozenset[int] = field(default_factory=frozenset)


def sensitivity_of(task: Any) -> Sensitivity:
    """What is sensitive in a call of ``task`` (a Celery task, or ``None`` for a task this process does not know)."""
    names = frozenset(name.lower() for name in get_settings().sensitive_arguments)
    if task is None:
        return Sensitivity(names)
    names |= {name.lower() for name in getattr(task, "sensitive_kwargs", ()) or ()}
    positions = frozenset(getattr(task, "sensitive_args", ()) or ()) | _named_positions(task, names)
    return Sensitivity(names, positions)


def _named_positions(task: Any, names: frozenset[str]) -> frozenset[int]:
    """The positions of the task's parameters that carry a sensitive name (``send(to, token)``: 1)."""
    run = getattr(task, "run", None)
    return _positions_in(run, names) if run is not None else frozenset()


@functools.lru_cache(maxsize=1024)
def _positions_in(run: Any, names: frozenset[str]) -> frozenset[int]:
    try:
        parameters = inspect.signature(run).parameters.values()  # a bound task's ``run``: without ``self``
    except (TypeError, ValueError):
        return frozenset()
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return frozenset(i for i, p in enumerate(positional) if p.name.lower() in names)


def _is_marker(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(ENCRYPTED), str)


def _map(args: Any, kwargs: Any, sensitivity: Sensitivity, change: Callable[[Any], Any]) -> tuple[Any, Any]:
    """``args`` and ``kwargs`` with ``change`` applied to each sensitive value (copies; the inputs are kept)."""

    def walk(value: Any) -> Any:
        if _is_marker(value):
            return value
        if isinstance(value, dict):
            return {k: change(v) if str(k).lower() in sensitivity.names else walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(item) for item in value]
        return value

    new_args = args
    if isinstance(args, list | tuple):
        new_args = [change(a) if i in sensitivity.positions else walk(a) for i, a in enumerate(args)]
    return new_args, walk(kwargs) if isinstance(kwargs, dict) else kwargs


# --- stored, shown, sent ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Protected:
    """A call as stored: sensitive values encrypted; ``secrets``, their texts, to mask in error texts."""

    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    secrets: tuple[str, ...]


def protect(task: Any, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]) -> Protected:
    """The call of ``task`` as it is stored: each sensitive value ``{"$encrypted": token}`` (already so: kept).

    In ``options`` (the rest of the call: a chain's next signatures, link, headers) values under a sensitive
    name are encrypted too.
    """
    fernet, secrets = keys(), []

    def encrypt(value: Any) -> Any:
        if _is_marker(value):
            return value
        text = json.dumps(value)
        secrets.append(value if isinstance(value, str) else text)
        return {ENCRYPTED: fernet.encrypt(text.encode()).decode()}

    sensitivity = sensitivity_of(task)
    new_args, new_kwargs = _map(args, kwargs, sensitivity, encrypt)
    _, new_options = _map(None, options, Sensitivity(sensitivity.names), encrypt)
    return Protected(list(new_args), dict(new_kwargs), dict(new_options), tuple(secrets))


def reveal(value: Any) -> Any:
    """``value`` (a stored ``args`` or ``kwargs``) with each encrypted value decrypted; raises ``Undecryptable``."""
    if _is_marker(value):
        try:
            return json.loads(keys().decrypt(value[ENCRYPTED].encode()))
        except InvalidToken:
            raise Undecryptable() from None
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(item) for item in value]
    return value


def is_encrypted(value: Any) -> bool:
    """Whether ``value`` (a stored ``args`` or ``kwargs``) holds an encrypted value anywhere."""
    if _is_marker(value):
        return True
    if isinstance(value, dict):
        return any(is_encrypted(v) for v in value.values())
    return isinstance(value, list) and any(is_encrypted(item) for item in value)


def shown(value: Any) -> Any:
    """A stored ``args`` or ``kwargs`` as people see it: each encrypted value ``MASK``."""
    if _is_marker(value):
        return MASK
    if isinstance(value, dict):
        return {k: shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shown(item) for item in value]
    return value


def masked(task: Any, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
    """A call of ``task`` with each sensitive (or stored encrypted) value ``MASK``; ``None`` if nothing is."""
    hidden = False

    def mask(_: Any) -> str:
        nonlocal hidden
        hidden = True
        return MASK

    new_args, new_kwargs = _map(args, kwargs, sensitivity_of(task), mask)
    if is_encrypted(new_args) or is_encrypted(new_kwargs):
        hidden, new_args, new_kwargs = True, shown(new_args), shown(new_kwargs)
    return (new_args, new_kwargs) if hidden else None


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each secret value (of ``REDACT_MIN_CHARS`` or more) replaced by ``MASK``, longest first."""
    for secret in sorted({s for s in secrets if len(s) >= REDACT_MIN_CHARS}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


#: Celery's own cap of ``argsrepr`` and ``kwargsrepr`` (``app.amqp.argsrepr_maxsize``).
REPR_MAX_CHARS = 1024


def message_reprs(task: Any, args: Any, kwargs: Any) -> dict[str, Any]:
    """``argsrepr`` and ``kwargsrepr`` of a message of ``task`` with the sensitive values masked; ``{}`` if none is.

    Celery puts them in the message's headers; the worker's log lines, its events and so Flower show them.
    """
    hidden = masked(task, args, kwargs)
    if hidden is None:
        return {}
    from celery.utils.saferepr import saferepr

    return {
        "argsrepr": saferepr(tuple(hidden[0] or ()), REPR_MAX_CHARS),
        "kwargsrepr": saferepr(hidden[1] or {}, REPR_MAX_CHARS),
    }
