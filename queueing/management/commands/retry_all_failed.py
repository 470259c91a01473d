"""python manage.py retry_all_failed [--queue NAME] [--group ID] [--task NAME] [--exception CLASS] [--dry-run]
[--rate N]"""

from __future__ import annotations

import getpass
import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from queueing import bulkplan, operations, pauses
from queueing.exceptions import UnknownQueue
from queueing.management.terminal import printable


class Command(BaseCommand):
    help = "Re-send every failed and dead job now (of one queue, or all). Jobs being retried are left alone."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--queue", help="only this queue (default: all queues)")
        parser.add_argument(
            "--group", type=int, help="only this failure group (its id: check_queue, GET /api/queue/groups, the admin)"
        )
        parser.add_argument("--task", help="only this task (its full name)")
        parser.add_argument("--exception", help="only this error class (its full name)")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="send nothing: list per failure group what would be sent, what not and why",
        )
        parser.add_argument("--rate", type=float, help="at most this many jobs sent per second")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar (one is shown on a terminal)")

    def handle(
        self,
        *args: Any,
        queue: str | None,
        group: int | None,
        task: str | None,
        exception: str | None,
        dry_run: bool,
        rate: float | None,
        no_progress: bool,
        **options: Any,
    ) -> None:
        selection = operations.Selection(queue=queue, group=group, task_name=task, exception_class=exception)
        show_progress = not no_progress and not dry_run and self.stdout.isatty()
        started = time.monotonic()

        def progress(sent: int, total: int) -> None:
            width = 30
            done = int(width * sent / total) if total else width
            rate_now = sent / max(1e-9, time.monotonic() - started)
            sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {sent}/{total} sent ({rate_now:.0f}/s)")
            sys.stderr.flush()

        try:
            if group is not None:
                pauses.get_group(group)
            outcome = operations.retry_now(
                selection=selection,
                dry_run=dry_run,
                rate_per_second=rate,
                on_progress=progress if show_progress else None,
                actor=actor(),
            )
        except (UnknownQueue, pauses.UnknownGroup) as exc:
            raise CommandError(str(exc)) from exc
        if show_progress:
            sys.stderr.write("\n")
        where = ", ".join(
            f"{name} {value!r}"
            for name, value in (("queue", queue), ("failure group", group), ("task", task), ("error", exception))
            if value is not None
        )
        where = where or "all queues"
        report = outcome.report()
        if dry_run:
            self.stdout.write(
                f"{where}: found {outcome.total} failed or dead job(s); dry run, none sent; "
                f"{report['wouldSend']} would be sent"
            )
            for plan in outcome.groups:
                self.stdout.write(f"  {printable(plan.describe())}")
        else:
            self.stdout.write(
                self.style.SUCCESS(f"{where}: found {outcome.total} failed or dead job(s), sent {outcome.retried}")
            )
        verb = "would not be sent" if dry_run else "not sent"
        for key, count in report["notSent"].items():
            if count:
                self.stdout.write(self.style.WARNING(f"  {count} {verb} because {bulkplan.REASON_TEXT[key]}"))


def actor() -> str:
    """How a job's history names who ran the command: the command and the operating-system user."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's)
        user = "?"
    return f"command:retry_all_failed (os user {user})"
