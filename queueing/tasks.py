"""``RetryableTask``, the base task that retries at once and records what still fails; and the sweep task.

Tasks stay thin: they take plain JSON values and let this base class handle retries and failure records.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from queueing import backoff, services
from queueing.conf import get_settings
from queueing.exceptions import PermanentError

logger = logging.getLogger(__name__)


class RetryableTask(Task):
    """Retries a failing call ``IMMEDIATE_RETRIES`` times (2 s, 4 s, 8 s …); then writes a ``FailedJob``.

    Opt in with ``@shared_task(base=RetryableTask)``; the project's Celery app uses it as its default task
    class. Per task: ``immediate_retries=N`` overrides the setting; ``record_failures=False`` opts out of
    the failure table; ``dont_autoretry_for`` adds exceptions that skip the immediate retries.
    """

    autoretry_for = (Exception,)
    dont_autoretry_for = (PermanentError, SoftTimeLimitExceeded)
    #: None: ``QUEUEING["IMMEDIATE_RETRIES"]``.
    immediate_retries: int | None = None
    record_failures = True

    def retry(  # type: ignore[override]
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: Any = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Any:
        conf = get_settings()
        if max_retries is None:
            max_retries = conf.immediate_retries if self.immediate_retries is None else self.immediate_retries
        if eta is None and countdown is None:
            countdown = backoff.delay_seconds(
                retries_done=self.request.retries,
                base_seconds=conf.backoff_base_seconds,
                max_seconds=conf.backoff_max_seconds,
                jitter=conf.backoff_jitter,
            )
        return super().retry(
            args=args,
            kwargs=kwargs,
            exc=exc,
            throw=throw,
            eta=eta,
            countdown=countdown,
            max_retries=max_retries,
            **options,
        )

    # --- the clone's side of the claim (models.py, steps 4 and 5) -------------------------------------

    def _claim_headers(self) -> tuple[int, str] | None:
        job_id, claim = (
            _header(self.request, services.HEADER_JOB_ID),
            _header(self.request, services.HEADER_CLAIM),
        )
        return (int(job_id), str(claim)) if job_id is not None and claim else None

    def origin_task_id(self) -> str:
        """The original call's id: the logical job's id, the same for every retry (an idempotency key)."""
        return str(_header(self.request, services.HEADER_ORIGIN) or self.request.id)

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        if (claim := self._claim_headers()) is None:
            return
        job_id, token = claim
        if not services.start_clone(job_id=job_id, claim_token=token, task_id=task_id):
            logger.warning("job %s: retry %s is stale (claim gone); not run", job_id, task_id)
            raise Ignore()

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        if (claim := self._claim_headers()) is not None:
            services.record_success(job_id=claim[0], claim_token=claim[1], task_id=task_id)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if not self.record_failures:
            return
        claim = self._claim_headers()
        delivery = self.request.delivery_info or {}
        failure = services.Failure.from_exception(
            exc,
            traceback=str(getattr(einfo, "traceback", "") or ""),
            task_name=self.name,
            task_id=task_id,
            origin_task_id=self.origin_task_id(),
            queue=delivery.get("routing_key") or self.queue or self.app.conf.task_default_queue,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            options={k: v for k, v in {"priority": delivery.get("priority")}.items() if v is not None},
            attempts=self.request.retries + 1,
            permanent=isinstance(exc, PermanentError),
            job_id=claim[0] if claim else None,
            claim_token=claim[1] if claim else None,
        )
        try:
            services.record_failure(failure)
        except Exception:
            # The database is unreachable: the failure must not vanish without a trace.
            logger.exception("could not record failed job; its payload follows so it can be re-sent: %r", failure)
            raise


def _header(request: Any, name: str) -> Any:
    value = request.get(name) if hasattr(request, "get") else getattr(request, name, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(name)
    return value


@shared_task(name="queueing.sweep_failed_jobs", autoretry_for=(), record_failures=False, ignore_result=True)
def sweep_failed_jobs() -> dict[str, int]:
    """Beat sends this every ``CHECK_INTERVAL``; a worker runs it. Re-sends due failed jobs."""
    result = services.sweep()
    return {
        "recovered": result.recovered,
        "claimed": result.claimed,
        "sent": result.sent,
        "unknown": result.unknown,
    }
