"""python manage.py retry_all_failed [--queue NAME] [--group ID] [--dry-run]"""

from __future__ import annotations

import getpass
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from queueing import operations, pauses
from queueing.exceptions import UnknownQueue


class Command(BaseCommand):
    help = "Re-send every failed and dead job now (of one queue, or all). Jobs being retried are left alone."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--queue", help="only this queue (default: all queues)")
        parser.add_argument(
            "--group", type=int, help="only this failure group (its id: check_queue, GET /api/queue/groups, the admin)"
        )
        parser.add_argument("--dry-run", action="store_true", help="count what would be sent; send nothing")

    def handle(self, *args: Any, queue: str | None, group: int | None, dry_run: bool, **options: Any) -> None:
        try:
            if group is not None:
                pauses.get_group(group)
            outcome = operations.retry_now(queue=queue, group=group, dry_run=dry_run, actor=actor())
        except (UnknownQueue, pauses.UnknownGroup) as exc:
            raise CommandError(str(exc)) from exc
        where = (
            " and ".join(
                [*([f"queue {queue!r}"] if queue else []), *([f"failure group {group}"] if group is not None else [])]
            )
            or "all queues"
        )
        if dry_run:
            self.stdout.write(f"{where}: found {outcome.total} failed or dead job(s); dry run, none sent")
        else:
            self.stdout.write(
                self.style.SUCCESS(f"{where}: found {outcome.total} failed or dead job(s), sent {outcome.retried}")
            )


def actor() -> str:
    """How a job's history names who ran the command: the command and the operating-system user."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's)
        user = "?"
    return f"command:retry_all_failed (os user {user})"
