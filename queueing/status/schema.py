"""The JSON of the status, declared once: the response schema of ``GET /api/queue/status`` (and so its
OpenAPI document) and what ``check_queue --json`` prints. ``report.StatusReport.to_schema()`` fills it.

Plain pydantic models (not ninja's ``Schema``, which reads ORM objects attribute by attribute): validating
the answer this way costs a tenth of the time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from queueing.breaker import State as BreakerState

Figure = Literal["waiting", "active", "completed", "failed", "delayed", "dead"]


class RecentFailedOut(BaseModel):
    id: int = Field(description="The FailedJob's id.")
    name: str = Field(description="Task name.")
    failedReason: str = Field(description="Exception class and message of the last failure.")
    attemptsMade: int = Field(description="Executions of the call, immediate retries included.")
    timestamp: int = Field(description="Last failure, milliseconds since the Unix epoch.")
    status: Literal["failed", "dead"]
    retryCount: int = Field(description="Automatic retries used.")
    nextRetryAt: int | None = Field(description="When the sweep re-sends it, ms since the epoch; null if never.")
    statusReason: str = Field(description="Why the system put the job in its state (may be empty).")


class QueueStatusOut(BaseModel):
    waiting: int | None = Field(description="Messages on the broker waiting for a worker.")
    active: int | None = Field(description="Tasks running on a worker now.")
    completed: int | None = Field(description="Tasks that succeeded, counted since the counter's start.")
    failed: int = Field(description="Jobs failed for good this round; the sweep retries them.")
    delayed: int | None = Field(description="Tasks held by a worker until their ETA (countdowns, backoff).")
    dead: int = Field(description="Jobs whose retries are used up; they wait for a person.")
    retrying: int = Field(description="Jobs sent again and not yet finished.")
    unavailable: list[Figure] = Field(description="Figures that are null here; the reasons are in the top level.")
    recentFailed: list[RecentFailedOut] = Field(description="Newest failed and dead jobs first, at most 10.")


class GroupOut(BaseModel):
    """A failure group: failures with one cause, and its circuit breaker (README, "Probe before flooding")."""

    id: int
    task: str = Field(description="Task name.")
    exceptionClass: str
    messagePattern: str = Field(description="The message with numbers, ids, URLs and quoted values normalised.")
    queue: str = Field(description="The queue of its first failure.")
    state: BreakerState = Field(description="The breaker's state.")
    stateText: str = Field(description="The state in words: 'open until …', 'closed (wave 2)'.")
    openUntil: int | None = Field(description="Open or probing until then, ms since the epoch.")
    failedProbes: int = Field(description="Failed probes in a row (the delay doubles with each).")
    wave: int = Field(description="Waves released since the group closed.")
    probes: int = Field(description="Probes sent, in all.")
    paused: bool = Field(description="Automatic retries of this group are paused.")
    failures: int = Field(description="Failures recorded with this cause.")
    firstSeen: int = Field(description="First failure, ms since the epoch.")
    lastSeen: int = Field(description="Latest failure, ms since the epoch.")
    jobs: dict[str, int] = Field(description="Its jobs (whose latest failure had this cause) per status.")
    shareStillFailing: float = Field(description="Of its jobs, the share failed, retrying or dead (0 to 1).")


class PausedOut(BaseModel):
    queues: list[str] = Field(description="Queues whose automatic retries are paused.")
    groups: list[int] = Field(description="Failure groups whose automatic retries are paused.")


class WorkersOut(BaseModel):
    names: list[str] = Field(description="Workers that answered the latest broadcast.")
    reportedAt: int | None = Field(description="When the workers were last asked, ms since the epoch.")


class StatusOut(BaseModel):
    queues: dict[str, QueueStatusOut]
    unavailable: dict[str, str] = Field(description="Figure -> why it is null.")
    workers: WorkersOut
    countsAsOf: int | None = Field(description="When failed/dead were counted, ms since the epoch.")
    spooled: dict[str, int] = Field(
        default_factory=dict,
        description="Host -> failures waiting in that worker host's local spool: neither the database nor the "
        "broker could take them when they happened; written once either is back (docs/reliability.md). "
        "Each worker host reports every SPOOL_REPLAY_INTERVAL_SECONDS; this host's own is read from its disk.",
    )
    generatedAt: int = Field(description="When this answer was made, ms since the epoch.")
    groups: list[GroupOut] = Field(
        default_factory=list,
        description="Failure groups paused or with jobs still failing (failed, retrying, dead); newest first, "
        "50 at most.",
    )
    autoRetryPaused: PausedOut = Field(
        default_factory=lambda: PausedOut(queues=[], groups=[]),
        description="What the sweep leaves alone (pause_auto_retry); normal processing goes on.",
    )
