"""python manage.py replay_spool [--dry-run]

Write the failures waiting in this host's spool (``queueing/spool.py``) now, rather than at the next
replay interval: to the database, or to the broker if only the broker answers. What neither takes stays.
``--dry-run`` only counts them.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from queueing import spool


class Command(BaseCommand):
    help = "Write the failures waiting in this host's spool (failures the database and the broker refused)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="only count the spooled failures")

    def handle(self, *args: Any, dry_run: bool, **options: Any) -> None:
        directory = spool.spool_dir()
        if dry_run:
            self.stdout.write(f"{directory}: {spool.pending()} spooled failure(s); dry run, none written")
            return
        result = spool.replay()
        if result.skipped:
            self.stdout.write(f"{directory}: another replay is running on this host; nothing done")
            return
        self.stdout.write(
            f"{directory}: {result.recorded} written, {result.handed_to_broker} handed to the broker, "
            f"{result.already_recorded} already written, {result.left} still spooled, {result.corrupt} not readable"
        )
        if result.left:
            self.stdout.write(self.style.WARNING("the database and the broker are still unreachable; try again later"))
