"""Random Redis names for conversations and replies: a distinct value for every existing row."""

import uuid

from django.db import migrations, models


def fill_keys(apps, schema_editor):
    for model_name, field in (("Conversation", "channel_key"), ("Message", "stream_key")):
        model = apps.get_model("messages_app", model_name)
        for pk in model.objects.values_list("pk", flat=True).iterator():
            model.objects.filter(pk=pk).update(**{field: uuid.uuid4()})


class Migration(migrations.Migration):
    dependencies = [("messages_app", "0002_message_stream_seq")]

    operations = [
        migrations.AddField(
            model_name="conversation",
            name="channel_key",
            field=models.UUIDField(default=uuid.uuid4, editable=False),
        ),
        migrations.AddField(
            model_name="message",
            name="stream_key",
            field=models.UUIDField(default=uuid.uuid4, editable=False),
        ),
        migrations.RunPython(fill_keys, migrations.RunPython.noop),
    ]
