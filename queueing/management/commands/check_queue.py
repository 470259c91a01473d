"""python manage.py check_queue [--queue NAME] [--json]

Per queue, the figures of ``GET /api/queue/status`` (``queueing/status/``)::

    Queue: whatsapp-send
      Waiting:   0
      Active:    0
      Completed: 12
      Failed:    2 ⚠
      Delayed:   0
      Dead:      1

Then the failure groups worth a look (``queueing/status/groups.py``), one line each, and the pauses::

    Failure groups:
      #7 open until 2026-12-01T22:10:21+00:00  messaging.tasks.send_whatsapp_message  GatewayUnavailable:
         gateway answered <n>: …  (1000 still failing of 1000, 100%; 3 failed probes)
    Automatic retries paused: queue whatsapp-send

Then, when a worker host holds failures in its local spool (neither the database nor the broker could take
them; ``queueing/spool.py``), one line per host: ``Spooled on worker-1: 2 ⚠``.

Stored text (task names, error messages, queue and host names) is printed with its control characters escaped
(``queueing/management/terminal.py``): ``\\x1b[2J`` shows as those characters, it does not clear the screen.

A figure that cannot be had reads ``n/a (<reason>)``. When the workers' last report is out of date, the
command asks them and waits for the answer (about ``STATUS_INSPECT_TIMEOUT_SECONDS``).
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from queueing import registry, status
from queueing.exceptions import UnknownQueue
from queueing.management.terminal import printable, printable_json

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
            self.stdout.write(printable_json(json.dumps(answer, indent=2, ensure_ascii=False)))
            return
        blocks = [self._block(figures) for figures in report.queues.values()]
        if report.groups:
            blocks.append("\n".join(["Failure groups:", *(self._group(group) for group in report.groups)]))
        if report.paused.queues or report.paused.groups:
            what = [f"queue {printable(q)}" for q in report.paused.queues]
            what += [f"group #{g}" for g in report.paused.groups]
            blocks.append(self.style.WARNING(f"Automatic retries paused: {', '.join(what)}"))
        spooled = [
            self.style.WARNING(f"Spooled on {printable(host)}: {count} {WARNING_MARK}")
            for host, count in sorted(report.spooled.items())
            if count
        ]
        if spooled:
            blocks.append("\n".join(spooled))
        self.stdout.write("\n\n".join(blocks))

    def _group(self, group: status.GroupFigures) -> str:
        state = group.state_text + (", paused" if group.paused_at else "")
        if group.state != "closed":
            state = self.style.WARNING(state)
        exception = printable(group.exception_class.rsplit(".", 1)[-1])
        share = f"{group.share_still_failing:.0%}"
        total = sum(group.jobs.values())
        probes = f"; {group.level} failed probe(s)" if group.level else ""
        return (
            f"  #{group.id} {state}  {printable(group.task_name)}  {exception}: {printable(group.message_pattern[:80])}"
            f"  ({group.still_failing} still failing of {total}, {share}{probes})"
        )

    def _block(self, queue: status.QueueStatus) -> str:
        lines = [f"Queue: {printable(queue.name)}"]
        for figure in status.FIGURES:
            label = f"{figure.capitalize()}:"
            value = getattr(queue, figure)
            if value is None:
                text = f"n/a ({printable(queue.unavailable[figure])})"
            elif figure == "failed" and value:
                text = self.style.WARNING(f"{value} {WARNING_MARK}")
            else:
                text = str(value)
            lines.append(f"  {label:<10} {text}")
        return "\n".join(lines)
