"""python manage.py prune_failed_jobs [--dry-run] [--older-than DAYS] [--dead-older-than DAYS] [--max-jobs N]"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from queueing import retention


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days >= 0:
        raise CommandError(f"a number of days >= 0 was expected, got {text!r} (0: keep those jobs for ever)")
    return days


class Command(BaseCommand):
    help = (
        "Delete resolved and discarded jobs older than RETAIN_FINISHED_DAYS and dead ones older than "
        "RETAIN_DEAD_DAYS, in batches of PRUNE_BATCH_SIZE. Failed and retrying jobs are never deleted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")
        parser.add_argument(
            "--older-than",
            type=_days,
            metavar="DAYS",
            help="resolved and discarded jobs older than this many days (default: RETAIN_FINISHED_DAYS; 0: none)",
        )
        parser.add_argument(
            "--dead-older-than",
            type=_days,
            metavar="DAYS",
            help="dead jobs older than this many days (default: RETAIN_DEAD_DAYS; 0: none)",
        )
        parser.add_argument("--max-jobs", type=int, metavar="N", help="delete at most N jobs (default: no limit)")

    def handle(
        self,
        *args: Any,
        dry_run: bool,
        older_than: float | None,
        dead_older_than: float | None,
        max_jobs: int | None,
        **options: Any,
    ) -> None:
        if max_jobs is not None and max_jobs < 1:
            raise CommandError(f"--max-jobs must be at least 1, got {max_jobs}")
        now = timezone.now()
        before = retention.cutoffs(now=now, finished_days=older_than, dead_days=dead_older_than)
        result = retention.prune(now=now, before=before, max_jobs=max_jobs, dry_run=dry_run)
        for line in result.describe():
            self.stdout.write(line)
        if dry_run:
            self.stdout.write(f"would delete {result.total} job(s) in all; dry run, nothing deleted")
        else:
            self.stdout.write(
                self.style.SUCCESS(f"deleted {result.total} job(s) in all, in {result.batches} batch(es)")
            )
