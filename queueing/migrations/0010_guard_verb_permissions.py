"""One permission per operator verb, and two groups: "queueing viewers" (read-only) and "queueing operators".

Whoever held ``change_failedjob`` (which let them act before) is given retry, discard and mark dead, so that an
upgrade takes nothing away; from now on each verb is granted on its own.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.management import create_permissions
from django.db import migrations

VIEW = ["view_failedjob", "view_autoretryconfig", "view_alertstate"]
VERBS = ["retry_failedjob", "discard_failedjob", "mark_dead_failedjob"]
GROUPS = {
    "queueing viewers": VIEW,
    "queueing operators": [*VIEW, *VERBS, "pause_retries"],
}


def forwards(apps: Any, schema_editor: Any) -> None:
    config = apps.get_app_config("queueing")
    models_module, config.models_module = getattr(config, "models_module", None), True  # else skipped
    try:
        create_permissions(config, apps=apps, verbosity=0, using=schema_editor.connection.alias)
    finally:
        config.models_module = models_module
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    User = apps.get_model("auth", "User")
    queueing = Permission.objects.filter(content_type__app_label="queueing")
    for name, codenames in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.add(*queueing.filter(codename__in=codenames))
    change = queueing.filter(codename="change_failedjob").first()
    if change is not None:
        verbs = list(queueing.filter(codename__in=VERBS))
        for group in Group.objects.filter(permissions=change):
            group.permissions.add(*verbs)
        for user in User.objects.filter(user_permissions=change):
            user.user_permissions.add(*verbs)


class Migration(migrations.Migration):
    dependencies = [
        ("queueing", "0009_faults_running_clone"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="failedjob",
            options={
                "ordering": ["-last_failed_at", "-id"],
                "permissions": [
                    ("retry_failedjob", "Can retry failed jobs now"),
                    ("discard_failedjob", "Can discard failed jobs"),
                    ("mark_dead_failedjob", "Can mark failed jobs dead"),
                    ("pause_retries", "Can pause and resume automatic retries"),
                ],
            },
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
