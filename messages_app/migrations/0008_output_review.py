"""Message.output_review: the reply's output safety review is due after the fact (issue 10).

A new boolean column with a constant default: PostgreSQL 11+ adds it without rewriting the
table. The lead renumbers the dependency after merging 0007_search.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("messages_app", "0007_search"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="output_review",
            field=models.BooleanField(default=False),
        ),
    ]
