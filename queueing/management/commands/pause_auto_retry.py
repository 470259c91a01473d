"""python manage.py pause_auto_retry (--queue NAME | --group ID) [--reason TEXT] [--resume]

Pause (or with ``--resume``, resume) the automatic retries of one queue or one failure group: the sweep leaves
their failed jobs alone; new calls run and are recorded as usual, and an operator can still retry them.
Without ``--queue`` or ``--group``, prints what is paused.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from queueing import pauses
from queueing.exceptions import UnknownQueue


class Command(BaseCommand):
    help = "Pause (or --resume) the automatic retries of one queue or one failure group; normal processing goes on."

    def add_arguments(self, parser: CommandParser) -> None:
        target = parser.add_mutually_exclusive_group()
        target.add_argument("--queue", help="the queue")
        target.add_argument("--group", type=int, help="the failure group's id (check_queue lists them)")
        parser.add_argument("--reason", default="", help="why (logged)")
        parser.add_argument("--resume", action="store_true", help="resume instead of pausing")

    def handle(
        self, *args: Any, queue: str | None, group: int | None, reason: str, resume: bool, **options: Any
    ) -> None:
        if queue is None and group is None:
            now = pauses.paused()
            what = [f"queue {q}" for q in now.queues] + [f"group #{g}" for g in now.groups]
            self.stdout.write(f"automatic retries paused: {', '.join(what) or 'nothing'}")
            return
        target = f"queue {queue!r}" if queue is not None else f"failure group {group}"
        try:
            if resume:
                changed = pauses.resume(queue=queue, group=group)
            else:
                changed = pauses.pause(queue=queue, group=group, reason=reason)
        except (UnknownQueue, pauses.UnknownGroup) as exc:
            raise CommandError(str(exc)) from exc
        state = "resumed" if resume else "paused"
        if changed:
            self.stdout.write(self.style.SUCCESS(f"automatic retries of {target} {state}"))
        else:
            self.stdout.write(f"automatic retries of {target} were already {state}")
