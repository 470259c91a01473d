"""The project's JSON API (django-ninja): OpenAPI schema at /api/openapi.json, docs at /api/docs."""

from __future__ import annotations

from typing import Any

from ninja import NinjaAPI
from ninja.openapi.schema import OpenAPISchema

from messaging.api import router as messaging_router
from queueing import metrics
from queueing.api import router as queueing_router
from queueing.api_groups import router as groups_router
from queueing.http import auth, install_error_handlers

DESCRIPTION = """\
The retry system's API: queue status, retrying failed jobs, and the example workload.

**Authorize** with one of:

- **BearerToken**: the value of `QUEUEING_API_TOKEN` in the server's environment, or a named token of
  `QUEUEING_API_TOKENS` (a `read` token may only read). `bin/start` makes one up when it is unset and prints
  it in its banner (`API token …`); paste the token alone, without `Bearer `.
- **StaffSession**: log in at [/admin/](/admin/) as a staff user in this browser; nothing to paste.

Every error is JSON, `{"error": "<what is wrong and what to do>"}`. `/metrics` (Prometheus) is listed here
too, though a plain Django view serves it, outside `/api/`.
"""


class QueueingAPI(NinjaAPI):
    """ninja's API, with ``/metrics`` (served by ``queueing.metrics.metrics_view``) in its OpenAPI document."""

    def get_openapi_schema(self, *, path_prefix: str | None = None, path_params: Any = None) -> OpenAPISchema:
        schema = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        schema["paths"]["/metrics"] = metrics.OPENAPI_PATH
        return schema


api = QueueingAPI(title="Queueing API", version="1", description=DESCRIPTION, auth=auth(), urls_namespace="api")
install_error_handlers(api)
api.add_router("/", queueing_router)
api.add_router("/", groups_router)
api.add_router("/", messaging_router)
