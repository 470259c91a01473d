"""How the admin shows values: times, statuses, task ids, JSON. Pure rendering, no queries.

Every time the admin shows is in one format, to the second, with its time zone (``format_time``):
``2026-12-01 20:00:14 UTC``. The list's time columns add how long ago (or how soon) it is, in small print.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timesince import timesince, timeuntil

from queueing.models import FailedJob

Status = FailedJob.Status

#: The one format of a time in the admin (``strftime``), and the same in Django's ``date`` filter.
TIME_FORMAT = "%Y-%m-%d %H:%M:%S %Z"
TIME_FORMAT_DJANGO = "Y-m-d H:i:s T"

STATUS_COLOURS: dict[str, str] = {
    Status.FAILED: "#b45309",
    Status.RETRYING: "#1d4ed8",
    Status.RESOLVED: "#15803d",
    Status.DEAD: "#b91c1c",
    Status.DISCARDED: "#6b7280",
}


def format_time(value: datetime) -> str:
    """``2026-12-01 20:00:14 UTC``: to the second, in the current time zone, which it names."""
    return timezone.localtime(value).strftime(TIME_FORMAT)


def time_text(value: datetime | None) -> SafeString | str:
    """A time as the detail page shows it (``-`` for none), with its ISO form for machines."""
    if value is None:
        return "-"
    return format_html('<time datetime="{}">{}</time>', value.isoformat(), format_time(value))


def time_cell(value: datetime | None, *, now: datetime, past: str | None = None) -> SafeString | str:
    """A time as the list shows it: the time on two short lines (date; clock and zone), then how far from now.

    ``past`` replaces "… ago" for a time already gone (the next retry's "due").
    """
    if value is None:
        return "-"
    day, clock = format_time(value).split(" ", 1)
    return format_html(
        '<time datetime="{}">{} <span class="queueing-clock">{}</span></time><span class="queueing-ago">{}</span>',
        value.isoformat(),
        day,
        clock,
        past if past is not None and value <= now else relative(value, now=now),
    )


def relative(value: datetime, *, now: datetime) -> str:
    """``just now``, ``10 minutes ago``, ``in under a minute``, ``in 4 minutes``: the distance from ``now``."""
    if value <= now:
        if now - value < timedelta(minutes=1):
            return "just now"
        return f"{timesince(value, now, depth=1)} ago"
    if value - now < timedelta(minutes=1):
        return "in under a minute"
    return f"in {timeuntil(value, now, depth=1)}"


def status_badge(status: str, label: str) -> SafeString:
    return format_html(
        '<span class="queueing-status" style="background:{}">{}</span>', STATUS_COLOURS.get(status, "#6b7280"), label
    )


def flower_task_url(task_id: str) -> str | None:
    """The task's page in Flower (``FLOWER_URL/task/<id>``), or None without a Flower URL or a task id."""
    base = (getattr(settings, "FLOWER_URL", "") or "").rstrip("/")
    return f"{base}/task/{task_id}" if base and task_id else None


def task_link(task_id: str) -> SafeString | str:
    """A task id, linked to its page in Flower when there is one."""
    if not task_id:
        return "-"
    url = flower_task_url(task_id)
    if url is None:
        return format_html("<code>{}</code>", task_id)
    return format_html('<code>{}</code> <a href="{}" target="_blank" rel="noopener">open in Flower</a>', task_id, url)


def pretty_json(value: Any) -> SafeString:
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return format_html('<pre class="queueing-pre">{}</pre>', text)


def event_time(at: str) -> str:
    """The time of a history event (stored as ISO 8601), in the one format; the stored text if it is not a time."""
    try:
        return format_time(datetime.fromisoformat(at))
    except (TypeError, ValueError):
        return at
