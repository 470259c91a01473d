"""Least privilege: the permission each operator verb needs, and the two groups that make a role of them.

``FailedJob.Meta.permissions`` declares one permission per verb; Django's ``view_failedjob`` is the read-only
one. ``queueing viewers`` may look at everything and act on nothing; ``queueing operators`` may also retry,
discard, mark dead and pause. Both groups are made when the database is migrated, if missing (an
administrator's later changes to them are kept). docs/permissions.md tells how to make others.
"""

from __future__ import annotations

from typing import Any

#: Each verb's permission (app label ``queueing``).
RETRY = "retry_failedjob"
DISCARD = "discard_failedjob"
MARK_DEAD = "mark_dead_failedjob"
PAUSE = "pause_retries"

VIEW = ("view_failedjob", "view_autoretryconfig", "view_alertstate")
GROUPS: dict[str, tuple[str, ...]] = {
    "queueing viewers": VIEW,
    "queueing operators": (*VIEW, RETRY, DISCARD, MARK_DEAD, PAUSE),
}


def ensure_groups(**_: Any) -> None:
    """Make the groups of ``GROUPS`` that do not exist, with their permissions (``post_migrate``)."""
    from django.contrib.auth.models import Group, Permission

    for name, codenames in GROUPS.items():
        group, created = Group.objects.get_or_create(name=name)
        if created:
            group.permissions.set(Permission.objects.filter(content_type__app_label="queueing", codename__in=codenames))
