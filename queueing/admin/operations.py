"""Background bulk retries in the admin (``queueing/bulkops.py``): read-only, their progress and report."""

from __future__ import annotations

import json

from django.contrib import admin
from django.http import HttpRequest

from queueing.models import BulkOperation


@admin.register(BulkOperation)
class BulkOperationAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "state", "progress", "selection_text", "requested_by", "created_at", "finished_at")
    list_filter = ("state", "kind")
    readonly_fields = [field.name for field in BulkOperation._meta.fields]

    @admin.display(description="sent")
    def progress(self, operation: BulkOperation) -> str:
        share = f" ({100 * operation.sent // operation.total}%)" if operation.total else ""
        return f"{operation.sent} of {operation.total}{share}"

    @admin.display(description="selection")
    def selection_text(self, operation: BulkOperation) -> str:
        return json.dumps({k: v for k, v in operation.selection.items() if v})

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: BulkOperation | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: BulkOperation | None = None) -> bool:
        return False
