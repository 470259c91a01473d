"""``RetryableTask``, the base task that retries at once and records what still fails (the Beat tasks are
``periodic.py``).

Tasks stay thin: they take plain JSON values and let this base class handle retries and failure records.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable
from datetime import datetime
from traceback import format_exc
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Task, shared_task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import task_failure
from django.db import DatabaseError
from django.utils import timezone

from queueing import backoff, errors, policy, recording, sensitive, signals, spool, workflow
from queueing.conf import get_settings
from queueing.registry import HEADER_CANARY, HEADER_CLAIM, HEADER_JOB_ID, HEADER_ORIGIN, message_header

logger = logging.getLogger(__name__)


class RetryableTask(Task):
    """Retries a failing call ``IMMEDIATE_RETRIES`` times (2 s, 4 s, 8 s …); then writes a ``FailedJob``.

    Opt in with ``@shared_task(base=RetryableTask)``; the project's Celery app uses it as its default task
    class. Per task: ``immediate_retries=N`` overrides the setting; ``record_failures=False`` opts out of
    the failure table; ``dont_autoretry_for`` adds exceptions that skip the immediate retries;
    ``retry_policy=`` (an ``ErrorPolicy``, or a function returning one) says what each kind of error gets,
    over the queue's (``QUEUEING["ERROR_POLICIES"]``); ``PermanentError`` is dead at once, the rest transient.
    ``sensitive_args=(0,)`` and ``sensitive_kwargs=("pin",)`` name arguments stored encrypted and shown masked,
    besides those named in ``QUEUEING["SENSITIVE_ARGUMENTS"]`` (``queueing/sensitive.py``).
    """

    autoretry_for = (Exception,)
    dont_autoretry_for: tuple[type[BaseException], ...] = (SoftTimeLimitExceeded,)
    #: None: ``QUEUEING["IMMEDIATE_RETRIES"]``.
    immediate_retries: int | None = None
    record_failures = True
    #: This task's error policy (or a function returning it); None: the queue's and the defaults.
    retry_policy: policy.ErrorPolicy | Callable[[], policy.ErrorPolicy] | None = None
    #: Positions and names of this task's sensitive arguments (``queueing/sensitive.py``).
    sensitive_args: tuple[int, ...] = ()
    sensitive_kwargs: tuple[str, ...] = ()

    # Celery reads these two for every retry: ``Task.retry()`` (and so ``autoretry_for``) and the retry of a
    # call whose worker process was killed (``task_retry_on_worker_lost``). Computing them here keeps a
    # fractional backoff base (Celery's ``retry_backoff`` rounds it to whole seconds) and reads the settings
    # at call time, never mutating shared retry options. Celery declares both as plain class attributes; a
    # read-only property is a deliberate override (Celery only reads them), hence the two ignores.

    @property
    def max_retries(self) -> int:  # type: ignore[override]
        if message_header(self.request, HEADER_CANARY):
            return 0  # a canary probes its failure group with one attempt (queueing/breaker.py)
        conf = get_settings()
        return conf.immediate_retries if self.immediate_retries is None else self.immediate_retries

    @property
    def default_retry_delay(self) -> float:  # type: ignore[override]
        conf = get_settings()
        return backoff.delay_seconds(
            retries_done=self.request.retries or 0,
            base_seconds=conf.backoff_base_seconds,
            max_seconds=conf.backoff_max_seconds,
            jitter=conf.backoff_jitter,
        )

    # --- what kind of error it is (policy.py): immediate retries or not, and how long to wait -------------

    def error_policy(self) -> policy.ErrorPolicy:
        """This task's rules over its queue's (the kinds exception classes declare come under both)."""
        return errors.error_policy_of(self)

    def classify(self, exc: BaseException) -> policy.ClassifiedError:
        """What ``exc`` is for this task: its kind, whether to retry at once, the sweep's wait, the words."""
        return errors.classify(self, exc)

    def queue_name(self) -> str:
        """The queue of the call being run (its delivery), else the task's own, else the default queue."""
        return errors.queue_of(self)

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: Exception | None = None,
        throw: bool = True,
        eta: Any = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Any:
        """Celery's retry, steered by the error policy when it retries an error (``autoretry_for``).

        No immediate retry for an error whose rule says so (it is recorded at once). A server's hint sets the
        countdown, unless it is longer than ``BACKOFF_MAX``: then the wait is the database's (``next_retry_at``),
        not a broker countdown, and the call is recorded as deferred at once. A task that records no failures
        (``record_failed_job``, whose retries must not depend on a queue's policy) keeps Celery's plain retry.
        """
        if exc is not None and eta is None and countdown is None and self.record_failures:
            error = errors.classify_safely(self, exc)
            if not error.retry_now:
                raise exc
            if error.kind is policy.ErrorKind.DEFERRED:
                assert error.delay_seconds is not None and error.retry_after_seconds is not None
                longest = get_settings().backoff_max_seconds
                if error.retry_after_seconds > longest:
                    raise exc
                countdown = min(error.delay_seconds, longest)  # the jitter never takes it past BACKOFF_MAX
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)

    def apply_async(self, args: Any = None, kwargs: Any = None, *more: Any, **options: Any) -> Any:
        """Celery's, with the sensitive arguments masked in the message's ``argsrepr``/``kwargsrepr`` and its
        ``task-sent`` event (any other message: ``signals._mask_sensitive_reprs``). Reprs the caller chose (Celery's
        own way to hide values; the sweep's, masked as the row stores the call) are kept."""
        if "argsrepr" not in options and "kwargsrepr" not in options:
            options.update(sensitive.message_reprs(self, args, kwargs))
        return super().apply_async(args, kwargs, *more, **options)

    # --- the clone's side of the claim (models/__init__.py, steps 4 and 5) -------------------------------------

    def _claim_headers(self) -> tuple[int, str] | None:
        return claim_headers(self.request)

    def origin_task_id(self) -> str:
        """The original call's id: the logical job's id, the same for every retry (an idempotency key)."""
        return origin_task_id(self.request)

    # The handlers below call ``super()``, so that a task whose own base class comes after this one
    # (``class MyTask(RetryableTask, OwnBase)``, ``queueing/coverage.py``) keeps its own handlers too.

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        if (claim := self._claim_headers()) is not None:
            job_id, token = claim
            if not recording.start_clone(
                job_id=job_id, claim_token=token, task_id=task_id, attempt=self.request.retries or 0
            ):
                logger.warning("job %s: retry %s is stale (claim gone) or already running; not run", job_id, task_id)
                raise Ignore()
        super().before_start(task_id, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the call; a final failure is recorded here, before Celery tells the workflow about it.

        A job the system will retry is pending for its workflow (``docs/workflows.md``): the call ends with
        ``Ignore`` (no FAILURE stored, no error callbacks, no chord error, the chain waits). A job given up
        now re-raises, and Celery tells the workflow as for any failure.
        """
        try:
            return super().__call__(*args, **kwargs)
        except (Ignore, Reject, Retry):
            raise
        except Exception as exc:
            if self.request.called_directly or not self.record_failures:
                raise
            # on_failure, which Celery calls next for a job given up now, does not record it again
            self.request.update(queueing_recorded=True)
            failure = failure_of(self, exc, traceback=format_exc(), args=args, kwargs=kwargs, pending=True)
            if record(failure) is Outcome.PENDING:
                # Celery logs an ignored call at INFO only: a final failure is still an error to the operator.
                logger.error(
                    "Task %s[%s] raised unexpected: %r (recorded; retried later, its workflow waits)",
                    self.name,
                    self.request.id,
                    exc,
                    exc_info=True,
                )
                signals.count_recorded_failure(self)
                # Logged above with its traceback: chained, Celery would format it once more for nothing.
                raise Ignore() from None
            raise

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        if (claim := self._claim_headers()) is not None:
            recording.record_success(job_id=claim[0], claim_token=claim[1], task_id=task_id)
        super().on_success(retval, task_id, args, kwargs)

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """A failure ``__call__`` did not see (``before_start``, a lost worker process): record it.

        Called outside the call's request (Celery's own hard-timeout hook, in some versions), there is nothing
        to key the row on: the ``task_failure`` handler below, sent with the request, records it.
        """
        if self.record_failures and self.request.id is not None and not self.request.get("queueing_recorded"):
            traceback = str(getattr(einfo, "traceback", "") or "")
            failure = failure_of(
                self, exc, traceback=traceback, args=args, kwargs=kwargs, task_id=task_id, pending=False
            )
            record(failure)
        super().on_failure(exc, task_id, args, kwargs, einfo)


def claim_headers(request: Any) -> tuple[int, str] | None:
    """The row id and claim token a clone carries (``claims.publish``), or ``None`` for an original call."""
    job_id, claim = message_header(request, HEADER_JOB_ID), message_header(request, HEADER_CLAIM)
    return (int(job_id), str(claim)) if job_id is not None and claim else None


def origin_task_id(request: Any) -> str:
    """The original call's id: the one a clone carries in its headers, else the running call's own."""
    return str(message_header(request, HEADER_ORIGIN) or request.id)


def failure_of(
    task: Task,
    exc: BaseException,
    *,
    traceback: str,
    args: Any,
    kwargs: Any,
    pending: bool,
    task_id: str | None = None,
) -> recording.Failure:
    """What the running call of ``task`` knows about its final failure (any task class: ``coverage.py``).

    ``pending``: the call leaves its workflow pending (it will end with ``Ignore``), so the recorder must
    tell the workflow if this failure gives the job up.
    """
    request = task.request
    claim = claim_headers(request)
    error = errors.classify_safely(task, exc)
    call = workflow.capture_call(task, request)
    stored = sensitive.protect(task, list(args or ()), dict(kwargs or {}), call)  # encrypted before it goes on
    return recording.Failure.from_exception(
        exc,
        traceback=traceback,
        secrets=stored.secrets,
        task_name=task.name,
        task_id=task_id or request.id,
        origin_task_id=origin_task_id(request),
        queue=errors.queue_of(task),
        args=stored.args,
        kwargs=stored.kwargs,
        options=stored.options,
        attempts=(request.retries or 0) + 1,
        permanent=error.kind is policy.ErrorKind.PERMANENT,
        error_kind=error.kind.value,
        error_text=error.text,
        delay_seconds=error.delay_seconds,
        retry_after_seconds=error.retry_after_seconds,
        job_id=claim[0] if claim else None,
        claim_token=claim[1] if claim else None,
        pending=pending,
    )


class Outcome(enum.Enum):
    """What recording a final failure means for the call's workflow."""

    PENDING = "pending"  # the job will be retried (or another process will write it): the workflow waits
    GIVEN_UP = "given_up"  # the job is given up now: the failing call tells the workflow (Celery does)


def record(failure: recording.Failure) -> Outcome:
    """Write a final failure; if the database is down, hand it to the broker (``record_failed_job``), and if
    the broker is down too, to the local spool (``queueing/spool.py``)."""
    failed_at = timezone.now()
    try:
        job = recording.record_failure(failure, now=failed_at)
    except DatabaseError as exc:
        # The database is unreachable: let the broker hold the failure until it can be written.
        logger.error("job %s: database unreachable (%r); recording it later", failure.origin_task_id, exc)
        _record_later(failure, failed_at=failed_at)
        return Outcome.PENDING
    return Outcome.GIVEN_UP if recording.given_up_now(job) else Outcome.PENDING


def _record_later(failure: recording.Failure, *, failed_at: datetime) -> None:
    """Hand a failure the database could not take to the broker; if the broker is down too, to the spool.

    Both carry the failure's time, so that a failure that reaches the database twice (a publish that raised
    yet went through, then the spool's replay) is written once (``spool.record_once``).
    """
    try:
        record_failed_job.delay(dataclasses.asdict(failure), failed_at=failed_at.isoformat())
        return
    except spool.BROKER_ERRORS as exc:
        logger.error("job %s: broker unreachable too (%r); spooling it locally", failure.origin_task_id, exc)
    try:
        path = spool.append(failure, failed_at=failed_at)
    except Exception:
        # Neither database, broker nor disk: the failure must not vanish without a trace.
        logger.exception("could not record failed job; its payload follows so it can be re-sent: %r", failure)
        raise
    logger.error(
        "job %s: spooled in %s; replayed once the database or the broker is back", failure.origin_task_id, path
    )


@task_failure.connect
def _record_worker_lost(
    sender: Task | None = None,
    task_id: str = "",
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    """A call whose worker process died (SIGKILL, OOM, the hard time limit) never reaches ``on_failure`` there.

    Celery retries a lost one like any other failure (``task_retry_on_worker_lost``); once those retries are
    used up, and at once for a call killed at its hard time limit (``TimeLimitExceeded``), the worker's main
    process sends ``task_failure`` with the call's request pushed, and it is recorded here.
    """
    if isinstance(sender, RetryableTask) and isinstance(exception, WorkerLostError | TimeLimitExceeded):
        sender.on_failure(exception, task_id, args, kwargs, einfo)


#: Retries of ``record_failed_job``: with the backoff (2, 4 … 512 s, then BACKOFF_MAX, 600 s), about 4 hours.
RECORD_RETRIES = 30


@shared_task(
    base=RetryableTask,
    name="queueing.record_failed_job",
    autoretry_for=(DatabaseError,),
    immediate_retries=RECORD_RETRIES,
    record_failures=False,
    ignore_result=True,
)
def record_failed_job(failure: dict[str, Any], failed_at: str | None = None) -> None:
    """Write a failure that could not be written when it happened (the database was down), once it is back.

    Delivered twice, it still makes one row: the row is keyed by the original call's id, and a retry's row
    is fenced by its claim token. With ``failed_at`` (the failure's time), a second delivery writes nothing.
    A failure whose call left its workflow pending, and that now gives the job up, tells the workflow.
    """
    if failed_at is not None:
        spool.record_once(recording.Failure(**failure), failed_at=datetime.fromisoformat(failed_at))
        return
    job = recording.record_failure(recording.Failure(**failure))
    if failure.get("pending") and recording.given_up_now(job):
        assert job is not None
        workflow.fail_workflow(job)


# Registered in every worker with this module: queueing.run_bulk_retry, the Beat tasks (sweep, prune).
from queueing import bulkops, periodic  # noqa: E402, F401
