"""A fake WhatsApp gateway: a small real HTTP server speaking the protocol of ``messaging/gateway.py``.

``python manage.py fake_whatsapp_gateway`` runs it; tests start it on port 0 in a thread::

    gateway = FakeGateway(port=0).start()
    ... requests.post(gateway.url + "/send", ...) ...
    gateway.stop()

Endpoints (JSON in and out; the request's Content-Type is not checked):

- ``POST /send`` ``{"sessionId", "to", "message"}`` with an ``Idempotency-Key`` header: ``200 {"status":
  "sent", "id": …}``. A key seen before answers that first delivery again (``Idempotent-Replayed: true``)
  and records nothing. ``400`` naming the missing or invalid field (the header included); ``400
  {"error": "invalid recipient: …", "field": "to"}`` for a ``to`` that is not an E.164 number (``RECIPIENT``:
  ``+``, then 8 to 15 digits, the first not 0; ``+15550100`` is fine, ``15550100``, ``+123`` and
  ``+1 555 0100`` are refused); ``404 {"error": "Session not found"}`` for a session it does not serve.
  Every ``400`` comes before the ``404``.
  By mode, before any of that (the body is not checked first):

  * ``down``: ``503``, with ``Retry-After`` when ``retryAfterSeconds`` is set;
  * ``rate-limited``: ``429`` with ``Retry-After``: ``retryAfterSeconds``, or ``RETRY_AFTER_SECONDS`` (1)
    when it is not set;
  * ``flaky``: a ``failRatio`` share of the sends answer ``503`` (with ``Retry-After`` as in ``down``), the
    others are answered as in ``ok``. Deterministic, no randomness: counting the sends received since the
    last ``POST /control`` (or the start) from 1, send ``n`` fails when ``floor(n * failRatio)`` grows at
    ``n``. So exactly ``floor(n * failRatio)`` of the first ``n`` sends fail, evenly spread: ``0.5`` fails
    the 2nd, 4th, 6th …; ``0.25`` the 4th, 8th …; ``1`` all; ``0`` none.
  * ``slow``: waits ``slowSeconds`` first (and still delivers, even if the client gave up waiting: that is
    what the idempotency key is for).

  ``Retry-After`` is in seconds, or with ``retryAfterFormat: "http-date"`` an HTTP date at least
  ``retryAfterSeconds`` away (the date has whole seconds, so it is rounded up).
- ``GET /messages``: the delivered messages, oldest first, each ``{"id", "sessionId", "to", "message",
  "idempotencyKey", "deliveredAt"}``.
- ``GET /attempts``: every ``POST /send`` received (refused, failed, replayed or delivered), oldest first by
  arrival, each ``{"sessionId", "to", "message", "idempotencyKey", "status", "at", "replayed"}``: the HTTP
  status it answered (``null`` while a slow send is still being answered), when it arrived, and whether it
  was a ``200`` answered from an earlier delivery. Deliveries are deduplicated by the idempotency key and hide
  a double send; attempts do not. A field the request did not carry is ``null``; ``message`` is cut at
  ``ATTEMPT_MESSAGE_MAX_CHARS``. The newest ``max_attempts`` (``MAX_ATTEMPTS``) are kept; the
  ``Attempts-Total`` header counts all of them, kept or not.
- ``GET /health``: ``200 {"status": "ok", "mode": …}`` in every mode.
- ``POST /control`` ``{"mode": "ok"|"down"|"slow"|"rate-limited"|"flaky", "slowSeconds": n,
  "retryAfterSeconds": n, "failRatio": f, "retryAfterFormat": "seconds"|"http-date"}``: change the
  behaviour. Every key is optional; a key left out (or ``null``) keeps its value, except that
  ``"retryAfterSeconds": null`` clears it. ``400`` naming the first bad or unknown key, and then nothing
  changes. Answers all the settings. The flaky count starts again at each change.

With a store file, each delivery is appended to it as one JSON line before it is answered, and the file is
read back at start: a gateway killed and started again keeps its history and still dedupes. The attempts go
to a file beside it (``messages.jsonl`` → ``messages.attempts.jsonl``, ``attempts_store_for``), one line
each once answered, and are read back too: a separate file, so that the store stays one delivery a line.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from enum import Enum
from fractions import Fraction
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

Mode = Literal["ok", "down", "slow", "rate-limited", "flaky"]
MODES: tuple[Mode, ...] = ("ok", "down", "slow", "rate-limited", "flaky")
RetryAfterFormat = Literal["seconds", "http-date"]
RETRY_AFTER_FORMATS: tuple[RetryAfterFormat, ...] = ("seconds", "http-date")

#: Seconds a rate-limited gateway tells the client to wait (``Retry-After``) when ``retryAfterSeconds`` is unset.
RETRY_AFTER_SECONDS = 1
#: Most seconds ``retryAfterSeconds`` may ask for (one day).
MAX_RETRY_AFTER_SECONDS = 86_400
#: Share of sends a flaky gateway fails when ``failRatio`` was never given.
DEFAULT_FAIL_RATIO = 0.5
#: Largest request body read, in bytes.
MAX_BODY_BYTES = 64 * 1024
#: Most seconds ``slowSeconds`` may ask for (a fake must not hang a test run for hours).
MAX_SLOW_SECONDS = 600.0
#: Attempts kept in memory (the newest); older ones are only in the attempts file, if there is one.
MAX_ATTEMPTS = 100_000
#: Characters of a message kept in an attempt (deliveries keep it whole).
ATTEMPT_MESSAGE_MAX_CHARS = 1_000
#: A recipient the gateway accepts: E.164, ``+`` then 8 to 15 digits, the first not 0.
RECIPIENT = re.compile(r"\+[1-9][0-9]{7,14}")

SEND_FIELDS = ("sessionId", "to", "message")
MESSAGE_FIELDS = (*SEND_FIELDS, "idempotencyKey", "deliveredAt")
ATTEMPT_FIELDS = (*SEND_FIELDS, "idempotencyKey", "status", "at", "replayed")
#: The keys ``POST /control`` takes, each with the ``set_mode`` argument it sets.
CONTROL_KEYS = {
    "mode": "mode",
    "slowSeconds": "slow_seconds",
    "retryAfterSeconds": "retry_after_seconds",
    "failRatio": "fail_ratio",
    "retryAfterFormat": "retry_after_format",
}


class StoreError(Exception):
    """The store file holds something that is not a delivered message (or the attempts file, an attempt)."""


class SettingError(ValueError):
    """A ``/control`` key (or a constructor or command option) with a value the gateway cannot use."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class _Keep(Enum):
    """A default meaning "leave this setting as it is" where ``None`` means "clear it"."""

    KEEP = "keep"


KEEP = _Keep.KEEP


@dataclass(frozen=True)
class Answer:
    """What the gateway answers one request: status, JSON body and extra headers."""

    status: HTTPStatus
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def attempts_store_for(store: Path) -> Path:
    """The attempts file kept beside ``store``: ``messages.jsonl`` → ``messages.attempts.jsonl``."""
    return store.with_name(f"{store.stem}.attempts{store.suffix}")


class FakeGateway:
    """The fake gateway's state and its HTTP server. Thread-safe; one lock guards messages, attempts and mode."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sessions: Iterable[str] = ("default",),
        mode: Mode = "ok",
        slow_seconds: float = 5.0,
        retry_after_seconds: int | None = None,
        fail_ratio: float = DEFAULT_FAIL_RATIO,
        retry_after_format: RetryAfterFormat = "seconds",
        store: Path | str | None = None,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self.sessions = frozenset(sessions)
        self.mode: Mode = _check_mode(mode)
        self.slow_seconds = _check_slow_seconds(slow_seconds)
        self.retry_after_seconds = _check_retry_after_seconds(retry_after_seconds)
        self.fail_ratio = _check_fail_ratio(fail_ratio)
        self.retry_after_format = _check_retry_after_format(retry_after_format)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise SettingError("max_attempts", f"max_attempts must be a whole number from 1, got {max_attempts!r}")
        self.store = Path(store) if store is not None else None
        self.attempts_store = attempts_store_for(self.store) if self.store is not None else None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._messages: list[dict[str, Any]] = []
        self._by_key: dict[str, dict[str, Any]] = {}
        self._attempts: deque[dict[str, Any]] = deque(maxlen=max_attempts)
        self._attempts_total = 0
        #: Sends received in flaky mode since the last change of settings.
        self._flaky_count = 0
        if self.store is not None and self.attempts_store is not None:
            for record in _load_json_lines(self.store, required=MESSAGE_FIELDS, what="delivered message"):
                self._remember(record)
            attempts = _load_json_lines(self.attempts_store, required=ATTEMPT_FIELDS, what="attempt")
            # Written as answered, listed by arrival (a slow send is answered after later ones).
            self._attempts.extend(sorted(attempts, key=lambda a: str(a["at"])))
            self._attempts_total = len(attempts)
        self._server = _Server((host, port), _Handler, gateway=self)
        self._thread: threading.Thread | None = None

    # --- running ------------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> FakeGateway:
        """Serve in a background thread; returns ``self``."""
        self._thread = threading.Thread(target=self.serve_forever, name=f"fake-gateway-{self.port}", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until ``stop()`` is called from another."""
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        """Stop serving, wake requests sleeping in slow mode, and close the socket."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeGateway:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- state --------------------------------------------------------------------------------------

    def messages(self) -> list[dict[str, Any]]:
        """The delivered messages, oldest first (copies)."""
        with self._lock:
            return [dict(m) for m in self._messages]

    def attempts(self) -> list[dict[str, Any]]:
        """The ``POST /send`` requests received (the newest ``max_attempts``), oldest first (copies)."""
        with self._lock:
            return [dict(a) for a in self._attempts]

    @property
    def attempts_total(self) -> int:
        """Every ``POST /send`` received, including those no longer kept in memory."""
        with self._lock:
            return self._attempts_total

    def settings(self) -> dict[str, Any]:
        """The behaviour as ``POST /control`` names it."""
        with self._lock:
            return {
                "mode": self.mode,
                "slowSeconds": self.slow_seconds,
                "retryAfterSeconds": self.retry_after_seconds,
                "failRatio": self.fail_ratio,
                "retryAfterFormat": self.retry_after_format,
            }

    def set_mode(
        self,
        mode: str,
        *,
        slow_seconds: float | None = None,
        retry_after_seconds: int | _Keep | None = KEEP,
        fail_ratio: float | None = None,
        retry_after_format: str | None = None,
    ) -> None:
        """Switch behaviour. Every value is checked before any changes (``SettingError`` names the bad one).

        ``None`` (``KEEP`` for ``retry_after_seconds``, where ``None`` clears it) leaves a setting as it is. The
        flaky count starts again.
        """
        checked = _check_mode(mode)
        delay = self.slow_seconds if slow_seconds is None else _check_slow_seconds(slow_seconds)
        retry_after = (
            self.retry_after_seconds if retry_after_seconds is KEEP else _check_retry_after_seconds(retry_after_seconds)
        )
        ratio = self.fail_ratio if fail_ratio is None else _check_fail_ratio(fail_ratio)
        date_format = (
            self.retry_after_format if retry_after_format is None else _check_retry_after_format(retry_after_format)
        )
        with self._lock:
            self.mode, self.slow_seconds, self.retry_after_seconds = checked, delay, retry_after
            self.fail_ratio, self.retry_after_format = ratio, date_format
            self._flaky_count = 0
        logger.info(
            "fake gateway: mode %s (slowSeconds %s, retryAfterSeconds %s, failRatio %s, retryAfterFormat %s)",
            checked,
            delay,
            retry_after,
            ratio,
            date_format,
        )

    def deliver(self, *, session_id: str, to: str, message: str, idempotency_key: str) -> tuple[dict[str, Any], bool]:
        """Record one message unless its key was seen. Returns (the delivery, whether it was a replay)."""
        with self._lock:
            if (first := self._by_key.get(idempotency_key)) is not None:
                return dict(first), True
            record = {
                "id": f"msg_{uuid.uuid4().hex}",
                "sessionId": session_id,
                "to": to,
                "message": message,
                "idempotencyKey": idempotency_key,
                "deliveredAt": _timestamp(datetime.now(UTC)),
            }
            if self.store is not None:
                # Written (and flushed to the OS) before the answer: a SIGKILL after a 200 loses nothing.
                _append_json_line(self.store, record)
            self._remember(record)
            return dict(record), False

    def _remember(self, record: dict[str, Any]) -> None:
        self._messages.append(record)
        self._by_key.setdefault(record["idempotencyKey"], record)

    def sleep_if_slow(self) -> None:
        """In slow mode, wait ``slow_seconds`` (cut short by ``stop()``)."""
        if self.mode == "slow":
            self._stopping.wait(self.slow_seconds)

    # --- answering POST /send -----------------------------------------------------------------------

    def answer_send(self, body: bytes | Answer, idempotency_key: str | None) -> Answer:
        """Answer one ``POST /send`` and list it in the attempts. ``body`` is an ``Answer`` already given
        when the request could not even be read (a bad ``Content-Length``)."""
        payload = _lenient_json_object(body) if isinstance(body, bytes) else None
        attempt = self._begin_attempt(payload, idempotency_key)
        answer = Answer(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "the fake gateway failed; see its log"})
        try:
            answer = body if isinstance(body, Answer) else self._answer_send(body, payload, idempotency_key)
        finally:
            self._finish_attempt(attempt, answer)
        return answer

    def _answer_send(self, body: bytes, payload: dict[str, Any] | None, key: str | None) -> Answer:
        fails = False
        with self._lock:
            mode, retry_after, date_format = self.mode, self.retry_after_seconds, self.retry_after_format
            if mode == "flaky":
                self._flaky_count += 1
                fails = _flaky_fails(self._flaky_count, self.fail_ratio)
        if mode == "down" or (mode == "flaky" and fails):
            headers = _retry_after_header(retry_after, date_format)
            return Answer(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "Gateway unavailable"}, headers)
        if mode == "rate-limited":
            seconds = RETRY_AFTER_SECONDS if retry_after is None else retry_after
            return Answer(
                HTTPStatus.TOO_MANY_REQUESTS, {"error": "Too many requests"}, _retry_after_header(seconds, date_format)
            )
        self.sleep_if_slow()
        if payload is None:
            return _bad_request("body", "the body must be a JSON object")
        for name in SEND_FIELDS:
            value = payload.get(name)
            if not isinstance(value, str) or not value.strip():
                return _bad_request(name, f"{name} is required and must be a non-empty string")
        if not key:
            return _bad_request("Idempotency-Key", "the Idempotency-Key header is required")
        if not RECIPIENT.fullmatch(payload["to"]):
            return Answer(
                HTTPStatus.BAD_REQUEST,
                {
                    "error": f"invalid recipient: {payload['to'][:40]!r} is not an E.164 number "
                    "(+ then 8 to 15 digits, the first not 0)",
                    "field": "to",
                },
            )
        if payload["sessionId"] not in self.sessions:
            return Answer(HTTPStatus.NOT_FOUND, {"error": "Session not found"})
        record, replayed = self.deliver(
            session_id=payload["sessionId"], to=payload["to"], message=payload["message"], idempotency_key=key
        )
        headers = {"Idempotent-Replayed": "true"} if replayed else {}
        return Answer(HTTPStatus.OK, {"status": "sent", "id": record["id"]}, headers)

    def _begin_attempt(self, payload: dict[str, Any] | None, idempotency_key: str | None) -> dict[str, Any]:
        fields = payload or {}
        message = fields.get("message")
        attempt = {
            "sessionId": _plain(fields.get("sessionId")),
            "to": _plain(fields.get("to")),
            "message": _plain(message)[:ATTEMPT_MESSAGE_MAX_CHARS] if isinstance(message, str) else _plain(message),
            "idempotencyKey": idempotency_key or None,
            "status": None,
            "at": _timestamp(datetime.now(UTC)),
            "replayed": False,
        }
        with self._lock:
            self._attempts.append(attempt)
            self._attempts_total += 1
        return attempt

    def _finish_attempt(self, attempt: dict[str, Any], answer: Answer) -> None:
        with self._lock:
            attempt["status"] = int(answer.status)
            attempt["replayed"] = "Idempotent-Replayed" in answer.headers
            if self.attempts_store is not None:
                _append_json_line(self.attempts_store, attempt)


def _retry_after_header(seconds: int | None, date_format: RetryAfterFormat) -> dict[str, str]:
    """The ``Retry-After`` header for a wait of ``seconds`` (none for ``None``) in ``date_format``."""
    if seconds is None:
        return {}
    if date_format == "seconds":
        return {"Retry-After": str(seconds)}
    now = datetime.now(UTC)
    # An HTTP date has whole seconds: round now up so that the date is never sooner than asked.
    whole_second = now.replace(microsecond=0) + timedelta(seconds=1 if now.microsecond else 0)
    return {"Retry-After": format_datetime(whole_second + timedelta(seconds=seconds), usegmt=True)}


def _flaky_fails(count: int, ratio: float) -> bool:
    """Whether the ``count``-th flaky send (from 1) fails: ``floor(count * ratio)`` grows at ``count``.

    Exact fractions (``0.29`` is 29/100, not the float below it), so that ``floor(100 * 0.29)`` is 29.
    """
    share = Fraction(str(ratio))
    return math.floor(count * share) > math.floor((count - 1) * share)


def _bad_request(field: str, message: str) -> Answer:
    return Answer(HTTPStatus.BAD_REQUEST, {"error": f"invalid {field}: {message}", "field": field})


def _lenient_json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or ``None`` if it is not one."""
    try:
        payload = json.loads(body or b"null")
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _plain(value: Any) -> Any:
    """A request's field as an attempt keeps it: strings, numbers, booleans and null as they are, else JSON text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, ensure_ascii=False)[:ATTEMPT_MESSAGE_MAX_CHARS]


def _timestamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _check_mode(mode: Any) -> Mode:
    if not isinstance(mode, str) or mode not in MODES:
        raise SettingError("mode", f"unknown mode {mode!r}; known modes: {', '.join(MODES)}")
    return mode  # narrowed to Mode by the membership test


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _check_slow_seconds(value: Any) -> float:
    if not _is_number(value) or not 0 <= value <= MAX_SLOW_SECONDS:
        raise SettingError("slowSeconds", f"slowSeconds must be a number from 0 to {MAX_SLOW_SECONDS:g}, got {value!r}")
    return float(value)


def _check_retry_after_seconds(value: Any) -> int | None:
    """A whole number of seconds (``Retry-After`` has no fractions), or ``None`` for no header."""
    if value is None:
        return None
    if _is_number(value) and float(value).is_integer() and 0 <= value <= MAX_RETRY_AFTER_SECONDS:
        return int(value)
    raise SettingError(
        "retryAfterSeconds",
        f"retryAfterSeconds must be a whole number from 0 to {MAX_RETRY_AFTER_SECONDS}, or null for none; "
        f"got {value!r}",
    )


def _check_fail_ratio(value: Any) -> float:
    if not _is_number(value) or not 0 <= value <= 1:
        raise SettingError("failRatio", f"failRatio must be a number from 0 to 1, got {value!r}")
    return float(value)


def _check_retry_after_format(value: Any) -> RetryAfterFormat:
    if not isinstance(value, str) or value not in RETRY_AFTER_FORMATS:
        raise SettingError(
            "retryAfterFormat", f"retryAfterFormat must be one of: {', '.join(RETRY_AFTER_FORMATS)}; got {value!r}"
        )
    return value  # narrowed to RetryAfterFormat by the membership test


def _append_json_line(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(record, ensure_ascii=False) + "\n")


def _load_json_lines(path: Path, *, required: tuple[str, ...], what: str) -> list[dict[str, Any]]:
    """Read the records kept in ``path``. A torn last line (killed mid-write) is cut off the file."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        logger.warning("fake gateway: %s ends in a torn record; dropping its last %d bytes", path, len(data) - keep)
        with path.open("r+b") as file:
            file.truncate(keep)
        data = data[:keep]
    records = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise StoreError(f"{path}, line {number}: not JSON ({exc}); fix or remove that line") from None
        if not isinstance(record, dict):
            raise StoreError(f"{path}, line {number}: not a {what}; fix or remove that line")
        missing = [f for f in required if f not in record]
        if missing:
            raise StoreError(f"{path}, line {number}: missing {', '.join(missing)}; fix or remove that line")
        records.append(record)
    return records


class _Server(ThreadingHTTPServer):
    """The HTTP server, holding the gateway its handlers serve."""

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, gateway: FakeGateway
    ) -> None:
        super().__init__(address, handler)
        self.gateway = gateway


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeWhatsAppGateway/1"
    # HTTP/1.0: one request per connection, so nothing is served over an old connection after stop().
    protocol_version = "HTTP/1.0"
    #: Seconds a connection may take to send its request.
    timeout = 30

    @property
    def gateway(self) -> FakeGateway:
        server = self.server
        assert isinstance(server, _Server)
        return server.gateway

    # --- routing ------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/messages":
            self._answer(Answer(HTTPStatus.OK, self.gateway.messages()))
        elif path == "/attempts":
            gateway = self.gateway
            # The total first: an attempt arriving in between is then listed but not yet counted, never the reverse.
            total = gateway.attempts_total
            self._answer(Answer(HTTPStatus.OK, gateway.attempts(), {"Attempts-Total": str(total)}))
        elif path == "/health":
            self._answer(Answer(HTTPStatus.OK, {"status": "ok", "mode": self.gateway.mode}))
        elif path in ("/send", "/control"):
            self._answer(Answer(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"use POST {path}"}, {"Allow": "POST"}))
        else:
            self._answer(_not_found(path))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self._read_body()
        if path == "/send":
            key = (self.headers.get("Idempotency-Key") or "").strip() or None
            self._answer(self.gateway.answer_send(body, key))
        elif isinstance(body, Answer):
            self._answer(body)
        elif path == "/control":
            self._answer(self._control(body))
        elif path in ("/messages", "/attempts", "/health"):
            self._answer(Answer(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"use GET {path}"}, {"Allow": "GET"}))
        else:
            self._answer(_not_found(path))

    # --- endpoints ----------------------------------------------------------------------------------

    def _control(self, body: bytes) -> Answer:
        payload = _lenient_json_object(body)
        if payload is None:
            return _bad_request("body", "the body must be a JSON object")
        unknown = [key for key in payload if key not in CONTROL_KEYS]
        if unknown:
            return _bad_request(unknown[0], f"unknown key {unknown[0]!r}; known keys: {', '.join(CONTROL_KEYS)}")
        if "mode" in payload and (not isinstance(payload["mode"], str) or payload["mode"] not in MODES):
            return _bad_request("mode", f"mode must be one of: {', '.join(MODES)}")
        changes: dict[str, Any] = {CONTROL_KEYS[key]: value for key, value in payload.items() if key != "mode"}
        try:
            self.gateway.set_mode(payload.get("mode", self.gateway.mode), **changes)
        except SettingError as exc:
            return _bad_request(exc.field, str(exc))
        return Answer(HTTPStatus.OK, {"status": "ok", **self.gateway.settings()})

    # --- helpers ------------------------------------------------------------------------------------

    def _read_body(self) -> bytes | Answer:
        """The request body, or the ``400``/``413`` answer for a bad length."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return _bad_request("Content-Length", "Content-Length must be a whole number")
        if length > MAX_BODY_BYTES:
            return Answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {MAX_BODY_BYTES} bytes"})
        return self.rfile.read(length) if length > 0 else b""

    def _answer(self, answer: Answer) -> None:
        data = json.dumps(answer.body, ensure_ascii=False).encode("utf-8")
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("fake gateway: %s %s", self.address_string(), format % args)


def _not_found(path: str) -> Answer:
    return Answer(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {path}"})
