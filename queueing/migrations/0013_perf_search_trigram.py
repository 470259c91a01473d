"""Trigram indexes for the admin's text search on PostgreSQL (docs/benchmarks.md, "admin changelist").

The admin searches with ``icontains`` (``UPPER(col::text) LIKE UPPER('%term%')``) on the task name, the error
class and the message, and with ``=`` on the two task ids. Each branch of that OR needs an index, or PostgreSQL
reads the whole table: a GIN trigram index on each searched expression (``pg_trgm``), and one on
``latest_task_id`` (``origin_task_id`` is unique, so indexed already). SQLite keeps a scan (docs/admin.md).
"""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.operations import TrigramExtension
from django.db import migrations

SEARCHED = ("task_name", "exception_class", "exception_message")


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    for column in SEARCHED:
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS queueing_failedjob_{column}_trgm ON queueing_failedjob "
            f"USING gin ((UPPER({column}::text)) gin_trgm_ops)"
        )
    schema_editor.execute(
        "CREATE INDEX IF NOT EXISTS queueing_failedjob_latest_task_idx ON queueing_failedjob (latest_task_id)"
    )


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    for column in SEARCHED:
        schema_editor.execute(f"DROP INDEX IF EXISTS queueing_failedjob_{column}_trgm")
    schema_editor.execute("DROP INDEX IF EXISTS queueing_failedjob_latest_task_idx")


class Migration(migrations.Migration):
    dependencies = [("queueing", "0012_perf_bulk_operation")]

    operations = [
        TrigramExtension(),
        migrations.RunPython(create, drop, elidable=False),
    ]
