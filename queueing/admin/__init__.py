"""The Django admin of the retry system: an operator's console for failed jobs, not an editor.

Operators look at failed jobs (list, filters, search, a detail page with the call, the traceback and the history)
and act on them with three verbs: retry now, discard, mark dead. Every verb goes through ``queueing.operations``,
exactly as the JSON API and the ``retry_all_failed`` command do, and acts on the rows selected, or on all the rows
matching the current filter ("Select all"). Manual retries do not count against the automatic limit.

- ``console``: ``FailedJobAdmin``, the pages and their permissions;
- ``columns``: what the list and the detail page show; ``display``: how values are shown (one time format);
- ``verbs``: the three verbs, each an object with its behaviour and its words, and ``perform`` to run one;
- ``filters``: the list's sidebar filters and its ChangeList;
- ``groups``: failures grouped by cause with their circuit breakers, and the paused queues (``FailureGroupAdmin``,
  ``QueuePauseAdmin``): retry, discard, pause and resume a group;
- ``operations``: background bulk retries (``queueing/bulkops.py``), read-only, with their progress;
- ``beat``: the sweep's schedule in django-celery-beat's admin (the check interval, written by
  ``queueing.schedule.set_sweep_interval``).
"""

from __future__ import annotations

from queueing.admin import beat, console, groups, operations

__all__ = ["beat", "console", "groups", "operations"]
