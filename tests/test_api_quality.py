"""The API over real HTTP (a live server): status codes, JSON errors, authentication, limits, schema and docs."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import redis
import requests
from django.contrib.auth.models import Permission, User
from django.test import Client

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "quality-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SEND = {"sessionId": "default", "to": "+15550001", "message": "hi"}

#: (method, path, a valid JSON body or None)
ENDPOINTS = [
    ("GET", "/api/queue/status", None),
    ("POST", "/api/queue/retry-all-failed", {"queueName": "whatsapp-send"}),
    ("POST", "/api/send-message", SEND),
    ("GET", "/metrics", None),
    ("GET", "/api/queue/groups", None),
    ("POST", "/api/queue/groups/1/retry", {}),
    ("POST", "/api/queue/groups/1/discard", {}),
    ("POST", "/api/queue/groups/1/pause", {}),
    ("POST", "/api/queue/groups/1/resume", {}),
    ("POST", "/api/queue/pause-auto-retry", {"queueName": "whatsapp-send"}),
    ("POST", "/api/queue/resume-auto-retry", {"queueName": "whatsapp-send"}),
]
POSTS = [e for e in ENDPOINTS if e[0] == "POST"]


@pytest.fixture(autouse=True)
def api_token(configure: Any) -> None:
    configure(API_TOKEN=TOKEN, STATUS_COUNTS_CACHE_SECONDS=0, STATUS_INSPECT_TIMEOUT_SECONDS=0.2)


@pytest.fixture
def url(live_server: Any, broker: redis.Redis) -> Any:
    return lambda path: live_server.url + path


def call(url: Any, method: str, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
    data = body if isinstance(body, str | bytes) or body is None else json.dumps(body)
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return requests.request(method, url(path), data=data, headers=headers, timeout=10, **kwargs)


def session_cookies(url: Any, *, staff: bool) -> dict[str, str]:
    """A logged-in session (and its CSRF cookie) usable from outside the test client."""
    user = User.objects.create_user(f"user-{staff}", is_staff=staff)
    # A staff operator may retry (tests/test_permissions.py: a session without the permission may not)
    user.user_permissions.set(Permission.objects.filter(codename="retry_failedjob"))
    client = Client()
    client.force_login(user)
    csrf = requests.get(url("/admin/login/"), timeout=10).cookies["csrftoken"]
    return {"sessionid": client.cookies["sessionid"].value, "csrftoken": csrf}


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=[e[1] for e in ENDPOINTS])
def test_a_wrong_method_is_a_json_405_naming_the_allowed_ones(url: Any, method: str, path: str, body: Any) -> None:
    for wrong in {"GET", "POST", "PUT", "DELETE", "PATCH"} - {method, "GET" if method == "GET" else ""}:
        response = call(url, wrong, path, body, headers=BEARER)

        assert response.status_code == 405, (wrong, response.text)
        assert response.headers["Content-Type"].startswith("application/json")
        assert method in response.headers["Allow"]
        assert f"method {wrong} not allowed" in response.json()["error"]


@pytest.mark.parametrize("path", ["/api/docs", "/api/openapi.json"])
def test_the_docs_answer_get_only(url: Any, path: str) -> None:
    response = call(url, "POST", path, {})

    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=[e[1] for e in ENDPOINTS])
def test_no_credentials_or_a_wrong_token_is_a_401_with_a_bearer_challenge(
    url: Any, method: str, path: str, body: Any
) -> None:
    # An anonymous POST carries no CSRF token either: it must still hear "authenticate", not "CSRF failed"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dXNlcjpwYXNz"}):
        response = call(url, method, path, body, headers=headers)

        assert response.status_code == 401, (headers, response.text)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "QUEUEING_API_TOKEN" in response.json()["error"]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=[e[1] for e in ENDPOINTS])
def test_a_logged_in_user_who_is_not_staff_is_refused_with_403(url: Any, method: str, path: str, body: Any) -> None:
    cookies = session_cookies(url, staff=False)

    response = call(url, method, path, body, cookies=cookies, headers={"X-CSRFToken": cookies["csrftoken"]})

    assert response.status_code == 403, response.text
    assert "not staff" in response.json()["error"]


def test_a_staff_session_is_let_in_with_its_csrf_token_on_unsafe_methods(url: Any, make_failed_job: Any) -> None:
    cookies = session_cookies(url, staff=True)
    body = {"queueName": "whatsapp-send"}
    # requests sends no Referer; Django wants one for HTTPS only, and this is HTTP

    assert call(url, "GET", "/api/queue/status", cookies=cookies).status_code == 200
    assert call(url, "GET", "/metrics", cookies=cookies).status_code == 200
    without = call(url, "POST", "/api/queue/retry-all-failed", body, cookies=cookies)
    assert without.status_code == 403
    assert "CSRF" in without.json()["error"]
    with_token = call(
        url, "POST", "/api/queue/retry-all-failed", body, cookies=cookies, headers={"X-CSRFToken": cookies["csrftoken"]}
    )
    assert with_token.status_code == 200, with_token.text


@pytest.mark.parametrize(("method", "path", "body"), POSTS, ids=[e[1] for e in POSTS])
def test_a_body_over_the_limit_is_a_413(url: Any, method: str, path: str, body: Any, broker: redis.Redis) -> None:
    big = json.dumps({**body, "padding": "x" * (300 * 1024)})

    response = call(url, method, path, big, headers=BEARER)

    assert response.status_code == 413
    assert response.json() == {"error": "request body too large"}
    assert broker.llen("whatsapp-send") == 0


@pytest.mark.parametrize(("method", "path", "body"), POSTS, ids=[e[1] for e in POSTS])
@pytest.mark.parametrize("bad", ["{not json", "", "[]", '"text"', "null", "\x00\xff"])
def test_a_body_that_is_not_the_expected_json_object_is_a_400(
    url: Any, method: str, path: str, body: Any, bad: str, broker: redis.Redis
) -> None:
    response = call(url, method, path, bad.encode("latin-1"), headers=BEARER)

    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("invalid request")
    assert broker.llen("whatsapp-send") == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"queueName": ""}, "queueName"),
        ({"queueName": 5}, "queueName"),
        ({"queueName": "x" * 201}, "queueName"),
        ({"queue": "whatsapp-send"}, "queueName"),
    ],
)
def test_retry_all_failed_names_the_bad_field(url: Any, body: dict[str, Any], field: str) -> None:
    response = call(url, "POST", "/api/queue/retry-all-failed", body, headers=BEARER)

    assert response.status_code == 400
    assert field in response.json()["fields"]


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("?queueName=" + "x" * 500, 400),
        ("?queueName=", 400),
        ("?queueName=%00", 404),
        ("?queueName=%F0%9F%92%A5", 404),
        ("?queueName=default&queueName=whatsapp-send", 200),
        ("?unknown=1", 200),
        ("?queueName=%ZZ", 404),
    ],
)
def test_odd_query_strings_are_answered_never_with_a_500(url: Any, query: str, status: int) -> None:
    response = call(url, "GET", "/api/queue/status" + query, headers=BEARER)

    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")


def test_an_unknown_api_path_is_a_json_404(url: Any) -> None:
    for path in ("/api/nope", "/api/", "/api/queue/status/extra"):
        response = call(url, "GET", path, headers=BEARER)

        assert response.status_code == 404, path
        assert "see /api/docs" in response.json()["error"]


def test_the_schema_and_the_interactive_docs_are_served_without_credentials(url: Any) -> None:
    schema = requests.get(url("/api/openapi.json"), timeout=10).json()
    docs = requests.get(url("/api/docs"), timeout=10)

    assert {"/api/queue/status", "/api/queue/retry-all-failed", "/api/send-message"} <= set(schema["paths"])
    bearer = schema["components"]["securitySchemes"]["BearerToken"]
    assert {k: bearer[k] for k in ("type", "scheme")} == {"type": "http", "scheme": "bearer"}
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text


def test_the_schema_says_which_token_to_paste_and_where_it_comes_from(url: Any) -> None:
    schemes = requests.get(url("/api/openapi.json"), timeout=10).json()["components"]["securitySchemes"]

    assert "QUEUEING_API_TOKEN" in schemes["BearerToken"]["description"]
    assert "bin/start" in schemes["BearerToken"]["description"]
    assert "staff" in schemes["StaffSession"]["description"]


def test_every_operation_is_described_with_its_error_answers_metrics_included(url: Any) -> None:
    schema = requests.get(url("/api/openapi.json"), timeout=10).json()
    operations = {(method.upper(), path): op for path, item in schema["paths"].items() for method, op in item.items()}

    # Every endpoint of ENDPOINTS is in the document, /metrics too, with its Prometheus text answer
    documented = {(method, re.sub(r"/groups/\d+/", "/groups/{group_id}/", path)) for method, path, _ in ENDPOINTS}
    documented.add(("GET", "/api/queue/operations/{operation_id}"))  # a background bulk retry's progress
    assert documented == set(operations)
    metrics = operations[("GET", "/metrics")]
    assert any(kind.startswith("text/plain") for kind in metrics["responses"]["200"]["content"])
    assert metrics["security"] == [{"BearerToken": []}, {"StaffSession": []}]
    # Each says what it does and what its errors mean
    for key, operation in operations.items():
        assert operation["summary"] and operation["description"], key
        assert {"401", "403", "405"} <= set(operation["responses"]), key
        for code, response in operation["responses"].items():
            assert response["description"] not in ("", "Unknown Status Code"), (key, code)
    for key in [k for k in operations if k[0] == "POST"]:
        assert {"400", "413"} <= set(operations[key]["responses"]), key


def test_the_documented_metrics_path_is_the_one_served(url: Any) -> None:
    # The schema's /metrics (outside /api/) answers as documented: the token in, Prometheus text out
    response = call(url, "GET", "/metrics", headers=BEARER)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "queueing_queue_jobs" in response.text
