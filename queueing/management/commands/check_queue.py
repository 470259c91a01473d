"""python manage.py check_queue [--queue NAME] [--json]

Per queue, the figures of ``GET /api/queue/status`` (``queueing/status/``)::

    Queue: whatsapp-send
      Waiting:   0
      Active:    0
      Completed: 12
      Failed:    2 ⚠
      Delayed:   0
      Dead:      1

A figure that cannot be had reads ``n/a (<reason>)``. When the workers' last report is out of date, the
command asks them and waits for the answer (about ``STATUS_INSPECT_TIMEOUT_SECONDS``).
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from queueing import registry, status
from queueing.exceptions import UnknownQueue

WARNING_MARK = "⚠"


class Command(BaseCommand):
    help = "Show each queue's waiting, active, completed, failed, delayed and dead jobs."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--queue", help="only this queue (default: every known queue)")
        parser.add_argument(
            "--json", action="store_true", dest="as_json", help="print the JSON of GET /api/queue/status instead"
        )

    def handle(self, *args: Any, queue: str | None, as_json: bool, **options: Any) -> None:
        try:
            registry.validate_queue(queue)
            report = status.queue_status(queue=queue, wait_for_workers=True)
        except UnknownQueue as exc:
            raise CommandError(str(exc)) from exc
        if as_json:
            answer = report.to_schema().model_dump(mode="json")  # the API's schema, declared once
            self.stdout.write(json.dumps(answer, indent=2, ensure_ascii=False))
            return
        blocks = [self._block(figures) for figures in report.queues.values()]
        self.stdout.write("\n\n".join(blocks))

    def _block(self, queue: status.QueueStatus) -> str:
        lines = [f"Queue: {queue.name}"]
        for figure in status.FIGURES:
            label = f"{figure.capitalize()}:"
            value = getattr(queue, figure)
            if value is None:
                text = f"n/a ({queue.unavailable[figure]})"
            elif figure == "failed" and value:
                text = self.style.WARNING(f"{value} {WARNING_MARK}")
            else:
                text = str(value)
            lines.append(f"  {label:<10} {text}")
        return "\n".join(lines)
