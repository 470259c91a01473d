"""The JSON API fuzzed from its own OpenAPI schema (schemathesis): no input makes it answer with a server error.

A bounded run (``MAX_EXAMPLES`` cases per operation, derandomized so that CI is repeatable) against the
project's WSGI application in this process, with a real broker and database: whatever the fuzzer sends, the
answer is a documented JSON error or a success, never a 500, and it conforms to the schema.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks as st_checks
from schemathesis.specs.openapi import checks as openapi_checks

TOKEN = "fuzz-token"
#: Cases per operation; FUZZ_MAX_EXAMPLES=2000 for a longer, exploratory run.
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "40"))

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def api_token(configure: Any, broker: redis.Redis) -> None:
    configure(API_TOKEN=TOKEN, STATUS_COUNTS_CACHE_SECONDS=0, STATUS_INSPECT_TIMEOUT_SECONDS=0.05)


def _schema() -> Any:
    from project.wsgi import application

    return schemathesis.openapi.from_wsgi("/api/openapi.json", application)


schema = _schema()

#: What every answer must satisfy: no server error, a status code and a body the schema documents.
CHECKS = [
    st_checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
]


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_input_makes_the_api_answer_with_a_server_error(case: Any, make_failed_job: Any) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)
