"""The JSON of the status, declared once: the response schema of ``GET /api/queue/status`` (and so its
OpenAPI document) and what ``check_queue --json`` prints. ``report.StatusReport.to_schema()`` fills it.

Plain pydantic models (not ninja's ``Schema``, which reads ORM objects attribute by attribute): validating
the answer this way costs a tenth of the time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

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


class WorkersOut(BaseModel):
    names: list[str] = Field(description="Workers that answered the latest broadcast.")
    reportedAt: int | None = Field(description="When the workers were last asked, ms since the epoch.")


class StatusOut(BaseModel):
    queues: dict[str, QueueStatusOut]
    unavailable: dict[str, str] = Field(description="Figure -> why it is null.")
    workers: WorkersOut
    countsAsOf: int | None = Field(description="When failed/dead were counted, ms since the epoch.")
    generatedAt: int = Field(description="When this answer was made, ms since the epoch.")
