"""URLs: the admin, the JSON API (errors in JSON, 405 included) and the Prometheus metrics."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.urls import URLPattern, path, re_path

from project.api import api
from queueing.http import json_errors, not_found
from queueing.metrics import metrics_view


def _api_urls() -> tuple[list[Any], str, str]:
    patterns, app_name, namespace = api.urls
    wrapped = [
        URLPattern(p.pattern, json_errors(p.callback), p.default_args, p.name) if isinstance(p, URLPattern) else p
        for p in patterns
    ]
    return [*wrapped, re_path(r"", not_found)], app_name, namespace


urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", _api_urls()),
    path("metrics", metrics_view, name="metrics"),
]
