"""The Moderators group with exactly the permissions moderators need.

The list is frozen here (a migration must not follow later code); messages_app.moderation's
MODERATOR_PERMISSIONS is the same list, and a test holds them equal.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

MODERATORS_GROUP = "Moderators"
MODERATOR_PERMISSIONS = (
    "view_reviewitem",
    "change_reviewitem",
    "view_moderationdecision",
    "view_report",
    "view_userstanding",
    "change_userstanding",
    "view_message",
    "view_conversation",
    "view_character",
    "change_character",
    "view_limitoverride",
)


def create_moderators(apps, schema_editor):
    # On a fresh database the permissions are normally created after all migrations
    # (post_migrate); create this app's now so that the group can be given them.
    app_config = apps.get_app_config("messages_app")
    models_module = getattr(app_config, "models_module", None)
    app_config.models_module = models_module or True  # create_permissions skips it if unset
    try:
        create_permissions(app_config, apps=apps, verbosity=0)
    finally:
        app_config.models_module = models_module
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=MODERATORS_GROUP)
    group.permissions.set(
        Permission.objects.filter(
            content_type__app_label="messages_app", codename__in=MODERATOR_PERMISSIONS
        )
    )


def remove_moderators(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=MODERATORS_GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("messages_app", "0005_trust_and_safety"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_moderators, remove_moderators)]
