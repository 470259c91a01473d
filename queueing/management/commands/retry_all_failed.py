"""python manage.py retry_all_failed [--queue NAME] [--dry-run]"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from queueing import operations
from queueing.exceptions import UnknownQueue


class Command(BaseCommand):
    help = "Re-send every failed and dead job now (of one queue, or all). Jobs being retried are left alone."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--queue", help="only this queue (default: all queues)")
        parser.add_argument("--dry-run", action="store_true", help="count what would be sent; send nothing")

    def handle(self, *args: Any, queue: str | None, dry_run: bool, **options: Any) -> None:
        try:
            outcome = operations.retry_now(queue=queue, dry_run=dry_run)
        except UnknownQueue as exc:
            raise CommandError(str(exc)) from exc
        where = f"queue {queue!r}" if queue else "all queues"
        if dry_run:
            self.stdout.write(f"{where}: found {outcome.total} failed or dead job(s); dry run, none sent")
        else:
            self.stdout.write(
                self.style.SUCCESS(f"{where}: found {outcome.total} failed or dead job(s), sent {outcome.retried}")
            )
