"""The fake WhatsApp gateway (``messaging/fake_gateway.py``), over real HTTP, and the real client against it.

No database: nothing here asks for one.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from messaging import gateway as client
from messaging.fake_gateway import FakeGateway, StoreError
from queueing.exceptions import PermanentError

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_SECONDS = 5


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    with FakeGateway(port=0, sessions=("default", "other")) as server:
        yield server


def send(url: str, key: str | None = "key-1", **payload: Any) -> requests.Response:
    body = {"sessionId": "default", "to": "+15550100", "message": "hello", **payload}
    headers = {"Idempotency-Key": key} if key is not None else {}
    return requests.post(f"{url}/send", json=body, headers=headers, timeout=TIMEOUT_SECONDS)


def control(url: str, **payload: Any) -> requests.Response:
    return requests.post(f"{url}/control", json=payload, timeout=TIMEOUT_SECONDS)


def messages(url: str) -> list[dict[str, Any]]:
    response = requests.get(f"{url}/messages", timeout=TIMEOUT_SECONDS)
    response.raise_for_status()
    return response.json()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the protocol ---------------------------------------------------------------------------------------


def test_a_sent_message_is_answered_sent_and_listed_in_messages(gateway: FakeGateway) -> None:
    response = send(gateway.url, key="k-1", sessionId="other", to="+15550101", message="hi there")

    assert response.status_code == 200
    assert response.json() == {"status": "sent", "id": response.json()["id"]}
    [delivered] = messages(gateway.url)
    assert delivered["id"] == response.json()["id"]
    assert delivered["sessionId"] == "other"
    assert delivered["to"] == "+15550101"
    assert delivered["message"] == "hi there"
    assert delivered["idempotencyKey"] == "k-1"
    assert delivered["deliveredAt"].endswith("+00:00")


def test_messages_are_listed_oldest_first(gateway: FakeGateway) -> None:
    for n in range(3):
        assert send(gateway.url, key=f"k-{n}", message=f"message {n}").status_code == 200

    assert [m["message"] for m in messages(gateway.url)] == ["message 0", "message 1", "message 2"]


def test_a_repeated_idempotency_key_answers_the_first_delivery_and_records_nothing(
    gateway: FakeGateway,
) -> None:
    first = send(gateway.url, key="same", message="first")

    again = send(gateway.url, key="same", message="second")

    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert [m["message"] for m in messages(gateway.url)] == ["first"]


def test_an_unknown_session_is_not_found_and_records_nothing(gateway: FakeGateway) -> None:
    response = send(gateway.url, sessionId="invalid-session")

    assert response.status_code == 404
    assert response.json() == {"error": "Session not found"}
    assert messages(gateway.url) == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"sessionId": None}, "sessionId"),
        ({"to": ""}, "to"),
        ({"message": 42}, "message"),
    ],
)
def test_a_missing_or_invalid_field_is_refused_naming_the_field(
    gateway: FakeGateway, payload: dict[str, Any], field: str
) -> None:
    body = {"sessionId": "default", "to": "+15550100", "message": "hello", **payload}
    body = {k: v for k, v in body.items() if v is not None}

    response = requests.post(
        f"{gateway.url}/send", json=body, headers={"Idempotency-Key": "k"}, timeout=TIMEOUT_SECONDS
    )

    assert response.status_code == 400
    assert response.json()["field"] == field
    assert field in response.json()["error"]
    assert messages(gateway.url) == []


def test_a_body_that_is_not_a_json_object_is_refused(gateway: FakeGateway) -> None:
    for body in (b"not json", b"[1, 2]"):
        response = requests.post(
            f"{gateway.url}/send", data=body, headers={"Idempotency-Key": "k"}, timeout=TIMEOUT_SECONDS
        )
        assert response.status_code == 400
        assert response.json()["field"] == "body"


def test_a_send_without_an_idempotency_key_is_refused_naming_the_header(gateway: FakeGateway) -> None:
    response = send(gateway.url, key=None)

    assert response.status_code == 400
    assert response.json()["field"] == "Idempotency-Key"
    assert messages(gateway.url) == []


def test_health_answers_ok_with_the_mode(gateway: FakeGateway) -> None:
    response = requests.get(f"{gateway.url}/health", timeout=TIMEOUT_SECONDS)

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "mode": "ok"}


def test_an_unknown_path_is_not_found(gateway: FakeGateway) -> None:
    assert requests.get(f"{gateway.url}/nope", timeout=TIMEOUT_SECONDS).status_code == 404


# --- modes ----------------------------------------------------------------------------------------------


def test_a_down_gateway_answers_503_and_delivers_nothing(gateway: FakeGateway) -> None:
    assert control(gateway.url, mode="down").status_code == 200

    response = send(gateway.url)

    assert response.status_code == 503
    assert messages(gateway.url) == []
    assert requests.get(f"{gateway.url}/health", timeout=TIMEOUT_SECONDS).json()["mode"] == "down"


def test_a_rate_limited_gateway_answers_429_with_retry_after(gateway: FakeGateway) -> None:
    control(gateway.url, mode="rate-limited")

    response = send(gateway.url)

    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert messages(gateway.url) == []


def test_a_slow_gateway_waits_slow_seconds_then_delivers(gateway: FakeGateway) -> None:
    control(gateway.url, mode="slow", slowSeconds=0.5)

    started = time.monotonic()
    response = send(gateway.url)

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.5
    assert len(messages(gateway.url)) == 1


def test_a_gateway_switched_back_to_ok_delivers_again(gateway: FakeGateway) -> None:
    # Given a gateway that was down
    control(gateway.url, mode="down")
    assert send(gateway.url, key="k").status_code == 503
    # When it is switched back
    control(gateway.url, mode="ok")
    # Then the same message goes through, once
    assert send(gateway.url, key="k").status_code == 200
    assert len(messages(gateway.url)) == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [({"mode": "sideways"}, "mode"), ({"mode": "slow", "slowSeconds": -1}, "slowSeconds")],
)
def test_control_refuses_an_unknown_mode_or_a_bad_delay(
    gateway: FakeGateway, payload: dict[str, Any], field: str
) -> None:
    response = control(gateway.url, **payload)

    assert response.status_code == 400
    assert response.json()["field"] == field
    assert gateway.mode == "ok"


def test_control_accepts_a_body_sent_as_curl_sends_it(gateway: FakeGateway) -> None:
    # curl -d sends application/x-www-form-urlencoded; the body is JSON all the same.
    response = requests.post(
        f"{gateway.url}/control",
        data=b'{"mode":"down"}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=TIMEOUT_SECONDS,
    )

    assert response.json()["mode"] == "down"


def test_a_gateway_started_down_answers_503() -> None:
    with FakeGateway(port=0, mode="down") as server:
        assert send(server.url).status_code == 503


# --- the store ------------------------------------------------------------------------------------------


def test_a_gateway_started_again_on_the_same_store_keeps_history_and_dedupes(tmp_path: Path) -> None:
    store = tmp_path / "messages.jsonl"
    with FakeGateway(port=0, store=store) as first:
        sent = send(first.url, key="k-1", message="one").json()
        send(first.url, key="k-2", message="two")

    with FakeGateway(port=0, store=store) as second:
        assert [m["message"] for m in messages(second.url)] == ["one", "two"]
        assert send(second.url, key="k-1", message="one again").json() == sent
        assert len(messages(second.url)) == 2
    assert len(store.read_text().splitlines()) == 2


def test_a_torn_last_line_in_the_store_is_dropped(tmp_path: Path) -> None:
    store = tmp_path / "messages.jsonl"
    with FakeGateway(port=0, store=store) as first:
        send(first.url, key="k-1")
    store.write_text(store.read_text() + '{"id": "msg_torn", "sessionId": "def')

    with FakeGateway(port=0, store=store) as second:
        send(second.url, key="k-2")
        assert [m["idempotencyKey"] for m in messages(second.url)] == ["k-1", "k-2"]
    assert all(json.loads(line) for line in store.read_text().splitlines())


def test_a_store_with_a_bad_line_is_refused_naming_the_line(tmp_path: Path) -> None:
    store = tmp_path / "messages.jsonl"
    store.write_text('{"id": 1}\n')

    with pytest.raises(StoreError, match="line 1"):
        FakeGateway(port=0, store=store)


# --- the real client (messaging.gateway.send) against it --------------------------------------------------


def client_send(session_id: str = "default", key: str = "key-1") -> dict[str, Any]:
    return client.send(session_id=session_id, to="+15550100", message="hello", idempotency_key=key)


def test_the_client_delivers_through_the_gateway(gateway: FakeGateway, settings: Any) -> None:
    settings.WHATSAPP_GATEWAY_URL = gateway.url + "/"

    answer = client_send()

    assert answer["status"] == "sent"
    assert [m["id"] for m in messages(gateway.url)] == [answer["id"]]


@pytest.mark.parametrize("mode", ["down", "rate-limited"])
def test_the_client_raises_gateway_unavailable_when_the_gateway_refuses_for_now(
    gateway: FakeGateway, settings: Any, mode: str
) -> None:
    settings.WHATSAPP_GATEWAY_URL = gateway.url
    gateway.set_mode(mode)

    with pytest.raises(client.GatewayUnavailable):
        client_send()


def test_the_client_raises_gateway_unavailable_when_the_gateway_is_slower_than_its_timeout(
    gateway: FakeGateway, settings: Any
) -> None:
    settings.WHATSAPP_GATEWAY_URL = gateway.url
    settings.WHATSAPP_GATEWAY_TIMEOUT_SECONDS = 0.2
    gateway.set_mode("slow", slow_seconds=2)

    with pytest.raises(client.GatewayUnavailable, match="unreachable"):
        client_send()


def test_the_client_raises_gateway_unavailable_when_nothing_listens(settings: Any) -> None:
    settings.WHATSAPP_GATEWAY_URL = f"http://127.0.0.1:{free_port()}"

    with pytest.raises(client.GatewayUnavailable, match="unreachable"):
        client_send()


def test_the_client_raises_a_permanent_error_for_an_unknown_session(gateway: FakeGateway, settings: Any) -> None:
    settings.WHATSAPP_GATEWAY_URL = gateway.url

    with pytest.raises(PermanentError, match="404"):
        client_send(session_id="invalid-session")


def test_the_client_sends_a_retry_with_the_same_key_only_once(gateway: FakeGateway, settings: Any) -> None:
    settings.WHATSAPP_GATEWAY_URL = gateway.url

    first = client_send(key="origin-task-id")
    second = client_send(key="origin-task-id")

    assert first == second
    assert len(messages(gateway.url)) == 1


# --- the management command -----------------------------------------------------------------------------


class Command:
    """``manage.py fake_whatsapp_gateway`` in a subprocess, its output read line by line in a thread."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "fake_whatsapp_gateway", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for_line(self, pattern: str, *, timeout_seconds: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout_seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.output.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r} within {timeout_seconds}s; got {self.output!r}")

    def url(self) -> str:
        return self.wait_for_line(r"listening on (http://\S+)").group(1)

    def stop(self, sig: signal.Signals) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=TIMEOUT_SECONDS * 2)

    def kill_if_running(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_the_command_keeps_history_and_dedupes_across_a_sigkill(tmp_path: Path) -> None:
    store = tmp_path / "gateway" / "messages.jsonl"
    first = Command("--port", "0", "--store", str(store), "--sessions", "default,other")
    try:
        # Given a gateway that delivered two messages
        url = first.url()
        sent = send(url, key="k-1", message="one").json()
        send(url, key="k-2", message="two", sessionId="other")
        # When it is killed without warning and started again on the same store
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        first.kill_if_running()
    second = Command("--port", "0", "--store", str(store), "--sessions", "default,other")
    try:
        url = second.url()
        # Then its history is intact and a repeated key still sends nothing
        assert [m["message"] for m in messages(url)] == ["one", "two"]
        assert send(url, key="k-1", message="one").json() == sent
        assert len(messages(url)) == 2
        # And SIGTERM stops it cleanly
        assert second.stop(signal.SIGTERM) == 0
        second.wait_for_line(r"stopped")
    finally:
        second.kill_if_running()


def test_the_command_exits_cleanly_on_sigint() -> None:
    command = Command("--port", "0", "--mode", "down")
    try:
        url = command.url()
        assert send(url).status_code == 503

        assert command.stop(signal.SIGINT) == 0
    finally:
        command.kill_if_running()


def test_the_command_refuses_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "fake_whatsapp_gateway", "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
