"""The project's JSON API (django-ninja): OpenAPI schema at /api/openapi.json, docs at /api/docs."""

from __future__ import annotations

from ninja import NinjaAPI

from messaging.api import router as messaging_router
from queueing.api import auth, install_error_handlers
from queueing.api import router as queueing_router

api = NinjaAPI(title="Queueing API", version="1", auth=auth(), urls_namespace="api")
install_error_handlers(api)
api.add_router("/", queueing_router)
api.add_router("/", messaging_router)
