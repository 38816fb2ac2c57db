"""Usage rollups (hourly and daily rows per user, character and model) and their fill state.

Every row is a pure function of the messages tables: analytics_app.rollups recomputes the rows
of a bucket from them and replaces what was there. See docs/analytics.md.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from messages_app.models import Character


class UsageRow(models.Model):
    """What one user did with one character and model in one hour or one UTC day.

    A user message counts in the bucket of its own `created_at`, with the model of its first
    reply; a reply in the bucket of its `created_at` (not of its end). Feedback and flags count
    on the message they concern. `ttft_hist` and `total_hist` are mergeable histograms of the
    completed replies' times (analytics_app.histograms): {bucket index: count}.
    """

    class Interval(models.TextChoices):
        HOUR = "hour"
        DAY = "day"

    interval = models.CharField(max_length=4, choices=Interval.choices)
    start = models.DateTimeField(help_text="Start of the hour or UTC day.")
    # Rows go with the user (their conversations, hence their messages, go too): the rollups
    # stay what a recomputation from the messages gives.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    character = models.ForeignKey(Character, on_delete=models.CASCADE, related_name="+")
    model = models.CharField(max_length=200, blank=True, default="")
    user_messages = models.PositiveIntegerField(default=0)
    replies = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    blocked = models.PositiveIntegerField(default=0)
    flagged = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    failures = models.JSONField(default=dict, blank=True, help_text="{error code: replies}")
    ttft_hist = models.JSONField(default=dict, blank=True)
    total_hist = models.JSONField(default=dict, blank=True)
    thumbs_up = models.PositiveIntegerField(default=0)
    thumbs_down = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["interval", "start", "user_id", "character_id", "model"]
        constraints = [
            models.UniqueConstraint(
                fields=["interval", "start", "user", "character", "model"], name="usage_row_key"
            )
        ]
        indexes = [models.Index(fields=["user", "interval", "start"], name="usage_row_user_time")]

    def __str__(self) -> str:
        return f"{self.interval} {self.start:%Y-%m-%d %H:%M} user {self.user_id}"


class FillState(models.Model):
    """How far the rollups are final, as in Zulip's analytics: every hour before `end_time` is
    filled (`done`), or the hour ending at `end_time` is being filled (`started`)."""

    class State(models.TextChoices):
        STARTED = "started"
        DONE = "done"

    name = models.CharField(max_length=120, unique=True)
    end_time = models.DateTimeField()
    state = models.CharField(max_length=8, choices=State.choices, default=State.DONE)
    last_modified = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name}: {self.state} to {self.end_time:%Y-%m-%d %H:%M}"
