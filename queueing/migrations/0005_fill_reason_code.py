"""Fill ``FailedJob.reason_code`` of existing rows from the sentence in ``status_reason``, where it tells."""

from __future__ import annotations

from typing import Any

from django.db import migrations

#: ``status_reason`` beginnings the code wrote before the coded reason, and their codes (the longer first).
PREFIXES = [
    ("unregistered task: ", "unregistered_task"),
    ("permanent error", "permanent_error"),
    ("automatic retries used up", "retries_used_up"),
    ("failed again after an operator's retry", "failed_after_operator_retry"),
    ("lease expired before the retry started", "lease_expired_not_started"),
    ("lease expired: ", "lease_expired"),
    ("the stored call cannot be sent", "unsendable"),
    ("retry could not be sent", "publish_failed"),
]


def fill(apps: Any, schema_editor: Any) -> None:
    FailedJob = apps.get_model("queueing", "FailedJob")
    rows = FailedJob.objects.filter(reason_code="").exclude(status_reason="")
    for prefix, code in PREFIXES:
        rows.filter(status_reason__startswith=prefix).update(reason_code=code)
    rows = FailedJob.objects.filter(reason_code="").exclude(status_reason="")
    rows.filter(status="discarded").update(reason_code="operator_discarded")
    rows.filter(status="dead", status_reason__icontains="marked dead").update(reason_code="operator_marked_dead")


class Migration(migrations.Migration):
    dependencies = [("queueing", "0004_add_reason_code")]

    operations = [migrations.RunPython(fill, migrations.RunPython.noop)]
