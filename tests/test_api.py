"""The JSON API over HTTP (Django's test client): POST /api/send-message and POST /api/queue/retry-all-failed."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client

from queueing.models import FailedJob

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "test-token-0123456789"


@pytest.fixture(autouse=True)
def api_token(configure: Any) -> None:
    configure(API_TOKEN=TOKEN)


def post(client: Client, path: str, body: Any, *, token: str | None = TOKEN, raw: bool = False) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body if raw else json.dumps(body)
    return client.post(path, data=data, content_type="application/json", headers=headers)


def test_send_message_queues_the_message_and_answers_202_with_its_job_id(client: Client, broker: redis.Redis) -> None:
    response = post(client, "/api/send-message", {"sessionId": "default", "to": "+15550001", "message": "hi"})

    assert response.status_code == 202
    job_id = response.json()["jobId"]
    [raw] = broker.lrange("whatsapp-send", 0, -1)
    message = json.loads(raw)
    assert message["headers"]["id"] == job_id
    assert message["headers"]["task"] == "messaging.tasks.send_whatsapp_message"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"to": "+15550001", "message": "hi"}, "sessionId"),
        ({"sessionId": "default", "to": "not a number", "message": "hi"}, "to"),
        ({"sessionId": "default", "to": "+15550001", "message": ""}, "message"),
        ({"sessionId": "default", "to": "+15550001", "message": 5}, "message"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_nothing_is_queued(
    client: Client, broker: redis.Redis, body: dict[str, Any], field: str
) -> None:
    response = post(client, "/api/send-message", body)

    assert response.status_code == 400
    assert field in response.json()["fields"]
    assert field in response.json()["error"]
    assert broker.llen("whatsapp-send") == 0


def test_a_body_that_is_not_json_is_a_400(client: Client, broker: redis.Redis) -> None:
    response = post(client, "/api/send-message", "{not json", raw=True)

    assert response.status_code == 400
    assert broker.llen("whatsapp-send") == 0


def test_requests_without_the_token_are_refused_with_401(client: Client, broker: redis.Redis) -> None:
    body = {"sessionId": "default", "to": "+15550001", "message": "hi"}

    assert post(client, "/api/send-message", body, token=None).status_code == 401
    wrong = post(client, "/api/send-message", body, token="wrong")
    assert wrong.status_code == 401
    assert "Bearer" in wrong.json()["error"]
    assert broker.llen("whatsapp-send") == 0


def test_a_token_configured_as_its_sha256_digest_is_accepted(
    client: Client, broker: redis.Redis, configure: Any
) -> None:
    configure(API_TOKEN="sha256:" + hashlib.sha256(b"plain-secret").hexdigest())
    body = {"sessionId": "default", "to": "+15550001", "message": "hi"}

    assert post(client, "/api/send-message", body, token="plain-secret").status_code == 202
    assert post(client, "/api/send-message", body, token=TOKEN).status_code == 401


def test_a_staff_session_with_its_csrf_token_may_call_the_api(broker: redis.Redis) -> None:
    staff = User.objects.create_user("ops", password="pw-123456789", is_staff=True)
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    body = json.dumps({"sessionId": "default", "to": "+15550001", "message": "hi"})

    without_csrf = client.post("/api/send-message", body, content_type="application/json")
    client.get("/admin/")  # sets the csrftoken cookie
    csrf = client.cookies["csrftoken"].value
    with_csrf = client.post("/api/send-message", body, content_type="application/json", headers={"X-CSRFToken": csrf})

    assert without_csrf.status_code == 403
    assert with_csrf.status_code == 202


def test_an_empty_api_token_setting_lets_no_bearer_in(client: Client, configure: Any, broker: redis.Redis) -> None:
    configure(API_TOKEN="")
    body = {"sessionId": "default", "to": "+15550001", "message": "hi"}

    assert post(client, "/api/send-message", body, token="anything").status_code == 401


def test_retry_all_failed_answers_in_the_seeds_shape(client: Client, make_failed_job: Any, broker: redis.Redis) -> None:
    send = {"task_name": "messaging.tasks.send_whatsapp_message", "args": ["default", "+15550001", "hi"]}
    make_failed_job(queue="whatsapp-send", **send)
    make_failed_job(queue="whatsapp-send", status=FailedJob.Status.DEAD, **send)

    first = post(client, "/api/queue/retry-all-failed", {"queueName": "whatsapp-send"})
    second = post(client, "/api/queue/retry-all-failed", {"queueName": "whatsapp-send"})

    assert first.status_code == 200
    assert first.json() == {"success": True, "queueName": "whatsapp-send", "total": 2, "retried": 2}
    assert second.json() == {"success": True, "queueName": "whatsapp-send", "total": 0, "retried": 0}
    assert broker.llen("whatsapp-send") == 2


def test_retry_all_failed_on_an_unknown_queue_is_a_404_listing_the_known_ones(client: Client) -> None:
    response = post(client, "/api/queue/retry-all-failed", {"queueName": "whatsap-send"})

    assert response.status_code == 404
    assert response.json()["error"] == "unknown queue 'whatsap-send'; known queues: default, whatsapp-send"
    assert response.json()["knownQueues"] == ["default", "whatsapp-send"]


def test_retry_all_failed_on_a_queue_name_with_a_nul_byte_is_a_404_not_a_500(client: Client) -> None:
    response = post(client, "/api/queue/retry-all-failed", {"queueName": "whatsapp\u0000send"})

    assert response.status_code == 404
    assert response.json()["knownQueues"] == ["default", "whatsapp-send"]
