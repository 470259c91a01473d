"""A fake WhatsApp gateway: a small real HTTP server speaking the protocol of ``messaging/gateway.py``.

``python manage.py fake_whatsapp_gateway`` runs it; tests start it on port 0 in a thread::

    gateway = FakeGateway(port=0).start()
    ... requests.post(gateway.url + "/send", ...) ...
    gateway.stop()

Endpoints (JSON in and out; the request's Content-Type is not checked):

- ``POST /send`` ``{"sessionId", "to", "message"}`` with an ``Idempotency-Key`` header: ``200 {"status":
  "sent", "id": …}``. A key seen before answers that first delivery again (``Idempotent-Replayed: true``)
  and records nothing. ``400`` naming the missing or invalid field (the header included); ``404
  {"error": "Session not found"}`` for a session it does not serve. By mode: ``down`` answers ``503``,
  ``rate-limited`` ``429`` with ``Retry-After``, ``slow`` waits ``slowSeconds`` first (and still delivers,
  even if the client gave up waiting: that is what the idempotency key is for).
- ``GET /messages``: the delivered messages, oldest first, each ``{"id", "sessionId", "to", "message",
  "idempotencyKey", "deliveredAt"}``.
- ``GET /health``: ``200 {"status": "ok", "mode": …}`` in every mode.
- ``POST /control`` ``{"mode": "ok"|"down"|"slow"|"rate-limited", "slowSeconds": n}``: change the mode.

With a store file, each delivery is appended to it as one JSON line before it is answered, and the file is
read back at start: a gateway killed and started again keeps its history and still dedupes.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, cast

logger = logging.getLogger(__name__)

Mode = Literal["ok", "down", "slow", "rate-limited"]
MODES: tuple[Mode, ...] = ("ok", "down", "slow", "rate-limited")

#: Seconds a rate-limited gateway tells the client to wait (``Retry-After``).
RETRY_AFTER_SECONDS = 1
#: Largest request body read, in bytes.
MAX_BODY_BYTES = 64 * 1024
#: Most seconds ``slowSeconds`` may ask for (a fake must not hang a test run for hours).
MAX_SLOW_SECONDS = 600.0

SEND_FIELDS = ("sessionId", "to", "message")


class StoreError(Exception):
    """The store file holds something that is not a delivered message."""


class FakeGateway:
    """The fake gateway's state and its HTTP server. Thread-safe; one lock guards the messages."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sessions: Iterable[str] = ("default",),
        mode: Mode = "ok",
        slow_seconds: float = 5.0,
        store: Path | str | None = None,
    ) -> None:
        self.sessions = frozenset(sessions)
        self.mode: Mode = _check_mode(mode)
        self.slow_seconds = _check_slow_seconds(slow_seconds)
        self.store = Path(store) if store is not None else None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._messages: list[dict[str, Any]] = []
        self._by_key: dict[str, dict[str, Any]] = {}
        if self.store is not None:
            for record in _load_store(self.store):
                self._remember(record)
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.gateway = self  # type: ignore[attr-defined]
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

    def set_mode(self, mode: str, *, slow_seconds: float | None = None) -> None:
        """Switch behaviour; both values are checked before either changes (``ValueError`` names the bad one)."""
        checked = _check_mode(mode)
        delay = self.slow_seconds if slow_seconds is None else _check_slow_seconds(slow_seconds)
        with self._lock:
            self.mode, self.slow_seconds = checked, delay
        logger.info("fake gateway: mode %s (slowSeconds %s)", self.mode, self.slow_seconds)

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
                "deliveredAt": datetime.now(UTC).isoformat(timespec="milliseconds"),
            }
            if self.store is not None:
                # Written (and flushed to the OS) before the answer: a SIGKILL after a 200 loses nothing.
                with self.store.open("a", encoding="utf-8") as file:
                    file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._remember(record)
            return dict(record), False

    def _remember(self, record: dict[str, Any]) -> None:
        self._messages.append(record)
        self._by_key.setdefault(record["idempotencyKey"], record)

    def sleep_if_slow(self) -> None:
        """In slow mode, wait ``slow_seconds`` (cut short by ``stop()``)."""
        if self.mode == "slow":
            self._stopping.wait(self.slow_seconds)


def _check_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known modes: {', '.join(MODES)}")
    return cast(Mode, mode)


def _check_slow_seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_SLOW_SECONDS:
        raise ValueError(f"slowSeconds must be a number from 0 to {MAX_SLOW_SECONDS:g}, got {value!r}")
    return float(value)


def _load_store(path: Path) -> list[dict[str, Any]]:
    """Read the deliveries kept in ``path``. A torn last line (killed mid-write) is cut off the file."""
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
        missing = [f for f in (*SEND_FIELDS, "idempotencyKey", "deliveredAt") if f not in record]
        if missing:
            raise StoreError(f"{path}, line {number}: missing {', '.join(missing)}; fix or remove that line")
        records.append(record)
    return records


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeWhatsAppGateway/1"
    # HTTP/1.0: one request per connection, so nothing is served over an old connection after stop().
    protocol_version = "HTTP/1.0"
    #: Seconds a connection may take to send its request.
    timeout = 30

    @property
    def gateway(self) -> FakeGateway:
        return self.server.gateway  # type: ignore[attr-defined,no-any-return]

    # --- routing ------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/messages":
            self._reply(HTTPStatus.OK, self.gateway.messages())
        elif path == "/health":
            self._reply(HTTPStatus.OK, {"status": "ok", "mode": self.gateway.mode})
        elif path in ("/send", "/control"):
            self._reply(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"use POST {path}"}, allow="POST")
        else:
            self._not_found(path)

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self._read_body()
        if body is None:
            return  # already answered
        if path == "/send":
            self._send(body)
        elif path == "/control":
            self._control(body)
        elif path in ("/messages", "/health"):
            self._reply(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"use GET {path}"}, allow="GET")
        else:
            self._not_found(path)

    # --- endpoints ----------------------------------------------------------------------------------

    def _send(self, body: bytes) -> None:
        gateway = self.gateway
        if gateway.mode == "down":
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "Gateway unavailable"})
            return
        if gateway.mode == "rate-limited":
            self._reply(HTTPStatus.TOO_MANY_REQUESTS, {"error": "Too many requests"}, retry_after=RETRY_AFTER_SECONDS)
            return
        gateway.sleep_if_slow()
        payload = self._json_object(body)
        if payload is None:
            return
        for name in SEND_FIELDS:
            value = payload.get(name)
            if not isinstance(value, str) or not value.strip():
                self._bad_request(name, f"{name} is required and must be a non-empty string")
                return
        key = (self.headers.get("Idempotency-Key") or "").strip()
        if not key:
            self._bad_request("Idempotency-Key", "the Idempotency-Key header is required")
            return
        if payload["sessionId"] not in gateway.sessions:
            self._reply(HTTPStatus.NOT_FOUND, {"error": "Session not found"})
            return
        record, replayed = gateway.deliver(
            session_id=payload["sessionId"], to=payload["to"], message=payload["message"], idempotency_key=key
        )
        extra = {"idempotent_replayed": "true"} if replayed else {}
        self._reply(HTTPStatus.OK, {"status": "sent", "id": record["id"]}, **extra)

    def _control(self, body: bytes) -> None:
        payload = self._json_object(body)
        if payload is None:
            return
        mode = payload.get("mode", self.gateway.mode)
        if not isinstance(mode, str) or mode not in MODES:
            self._bad_request("mode", f"mode must be one of: {', '.join(MODES)}")
            return
        slow_seconds = payload.get("slowSeconds")
        try:
            self.gateway.set_mode(mode, slow_seconds=slow_seconds)
        except ValueError as exc:
            self._bad_request("slowSeconds", str(exc))
            return
        self._reply(
            HTTPStatus.OK, {"status": "ok", "mode": self.gateway.mode, "slowSeconds": self.gateway.slow_seconds}
        )

    # --- helpers ------------------------------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        """The request body, or ``None`` after answering 400/413 for a bad length."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._bad_request("Content-Length", "Content-Length must be a whole number")
            return None
        if length > MAX_BODY_BYTES:
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {MAX_BODY_BYTES} bytes"})
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _json_object(self, body: bytes) -> dict[str, Any] | None:
        """The body as a JSON object, or ``None`` after answering 400."""
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            self._bad_request("body", "the body must be a JSON object")
            return None
        if not isinstance(payload, dict):
            self._bad_request("body", "the body must be a JSON object")
            return None
        return payload

    def _bad_request(self, field: str, message: str) -> None:
        self._reply(HTTPStatus.BAD_REQUEST, {"error": f"invalid {field}: {message}", "field": field})

    def _not_found(self, path: str) -> None:
        self._reply(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {path}"})

    def _reply(self, status: HTTPStatus, payload: Any, **headers: Any) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-").title(), str(value))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("fake gateway: %s %s", self.address_string(), format % args)
