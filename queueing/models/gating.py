"""What narrows the sweep's claims (``queueing/gate.py``): failure groups with their circuit breaker
(``FailureGroup``) and paused queues (``QueuePause``).
"""

from __future__ import annotations

from django.db import models

from queueing import breaker


class FailureGroup(models.Model):
    """Failures with the same cause (one fingerprint: task, exception class, normalised message), and the
    circuit breaker that decides when the sweep may send its jobs again (``queueing/breaker.py`` tells the
    states; ``queueing/groups.py`` changes them, each with one conditional ``UPDATE``).
    """

    class State(models.TextChoices):
        CLOSED = breaker.State.CLOSED.value, "Closed"
        OPEN = breaker.State.OPEN.value, "Open"
        PROBING = breaker.State.PROBING.value, "Probing"

    fingerprint = models.CharField(max_length=64, unique=True)
    task_name = models.CharField(max_length=255)
    exception_class = models.CharField(max_length=255)
    message_pattern = models.TextField(help_text="The message with numbers, ids, URLs and quoted values normalised.")
    queue = models.CharField(max_length=200, help_text="The queue of its first failure.")
    failure_count = models.PositiveIntegerField(default=0, help_text="Failures recorded with this fingerprint.")
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()

    state = models.CharField(max_length=16, choices=State.choices, default=State.CLOSED)
    level = models.PositiveIntegerField(default=0, help_text="Failed probes in a row.")
    wave = models.PositiveIntegerField(default=0, help_text="Waves released since the group closed.")
    open_until = models.DateTimeField(null=True, blank=True, help_text="Open or probing until then.")
    wave_released_at = models.DateTimeField(null=True, blank=True)
    probe_token = models.UUIDField(null=True, blank=True, help_text="The claim token of the latest canaries.")
    probes = models.PositiveIntegerField(default=0, help_text="Probes sent.")
    state_changed_at = models.DateTimeField()
    paused_at = models.DateTimeField(
        null=True, blank=True, help_text="Automatic retries of this group paused since then (empty: not paused)."
    )

    class Meta:
        ordering = ["-last_seen_at", "-id"]
        indexes = [models.Index(fields=["state", "open_until"], name="queueing_group_state_idx")]

    def __str__(self) -> str:
        return f"{self.task_name}: {self.exception_class.rsplit('.', 1)[-1]}: {self.message_pattern[:80]}"

    def as_breaker(self) -> breaker.Breaker:
        return breaker.Breaker(
            state=breaker.State(self.state),
            level=self.level,
            wave=self.wave,
            open_until=self.open_until,
            wave_released_at=self.wave_released_at,
        )


class QueuePause(models.Model):
    """Automatic retries of one queue paused (``pause_auto_retry``); normal processing goes on. One row per queue."""

    queue = models.CharField(max_length=200, unique=True)
    paused_at = models.DateTimeField()
    reason = models.CharField(max_length=500, blank=True)

    def __str__(self) -> str:
        return f"{self.queue}: automatic retries paused"
