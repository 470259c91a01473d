"""The API's bearer tokens: named, each with a scope, compared in constant time.

``QUEUEING_API_TOKENS`` lists them, comma-separated, each ``<name>:<scope>:<token>``:

- ``read``: the queue status and ``/metrics``;
- ``write``: all of ``read``, and the verbs: retry, pause, send a message.

The token may be given as ``sha256:<hex digest>`` of itself, so that a config file need not hold the secret. A
name says who acted in a job's history (``token:<name>``). ``QUEUEING_API_TOKEN`` (one token, no name) still
works: it is the ``write`` token named ``api-token``. A malformed entry is named by the system check
(``queueing.checks``) and never matches.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from enum import StrEnum

from queueing.conf import get_settings

#: The name of the token ``QUEUEING_API_TOKEN`` holds.
LEGACY_TOKEN_NAME = "api-token"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
SHA256_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")


class Scope(StrEnum):
    READ = "read"
    """The queue status and the metrics."""
    WRITE = "write"
    """Everything ``read`` may, and the verbs (retry, pause, send)."""

    def allows(self, needed: Scope) -> bool:
        return self is Scope.WRITE or needed is Scope.READ


@dataclass(frozen=True)
class ApiToken:
    name: str
    scope: Scope
    secret: str = field(repr=False)  # the token itself, or sha256:<hex digest> of it

    def matches(self, token: str) -> bool:
        if not token:
            return False
        if self.secret.startswith("sha256:"):
            given = "sha256:" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
            return hmac.compare_digest(given, self.secret.lower())
        return hmac.compare_digest(token.encode("utf-8", "surrogatepass"), self.secret.encode("utf-8", "surrogatepass"))

    @property
    def actor(self) -> str:
        return f"token:{self.name}"


def parse(entry: str) -> ApiToken:
    """One ``name:scope:token`` entry; ``ValueError`` saying what is wrong (never the secret) and the fix."""
    name, _, rest = entry.strip().partition(":")
    scope, _, secret = rest.partition(":")
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"token name {name[:64]!r} must be 1 to 64 letters, digits or _.@-; write each entry as name:scope:token"
        )
    if scope not in Scope.__members__.values():
        raise ValueError(f"token {name!r}: scope must be read or write, got {scope[:20]!r}")
    if not secret:
        raise ValueError(f"token {name!r}: the token is empty; write name:{scope}:<token>")
    if secret.startswith("sha256:") and not SHA256_PATTERN.match(secret.lower()):
        raise ValueError(f"token {name!r}: sha256: must be followed by 64 hex digits")
    return ApiToken(name=name, scope=Scope(scope), secret=secret)


def configured() -> tuple[list[ApiToken], list[str]]:
    """The tokens in force, and what is wrong with the entries left out."""
    conf = get_settings()
    tokens: list[ApiToken] = []
    problems: list[str] = []
    if conf.api_token:
        tokens.append(ApiToken(name=LEGACY_TOKEN_NAME, scope=Scope.WRITE, secret=conf.api_token))
    for entry in conf.api_tokens:
        try:
            token = parse(entry)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if any(t.name == token.name for t in tokens):
            problems.append(f"token name {token.name!r} is used twice; give each token its own name")
            continue
        tokens.append(token)
    return tokens, problems


def find(token: str) -> ApiToken | None:
    """The configured token ``token`` is, or ``None``. Every token is compared, so the time says nothing."""
    found = None
    for candidate in configured()[0]:
        if candidate.matches(token) and found is None:
            found = candidate
    return found
