"""Claiming failed jobs and sending them again (the sweep that loops over them is ``sweep.py``).

Each function that claims rows and publishes does so in two steps: claim in one short transaction (a
conditional ``UPDATE``; ``SELECT … FOR UPDATE SKIP LOCKED`` where the database has it), then publish after
the commit. A publish that is lost anyway is recovered by the lease (``models/__init__.py``, step 6).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.dispatch import Signal
from kombu.exceptions import (  # type: ignore[attr-defined]  # the stubs predate kombu 5.7's batches
    BatchPublishError,
    EncodeError,
)

from queueing import lifecycle, sensitive, workflow
from queueing.conf import get_settings
from queueing.models import FailedJob, FailedJobQuerySet
from queueing.registry import (
    HEADER_CANARY,
    HEADER_CLAIM,
    HEADER_JOB_ID,
    HEADER_ORIGIN,
    celery_app,
    registered_task,
    resendable_task_names,
    stored_call_problem,
)
from queueing.retry_queues import send_to

logger = logging.getLogger(__name__)

Status = FailedJob.Status
ClaimedBy = FailedJob.ClaimedBy


def require_autocommit() -> None:
    if not transaction.get_autocommit():
        raise RuntimeError("claiming failed jobs publishes after its own commit; call it outside transaction.atomic()")


def mark_unknown_tasks_dead(candidates: FailedJobQuerySet, *, now: datetime, limit: int) -> int:
    """Mark up to ``limit`` candidates whose task this project does not register dead, with the reason.

    Rows already marked so are not counted again, so a caller can repeat this until it returns 0.
    """
    registered = resendable_task_names()
    with transaction.atomic():
        jobs = list(
            candidates.select_for_update()
            .filter(status__in=[Status.FAILED, Status.DEAD])
            .exclude(task_name__in=registered)
            .exclude(status=Status.DEAD, reason_code=FailedJob.Reason.UNREGISTERED_TASK)
            .order_by("id")[:limit]
        )
        for job in jobs:
            lifecycle.mark_unregistered_dead(job, now=now)
            logger.error("job %s: %s", job.pk, job.status_reason)
    return len(jobs)


#: The order jobs are claimed in: the longest due first.
DUE_ORDER = ("next_retry_at", "id")


def claim(
    candidates: FailedJobQuerySet,
    *,
    now: datetime,
    claimed_by: str,
    limit: int,
    token: uuid.UUID | None = None,
    order: tuple[str, ...] = DUE_ORDER,
) -> list[FailedJob]:
    """Claim up to ``limit`` of ``candidates`` whose task is registered, exclusively. Returns the claimed rows.

    ``token``: the claim token to use (a probe's canaries share their group's); a fresh one by default.
    """
    token = token or uuid.uuid4()
    with transaction.atomic():
        ids_query = (
            candidates.filter(task_name__in=resendable_task_names()).order_by(*order).values_list("id", flat=True)
        )
        if connection.features.has_select_for_update_skip_locked:
            ids_query = ids_query.select_for_update(skip_locked=True)
        ids = list(ids_query[:limit])
        if not ids:
            return []
        lifecycle.claim(
            candidates,
            ids=ids,
            token=token,
            claimed_by=claimed_by,
            now=now,
            lease_seconds=get_settings().lease_seconds,
        )
        return list(FailedJob.objects.filter(claim_token=token).order_by("id"))


#: Most jobs of one publish logged one line each at INFO; a larger batch logs them at DEBUG and one summary line.
PER_JOB_INFO_MAX = 10


@dataclass(frozen=True)
class PublishResult:
    sent_ids: tuple[int, ...] = ()  # the jobs sent
    unsendable: int = 0  # the stored call no longer fits its task: now dead
    refused: int = 0  # the broker refused: claim released, retry given back (a failed batch: claim kept)
    expired: int = 0  # the call's own ``expires`` had passed: now dead, never sent

    @property
    def sent(self) -> int:
        return len(self.sent_ids)


#: Broker commands one job's publish may buffer (its message, the ``task-sent`` event, a queue expiry per priority):
#: a batch is sized so that it is sent only when ``publish`` flushes it, never half-way through a job.
COMMANDS_PER_JOB_MAX = 16

#: Sent by ``publish`` once per call with the number of jobs sent per queue (``{queue: n}``): the queue status
#: counts them (``queueing/signals.py``) with one Redis command per queue, not one per job.
jobs_sent = Signal()


def publish(
    jobs: Iterable[FailedJob],
    *,
    now: datetime,
    canary_tokens: frozenset[str] = frozenset(),
    before_send: Callable[[FailedJob], None] | None = None,
) -> PublishResult:
    """Send each claimed job as a fresh task call, over one broker connection, in one batch.

    On Redis the calls go out as one pipeline (kombu's ``Producer.batch``: one round trip for the batch instead
    of two per job, the message and its ``task-sent`` event); other brokers send each call as it comes. A job
    claimed under one of ``canary_tokens`` is a canary: its call carries ``HEADER_CANARY`` and makes one attempt,
    without immediate retries (a probe asks once). ``before_send(job)`` runs before each send, after the calls
    buffered so far have gone out (the sweep's throttle waits there, so its spacing is the broker's). A job of a
    queue named in ``RETRY_QUEUES`` goes to that queue's retry queue (``queueing/retry_queues.py``).

    If the broker fails while the batch goes out, whether its calls arrived is unknown: those jobs keep their
    claim, counted as ``refused``, and the lease gives them back (``models/__init__.py``, step 6) unless their
    clone runs first; giving them back at once could send a job twice.
    """
    sent_ids: list[int] = []
    sent: Counter[str] = Counter()  # jobs sent per queue
    unsendable = refused = expired = 0
    jobs = list(jobs)
    buffered: list[tuple[FailedJob, str]] = []  # (job, its clone's task id) in the batch, not flushed yet
    # A few jobs: one line each at INFO, as any state change. A bulk: each at DEBUG, one summary line at INFO.
    per_job_level = logging.INFO if len(jobs) <= PER_JOB_INFO_MAX else logging.DEBUG

    def flush(batch: Any) -> None:
        batch.flush()
        for job, task_id in buffered:
            sent_ids.append(job.pk)
            sent[job.queue] += 1
            logger.log(
                per_job_level, "job %s (%s) sent again as %s by %s", job.pk, job.task_name, task_id, job.claimed_by
            )
        buffered.clear()

    try:
        with (
            celery_app().producer_or_acquire() as producer,
            producer.batch(max_size=COMMANDS_PER_JOB_MAX * len(jobs) + 1) as batch,
        ):
            for job in jobs:
                task = registered_task(job.task_name)
                assert task is not None  # claim() only claims registered tasks
                if (problem := stored_call_problem(job)) is not None:
                    unsendable += _give_up(job, problem, now=now)  # a tampered or corrupted row
                    continue
                try:
                    # Decrypted only here, for the message: the row keeps its encrypted values (sensitive.py).
                    args, kwargs, options = (sensitive.reveal(part) for part in (job.args, job.kwargs, job.options))
                except sensitive.Undecryptable:
                    unsendable += _give_up(job, UNDECRYPTABLE, now=now, reason=FailedJob.Reason.UNDECRYPTABLE)
                    continue
                if workflow.expired(job.options, now=now):
                    lifecycle.expire(job, now=now)
                    logger.warning("job %s: %s", job.pk, job.status_reason)
                    expired += 1
                    continue
                # The same Celery call again (queueing/workflow.py): the original id and the rest of the call,
                # plus the claim headers that fence this clone.
                headers: dict[str, Any] = {
                    **workflow.user_headers(options),
                    HEADER_JOB_ID: job.pk,
                    HEADER_CLAIM: str(job.claim_token),
                    HEADER_ORIGIN: job.origin_task_id,
                }
                if str(job.claim_token) in canary_tokens:
                    headers[HEADER_CANARY] = True
                if before_send is not None:
                    flush(batch)
                    before_send(job)
                try:
                    task.apply_async(
                        args=args,
                        kwargs=kwargs,
                        **workflow.send_options(options),
                        task_id=(task_id := job.clone_task_id()),
                        queue=send_to(job.queue),
                        headers=headers,
                        producer=producer,
                        # masked as stored, even if the task no longer names them sensitive
                        **sensitive.message_reprs(task, job.args, job.kwargs),
                    )
                except (TypeError, ValueError, EncodeError) as exc:
                    # The stored call no longer fits the task (its signature changed) or cannot be encoded:
                    # sending it again cannot help until a person looks at it.
                    unsendable += _give_up(job, str(exc), now=now)
                    continue
                except BatchPublishError:
                    raise  # the batch itself failed: its buffered calls are in doubt (below)
                except Exception as exc:  # noqa: BLE001  (a broker error: give the claim back, keep going)
                    logger.error("job %s: could not send the retry (%r); claim released", job.pk, exc)
                    text = f"retry could not be sent: {exc!r}"[:500]
                    lifecycle.give_back(job, now=now, reason=FailedJob.Reason.PUBLISH_FAILED, text=text)
                    refused += 1
                    continue
                buffered.append((job, task_id))
            flush(batch)
    except Exception as exc:  # noqa: BLE001  (the batch could not go out: a broker error)
        refused += len(buffered)
        logger.error(
            "jobs %s: the broker failed while their retries were sent (%r); whether they arrived is unknown: "
            "they stay claimed until their lease runs out",
            ", ".join(str(job.pk) for job, _ in buffered) or "-",
            exc,
        )
        buffered.clear()
    result = PublishResult(sent_ids=tuple(sent_ids), unsendable=unsendable, refused=refused, expired=expired)
    if sent:
        jobs_sent.send(sender=publish, sent=dict(sent))
    if len(jobs) > PER_JOB_INFO_MAX:
        # One line per batch at INFO (each job's line is at DEBUG): a bulk retry of 100,000 jobs logs 200 lines.
        logger.info(
            "sent again: %s jobs (ids %s to %s); not sent: %s unsendable, %s refused, %s expired",
            len(sent_ids),
            min(sent_ids, default="-"),
            max(sent_ids, default="-"),
            unsendable,
            refused,
            expired,
        )
    return result


#: Why a row whose sensitive arguments no key decrypts is dead, and the fix.
UNDECRYPTABLE = (
    "a sensitive argument cannot be decrypted with the keys in force (its key was removed or lost); never sent: "
    "put that key back in QUEUEING_ENCRYPTION_KEYS (or Django's SECRET_KEY_FALLBACKS if the keys derive from "
    "SECRET_KEY), then retry the job"
)


def _give_up(
    job: FailedJob, problem: str, *, now: datetime, reason: FailedJob.Reason = FailedJob.Reason.UNSENDABLE
) -> int:
    """A claimed job whose stored call cannot be sent: dead with the reason (``lifecycle.give_up``). Returns 1."""
    text = f"the stored call cannot be sent to {job.task_name}: {problem}"[:500]
    logger.error("job %s: %s; marked dead", job.pk, text)
    lifecycle.give_up(job, now=now, text=text, reason=reason)
    return 1
