"""The fake WhatsApp gateway (``messaging/fake_gateway.py``), over real HTTP, and the real client against it.

No database: nothing here asks for one.
"""

from __future__ import annotations

import json
import os
import pickle
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from messaging import gateway as client
from messaging.fake_gateway import FakeGateway, StoreError, attempts_store_for
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


def attempts(url: str) -> list[dict[str, Any]]:
    response = requests.get(f"{url}/attempts", timeout=TIMEOUT_SECONDS)
    response.raise_for_status()
    return response.json()


def statuses(url: str) -> list[int | None]:
    return [a["status"] for a in attempts(url)]


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


@pytest.mark.parametrize("to", ["15550100", "+123", "+1555010", "+1 555 0100", "+015550100", "+1234567890123456"])
def test_a_recipient_that_is_not_e164_is_refused_as_invalid_naming_the_field(gateway: FakeGateway, to: str) -> None:
    response = send(gateway.url, to=to)

    assert response.status_code == 400
    assert response.json()["field"] == "to"
    assert response.json()["error"].startswith("invalid recipient")
    assert messages(gateway.url) == []


@pytest.mark.parametrize("to", ["+12345678", "+123456789012345"])
def test_a_recipient_of_8_to_15_digits_after_the_plus_is_delivered(gateway: FakeGateway, to: str) -> None:
    assert send(gateway.url, to=to).status_code == 200


def test_an_invalid_recipient_is_refused_before_the_session_is_looked_up(gateway: FakeGateway) -> None:
    response = send(gateway.url, sessionId="invalid-session", to="+1")

    assert response.status_code == 400
    assert response.json()["field"] == "to"


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


def test_a_down_gateway_sends_no_retry_after_unless_asked(gateway: FakeGateway) -> None:
    control(gateway.url, mode="down")

    assert "Retry-After" not in send(gateway.url).headers


def test_a_down_gateway_answers_503_with_the_retry_after_asked_for(gateway: FakeGateway) -> None:
    control(gateway.url, mode="down", retryAfterSeconds=30)

    response = send(gateway.url)

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"


def test_a_rate_limited_gateway_answers_429_with_the_retry_after_asked_for(gateway: FakeGateway) -> None:
    control(gateway.url, mode="rate-limited", retryAfterSeconds=10)

    response = send(gateway.url)

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "10"
    assert messages(gateway.url) == []


def test_retry_after_as_an_http_date_is_never_sooner_than_the_seconds_asked_for(gateway: FakeGateway) -> None:
    control(gateway.url, mode="rate-limited", retryAfterSeconds=10, retryAfterFormat="http-date")
    before = datetime.now(UTC)

    response = send(gateway.url)

    when = parsedate_to_datetime(response.headers["Retry-After"])
    assert response.headers["Retry-After"].endswith(" GMT")
    assert 10 <= (when - before).total_seconds() <= 12


def test_a_cleared_retry_after_leaves_the_rate_limited_default(gateway: FakeGateway) -> None:
    control(gateway.url, mode="rate-limited", retryAfterSeconds=10)

    answer = control(gateway.url, retryAfterSeconds=None).json()

    assert answer["retryAfterSeconds"] is None
    assert send(gateway.url).headers["Retry-After"] == "1"


@pytest.mark.parametrize(
    ("fail_ratio", "expected"),
    [
        (0.5, [200, 503, 200, 503, 200, 503, 200, 503]),
        (0.25, [200, 200, 200, 503, 200, 200, 200, 503]),
        (1, [503] * 8),
        (0, [200] * 8),
    ],
)
def test_a_flaky_gateway_fails_exactly_the_share_asked_for_evenly_spread(
    gateway: FakeGateway, fail_ratio: float, expected: list[int]
) -> None:
    control(gateway.url, mode="flaky", failRatio=fail_ratio)

    answered = [send(gateway.url, key=f"k-{n}").status_code for n in range(8)]

    assert answered == expected
    assert len(messages(gateway.url)) == expected.count(200)


def test_a_flaky_gateway_fails_floor_n_times_the_ratio_of_n_sends(gateway: FakeGateway) -> None:
    # 0.29 is just above the float it is stored as: counted as 29/100, 100 sends fail 29 times, not 28.
    control(gateway.url, mode="flaky", failRatio=0.29)

    answered = [send(gateway.url, key=f"k-{n}").status_code for n in range(100)]

    assert answered.count(503) == 29
    assert answered[:7] == [200, 200, 200, 503, 200, 200, 503]


def test_a_failed_flaky_send_carries_the_retry_after_asked_for(gateway: FakeGateway) -> None:
    control(gateway.url, mode="flaky", failRatio=1, retryAfterSeconds=5)

    response = send(gateway.url)

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"


def test_the_flaky_count_starts_again_at_each_control(gateway: FakeGateway) -> None:
    control(gateway.url, mode="flaky", failRatio=0.5)
    assert send(gateway.url, key="k-1").status_code == 200

    control(gateway.url, mode="flaky")

    assert [send(gateway.url, key=f"k-{n}").status_code for n in (2, 3)] == [200, 503]


def test_a_flaky_gateway_delivers_a_message_retried_with_its_key_once(gateway: FakeGateway) -> None:
    # Given a gateway failing every second send, and a first message that went through
    control(gateway.url, mode="flaky", failRatio=0.5)
    assert send(gateway.url, key="first").status_code == 200
    # When the second message fails and is sent again with the same key
    assert send(gateway.url, key="second").status_code == 503
    assert send(gateway.url, key="second").status_code == 200
    # Then it was attempted twice and delivered once
    assert [a["idempotencyKey"] for a in attempts(gateway.url)] == ["first", "second", "second"]
    assert [m["idempotencyKey"] for m in messages(gateway.url)] == ["first", "second"]


def test_control_answers_every_setting(gateway: FakeGateway) -> None:
    response = control(gateway.url, mode="flaky", failRatio=0.25, retryAfterSeconds=7)

    assert response.json() == {
        "status": "ok",
        "mode": "flaky",
        "slowSeconds": 5.0,
        "retryAfterSeconds": 7,
        "failRatio": 0.25,
        "retryAfterFormat": "seconds",
    }


def test_control_keeps_the_settings_it_is_not_given(gateway: FakeGateway) -> None:
    control(gateway.url, mode="flaky", failRatio=0.25, retryAfterSeconds=7, slowSeconds=1)

    answer = control(gateway.url, mode="down").json()

    assert (answer["failRatio"], answer["retryAfterSeconds"], answer["slowSeconds"]) == (0.25, 7, 1.0)


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
    [
        ({"mode": "sideways"}, "mode"),
        ({"mode": "slow", "slowSeconds": -1}, "slowSeconds"),
        ({"mode": "down", "retryAfterSeconds": -1}, "retryAfterSeconds"),
        ({"mode": "down", "retryAfterSeconds": 1.5}, "retryAfterSeconds"),
        ({"mode": "down", "retryAfterSeconds": "10"}, "retryAfterSeconds"),
        ({"mode": "down", "retryAfterSeconds": True}, "retryAfterSeconds"),
        ({"mode": "flaky", "failRatio": 1.5}, "failRatio"),
        ({"mode": "flaky", "failRatio": "half"}, "failRatio"),
        ({"mode": "down", "retryAfterFormat": "minutes"}, "retryAfterFormat"),
        ({"mode": "down", "failratio": 0.5}, "failratio"),
    ],
)
def test_control_refuses_an_unknown_mode_a_bad_setting_or_an_unknown_key_and_changes_nothing(
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


def test_a_gateway_started_flaky_with_retry_after_fails_its_share_with_that_retry_after() -> None:
    with FakeGateway(port=0, mode="flaky", fail_ratio=0.5, retry_after_seconds=3) as server:
        first, second = send(server.url, key="k-1"), send(server.url, key="k-2")

    assert (first.status_code, second.status_code) == (200, 503)
    assert second.headers["Retry-After"] == "3"


def test_a_gateway_started_down_answers_503() -> None:
    with FakeGateway(port=0, mode="down") as server:
        assert send(server.url).status_code == 503


# --- attempts -------------------------------------------------------------------------------------------


def test_attempts_list_every_send_oldest_first_with_the_status_answered(gateway: FakeGateway) -> None:
    # Given sends answered in each way
    send(gateway.url, key="k-1", message="one")
    send(gateway.url, key="k-1", message="one")  # a replay
    send(gateway.url, key="k-2", sessionId="invalid-session")
    send(gateway.url, key="k-3", to="+1")
    control(gateway.url, mode="down")
    send(gateway.url, key="k-4")
    control(gateway.url, mode="rate-limited")
    send(gateway.url, key="k-5")

    listed = attempts(gateway.url)

    # Then each is listed in order, with what it carried and the status it got
    assert [(a["idempotencyKey"], a["status"], a["replayed"]) for a in listed] == [
        ("k-1", 200, False),
        ("k-1", 200, True),
        ("k-2", 404, False),
        ("k-3", 400, False),
        ("k-4", 503, False),
        ("k-5", 429, False),
    ]
    assert listed[0] == {
        "sessionId": "default",
        "to": "+15550100",
        "message": "one",
        "idempotencyKey": "k-1",
        "status": 200,
        "at": listed[0]["at"],
        "replayed": False,
    }
    assert [a["at"] for a in listed] == sorted(a["at"] for a in listed)
    assert datetime.fromisoformat(listed[0]["at"]).tzinfo is not None
    # And the deliveries hide the second send; the attempts do not
    assert len(messages(gateway.url)) == 1


def test_an_attempt_that_carried_nothing_usable_is_listed_with_nulls(gateway: FakeGateway) -> None:
    requests.post(f"{gateway.url}/send", data=b"not json", timeout=TIMEOUT_SECONDS)
    requests.post(f"{gateway.url}/send", json={"to": ["+15550100"]}, timeout=TIMEOUT_SECONDS)

    first, second = attempts(gateway.url)

    assert first == {
        "sessionId": None,
        "to": None,
        "message": None,
        "idempotencyKey": None,
        "status": 400,
        "at": first["at"],
        "replayed": False,
    }
    assert second["to"] == '["+15550100"]'


def test_a_send_being_answered_is_listed_by_arrival_with_no_status_yet(gateway: FakeGateway) -> None:
    # Given a slow send still being answered
    control(gateway.url, mode="slow", slowSeconds=2)
    slow = threading.Thread(target=send, args=(gateway.url, "slow"))
    slow.start()
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not attempts(gateway.url) and time.monotonic() < deadline:
        time.sleep(0.02)
    # When a later send is answered first
    control(gateway.url, mode="ok")
    assert send(gateway.url, key="fast").status_code == 200
    # Then the slow one is listed first, without a status until it is answered
    assert [(a["idempotencyKey"], a["status"]) for a in attempts(gateway.url)] == [("slow", None), ("fast", 200)]
    slow.join(timeout=TIMEOUT_SECONDS)
    assert statuses(gateway.url) == [200, 200]


def test_attempts_keep_the_newest_in_memory_and_count_them_all() -> None:
    with FakeGateway(port=0, max_attempts=3) as server:
        for n in range(5):
            send(server.url, key=f"k-{n}")

        response = requests.get(f"{server.url}/attempts", timeout=TIMEOUT_SECONDS)

    assert [a["idempotencyKey"] for a in response.json()] == ["k-2", "k-3", "k-4"]
    assert response.headers["Attempts-Total"] == "5"


def test_attempts_answer_only_get(gateway: FakeGateway) -> None:
    response = requests.post(f"{gateway.url}/attempts", timeout=TIMEOUT_SECONDS)

    assert response.status_code == 405
    assert response.headers["Allow"] == "GET"


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


def test_attempts_are_kept_beside_the_store_and_read_back_by_arrival(tmp_path: Path) -> None:
    store = tmp_path / "messages.jsonl"
    # Given a gateway that answered a slow send after a later, fast one
    with FakeGateway(port=0, store=store, mode="slow", slow_seconds=2) as first:
        slow = threading.Thread(target=send, args=(first.url, "slow"))
        slow.start()
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while not first.attempts() and time.monotonic() < deadline:
            time.sleep(0.02)
        first.set_mode("down")
        send(first.url, key="fast")
        slow.join(timeout=TIMEOUT_SECONDS)
    # When it is started again on the same store
    with FakeGateway(port=0, store=store) as second:
        listed = attempts(second.url)
    # Then the attempts are back, oldest first, and the store still holds one delivery a line
    assert [(a["idempotencyKey"], a["status"]) for a in listed] == [("slow", 200), ("fast", 503)]
    assert attempts_store_for(store) == tmp_path / "messages.attempts.jsonl"
    assert [json.loads(line)["idempotencyKey"] for line in attempts_store_for(store).read_text().splitlines()] == [
        "fast",
        "slow",
    ]
    assert [json.loads(line)["idempotencyKey"] for line in store.read_text().splitlines()] == ["slow"]


def test_an_attempts_file_with_a_bad_line_is_refused_naming_the_line(tmp_path: Path) -> None:
    store = tmp_path / "messages.jsonl"
    attempts_store_for(store).write_text('{"status": 200}\n')

    with pytest.raises(StoreError, match="line 1: missing"):
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


def test_the_client_carries_the_status_and_the_retry_after_of_a_503(gateway: FakeGateway, settings: Any) -> None:
    settings.WHATSAPP_GATEWAY_URL = gateway.url
    gateway.set_mode("down", retry_after_seconds=30)

    with pytest.raises(client.GatewayUnavailable, match="503") as raised:
        client_send()

    assert (raised.value.status_code, raised.value.retry_after_seconds) == (503, 30.0)


def test_the_client_reads_a_retry_after_given_as_an_http_date(gateway: FakeGateway, settings: Any) -> None:
    settings.WHATSAPP_GATEWAY_URL = gateway.url
    gateway.set_mode("rate-limited", retry_after_seconds=10, retry_after_format="http-date")

    with pytest.raises(client.GatewayUnavailable, match="429") as raised:
        client_send()

    assert raised.value.status_code == 429
    assert raised.value.retry_after_seconds is not None
    assert 9 <= raised.value.retry_after_seconds <= 11


def test_the_client_carries_no_retry_after_when_the_gateway_gave_none(gateway: FakeGateway, settings: Any) -> None:
    settings.WHATSAPP_GATEWAY_URL = gateway.url
    gateway.set_mode("down")

    with pytest.raises(client.GatewayUnavailable) as raised:
        client_send()

    assert raised.value.retry_after_seconds is None


def test_the_client_raises_invalid_recipient_naming_the_field(gateway: FakeGateway, settings: Any) -> None:
    settings.WHATSAPP_GATEWAY_URL = gateway.url

    with pytest.raises(client.InvalidRecipient, match=r"\(400\).*invalid recipient") as raised:
        client.send(session_id="default", to="+1", message="hello", idempotency_key="k")

    assert isinstance(raised.value, PermanentError)
    assert (raised.value.status_code, raised.value.field) == (400, "to")


def test_the_client_raises_session_not_found_for_an_unknown_session(gateway: FakeGateway, settings: Any) -> None:
    settings.WHATSAPP_GATEWAY_URL = gateway.url

    with pytest.raises(client.SessionNotFound, match="404") as raised:
        client_send(session_id="invalid-session")

    assert isinstance(raised.value, PermanentError)
    assert (raised.value.status_code, raised.value.field) == (404, None)


def test_the_client_raises_a_plain_refusal_for_another_bad_field(gateway: FakeGateway, settings: Any) -> None:
    settings.WHATSAPP_GATEWAY_URL = gateway.url

    with pytest.raises(client.GatewayRefused, match="400") as raised:
        client.send(session_id="default", to="+15550100", message=" ", idempotency_key="k")

    assert type(raised.value) is client.GatewayRefused
    assert raised.value.field == "message"


@pytest.mark.parametrize(
    "exc",
    [
        client.GatewayUnavailable("gateway answered 429: {}", status_code=429, retry_after_seconds=10.0),
        client.InvalidRecipient("gateway refused the message (400): {}", status_code=400, field="to"),
    ],
)
def test_the_client_exceptions_keep_their_details_through_pickle(exc: Exception) -> None:
    copy = pickle.loads(pickle.dumps(exc))

    assert type(copy) is type(exc)
    assert str(copy) == str(exc)
    assert vars(copy) == vars(exc)


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


def test_the_command_starts_flaky_with_the_fail_ratio_and_retry_after_given() -> None:
    command = Command("--port", "0", "--mode", "flaky", "--fail-ratio", "0.5", "--retry-after-seconds", "7")
    try:
        url = command.url()
        assert "flaky (failRatio 0.5, Retry-After 7 s)" in command.output[-1]

        answered = [send(url, key=f"k-{n}") for n in range(4)]

        assert [r.status_code for r in answered] == [200, 503, 200, 503]
        assert answered[1].headers["Retry-After"] == "7"
        assert statuses(url) == [200, 503, 200, 503]
    finally:
        command.kill_if_running()


def test_the_command_starts_rate_limited_with_the_retry_after_given() -> None:
    command = Command("--port", "0", "--mode", "rate-limited", "--retry-after-seconds", "10")
    try:
        response = send(command.url())

        assert response.status_code == 429
        assert response.headers["Retry-After"] == "10"
    finally:
        command.kill_if_running()


@pytest.mark.parametrize(
    ("option", "value"), [("--fail-ratio", "2"), ("--retry-after-seconds", "-1"), ("--max-attempts", "0")]
)
def test_the_command_refuses_a_bad_setting_naming_the_option(option: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "fake_whatsapp_gateway", "--port", "0", option, value],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert option in result.stderr
