"""The report: every queue's figures in one typed record, ``queue_status()``, the one implementation behind
``GET /api/queue/status``, ``manage.py check_queue`` and ``/metrics``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis

from queueing import registry
from queueing.models import FailedJob
from queueing.status.broker import Unavailable, answered, broker_redis, current_broker, redis_is_broker
from queueing.status.counter_store import counter
from queueing.status.groups import GroupFigures, Paused, paused
from queueing.status.jobs import JobSnapshot, RecentFailure, job_snapshot, query_jobs
from queueing.status.schema import Figure, GroupOut, PausedOut, QueueStatusOut, RecentFailedOut, StatusOut, WorkersOut
from queueing.status.spooled import spooled_figures
from queueing.status.workers import NoReport, WorkersReport, workers_snapshot

Status = FailedJob.Status

#: The figures of one queue, in the order ``check_queue`` prints them.
FIGURES: tuple[Figure, ...] = ("waiting", "active", "completed", "failed", "delayed", "dead")


@dataclass(frozen=True, kw_only=True)
class QueueStatus:
    name: str
    waiting: int | None
    active: int | None
    completed: int | None
    failed: int
    delayed: int | None
    dead: int
    retrying: int
    recent_failed: list[RecentFailure]
    #: figure -> why it is None
    unavailable: dict[Figure, str]

    def to_schema(self) -> QueueStatusOut:
        return QueueStatusOut(
            waiting=self.waiting,
            active=self.active,
            completed=self.completed,
            failed=self.failed,
            delayed=self.delayed,
            dead=self.dead,
            retrying=self.retrying,
            unavailable=sorted(self.unavailable, key=FIGURES.index),
            recentFailed=[_recent_failed_out(job) for job in self.recent_failed],
        )


@dataclass(frozen=True, kw_only=True)
class StatusReport:
    queues: dict[str, QueueStatus]
    #: figure -> why it is None (the same for every queue)
    unavailable: dict[Figure, str]
    generated_at: datetime
    workers: list[str] = field(default_factory=list)
    workers_reported_at: datetime | None = None
    counts_as_of: datetime | None = None
    groups: list[GroupFigures] = field(default_factory=list)
    paused: Paused = field(default_factory=lambda: Paused((), ()))
    #: host -> failures waiting in its local spool (``queueing/spool.py``)
    spooled: dict[str, int] = field(default_factory=dict)

    def to_schema(self) -> StatusOut:
        """The answer of ``GET /api/queue/status`` (and of ``check_queue --json``)."""
        return StatusOut(
            queues={name: queue.to_schema() for name, queue in self.queues.items()},
            unavailable=dict(sorted(self.unavailable.items(), key=lambda item: FIGURES.index(item[0]))),
            workers=WorkersOut(names=self.workers, reportedAt=_ms(self.workers_reported_at)),
            countsAsOf=_ms(self.counts_as_of),
            spooled=self.spooled,
            generatedAt=_ms(self.generated_at) or 0,
            groups=[group_out(group) for group in self.groups],
            autoRetryPaused=PausedOut(queues=list(self.paused.queues), groups=list(self.paused.groups)),
        )


def queue_status(*, queue: str | None = None, wait_for_workers: bool = False) -> StatusReport:
    """Every known queue's figures (or only ``queue``'s; an unknown name raises ``UnknownQueue``).

    ``wait_for_workers`` (for one-off readers such as ``check_queue``): count the jobs now rather than take
    the shared copy, and when the workers' report is out of date, ask them and wait for the answer (up to
    two broadcasts) instead of answering ``None`` for ``active`` and ``delayed``.
    """
    client: redis.Redis | None
    try:
        client, broker_problem = broker_redis(), ""
    except Unavailable as exc:
        client, broker_problem = None, str(exc)
    try:
        with answered():
            jobs = job_snapshot(client=client, max_age_seconds=0 if wait_for_workers else None)
    except Unavailable as exc:
        # Redis does not answer: say so once, and do not wait for it again in this request.
        client, broker_problem = None, str(exc)
        jobs = query_jobs()
    names = sorted(registry.declared_queues() | set(jobs.counts))
    if queue is not None:
        if queue not in names:
            registry.validate_queue(queue)  # UnknownQueue, listing the known ones, unless it has only old rows
        names = [queue]

    unavailable: dict[Figure, str] = {}
    waiting: dict[str, int] | None = None
    completed: dict[str, int] | None = None
    # waiting: the broker; completed: the status Redis. The same server unless the broker is not Redis (RabbitMQ):
    # then one may answer while the other does not, and each figure names its own reason.
    waiting_problem = broker_problem
    if client is not None or not redis_is_broker():
        try:
            waiting = current_broker().queue_lengths(names)
        except Unavailable as exc:
            waiting_problem = str(exc)
            if redis_is_broker():
                client, broker_problem = None, str(exc)
    if client is not None:
        try:
            completed = counter("completed", names, client=client)
        except Unavailable as exc:
            client, broker_problem = None, str(exc)
            if redis_is_broker():  # one server: what it said a moment ago is not reported as an answer
                waiting, waiting_problem = None, str(exc)
    if waiting is None:
        unavailable["waiting"] = waiting_problem
    if client is None:
        completed = None
        unavailable["completed"] = broker_problem

    workers = NoReport(reason=broker_problem) if client is None else workers_snapshot(client, wait=wait_for_workers)
    report = workers if isinstance(workers, WorkersReport) and workers.ok else None
    if report is None:
        unavailable["active"] = unavailable["delayed"] = workers.reason

    return StatusReport(
        queues={
            name: _queue(name, jobs, waiting=waiting, completed=completed, workers=report, unavailable=unavailable)
            for name in names
        },
        unavailable=unavailable,
        generated_at=datetime.now(UTC),
        workers=report.workers if report else [],
        workers_reported_at=_datetime(workers.at) if isinstance(workers, WorkersReport) else None,
        counts_as_of=_datetime(jobs.at),
        groups=jobs.groups,
        paused=paused(),
        spooled=spooled_figures(client),
    )


def _queue(
    name: str,
    jobs: JobSnapshot,
    *,
    waiting: dict[str, int] | None,
    completed: dict[str, int] | None,
    workers: WorkersReport | None,
    unavailable: dict[Figure, str],
) -> QueueStatus:
    counts = jobs.counts.get(name, {})
    return QueueStatus(
        name=name,
        waiting=None if waiting is None else waiting.get(name, 0),
        completed=None if completed is None else completed.get(name, 0),
        active=None if workers is None else workers.active.get(name, 0),
        delayed=None if workers is None else workers.delayed.get(name, 0),
        failed=counts.get(Status.FAILED, 0),
        dead=counts.get(Status.DEAD, 0),
        retrying=counts.get(Status.RETRYING, 0),
        recent_failed=jobs.recent.get(name, []),
        unavailable=unavailable,
    )


def _recent_failed_out(job: RecentFailure) -> RecentFailedOut:
    return RecentFailedOut(
        id=job.id,
        name=job.name,
        failedReason=job.failed_reason,
        attemptsMade=job.attempts_made,
        timestamp=_ms(job.last_failed_at) or 0,
        status=job.status,
        retryCount=job.retry_count,
        nextRetryAt=_ms(job.next_retry_at),
        statusReason=job.status_reason,
    )


def group_out(group: GroupFigures) -> GroupOut:
    return GroupOut(
        id=group.id,
        task=group.task_name,
        exceptionClass=group.exception_class,
        messagePattern=group.message_pattern,
        queue=group.queue,
        state=group.state,
        stateText=group.state_text,
        openUntil=_ms(group.open_until),
        failedProbes=group.level,
        wave=group.wave,
        probes=group.probes,
        paused=group.paused_at is not None,
        failures=group.failure_count,
        firstSeen=_ms(group.first_seen_at) or 0,
        lastSeen=_ms(group.last_seen_at) or 0,
        jobs=group.jobs,
        shareStillFailing=group.share_still_failing,
    )


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else round(moment.timestamp() * 1000)


def _datetime(epoch_seconds: float | None) -> datetime | None:
    return None if epoch_seconds is None else datetime.fromtimestamp(epoch_seconds, UTC)
