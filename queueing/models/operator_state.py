"""The state operators and the sweep keep besides the jobs: the run-time retry policy (``AutoRetryConfig``),
alert states (``AlertState``) and background bulk operations (``BulkOperation``).
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class AutoRetryConfig(models.Model):
    """Changes made to the automatic retry policy while the system runs (``start_auto_retry``).

    A single row. An empty field means "as in settings". The sweep and the failure recorder read it each
    time, so a change takes effect without a restart.
    """

    max_retries = models.PositiveIntegerField(null=True, blank=True)
    retry_delay_seconds = models.FloatField(null=True, blank=True)
    check_interval_seconds = models.PositiveIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "auto-retry configuration"
        constraints = [models.CheckConstraint(condition=Q(id=1), name="queueing_autoretryconfig_single_row")]

    def __str__(self) -> str:
        return "auto-retry configuration"


class AlertState(models.Model):
    """Whether the alert on one queue's figure is firing (``queueing/alerts.py``). One row per (queue, metric).

    Rows flip with a conditional ``UPDATE … WHERE firing = <old value>``: of two sweeps that see the same
    crossing, one changes the row and sends the alert; the other changes nothing and sends nothing.
    """

    class Metric(models.TextChoices):
        FAILED = "failed", "Failed jobs"
        DEAD = "dead", "Dead jobs"

    queue = models.CharField(max_length=200)
    metric = models.CharField(max_length=16, choices=Metric.choices)
    firing = models.BooleanField(default=False)
    value = models.PositiveIntegerField(default=0, help_text="The count when the state last changed.")
    threshold = models.PositiveIntegerField(default=0, help_text="The threshold in force at that change.")
    changed_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["queue", "metric"], name="queueing_alertstate_queue_metric_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.queue} {self.metric}: {'firing' if self.firing else 'ok'}"


class BulkOperation(models.Model):
    """A bulk retry too large to answer at once, run in the background (``queueing/bulkops.py``).

    Its row is where its progress is read (``GET /api/queue/operations/<id>``, the admin): ``queued`` when
    asked for, ``running`` with ``sent`` of ``total`` growing batch after batch, then ``done`` with its report
    (what was not sent and why) or ``failed`` with the error.
    """

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    kind = models.CharField(max_length=32, default="retry")
    selection = models.JSONField(default=dict, help_text="Which jobs: queue, task name, exception class.")
    rate_per_second = models.FloatField(null=True, blank=True, help_text="Most jobs sent per second; none: no limit.")
    requested_by = models.CharField(max_length=200, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    total = models.PositiveIntegerField(default=0)
    sent = models.PositiveIntegerField(default=0)
    report = models.JSONField(default=dict, blank=True, help_text="What was sent, not sent and why (when done).")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"bulk {self.kind} #{self.pk}: {self.state}, {self.sent} of {self.total} sent"
