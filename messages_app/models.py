"""Characters, conversations, the message tree, feedback, and tombstones of deleted accounts."""

from __future__ import annotations

import hashlib
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Character(models.Model):
    """An AI persona that users chat with. Model settings left blank fall back to the service's."""

    class Provider(models.TextChoices):
        DEFAULT = "", "Service default"
        LMSTUDIO = "lmstudio", "LM Studio (OpenAI-compatible)"
        OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible"
        OPENAI = "openai", "OpenAI"
        ANTHROPIC = "anthropic", "Anthropic"

    name = models.CharField(max_length=100)
    description = models.TextField(blank=True, help_text="Short public description.")
    persona = models.TextField(blank=True, help_text="Who the character is, for the prompt.")
    greeting = models.TextField(blank=True, help_text="First assistant message of a conversation.")
    example_dialogue = models.TextField(blank=True)
    system_prompt = models.TextField(blank=True)
    provider = models.CharField(max_length=32, choices=Provider.choices, blank=True, default="")
    model = models.CharField(max_length=200, blank=True, default="")
    temperature = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="characters",
        null=True,
        blank=True,
    )
    is_public = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        indexes = [models.Index(fields=["is_public", "name"], name="character_public_name")]

    def __str__(self) -> str:
        return self.name


class Conversation(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    character = models.ForeignKey(Character, on_delete=models.PROTECT, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    # The leaf of the branch the user is looking at; history and prompts follow it.
    active_leaf = models.ForeignKey(
        "Message", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Names the conversation's channel-layer group. Random, not the id: ids start again at 1 in
    # a reset or restored database, and installations may share one Redis.
    channel_key = models.UUIDField(default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_activity_at = models.DateTimeField(auto_now_add=True, db_index=False)

    class Meta:
        ordering = ["-last_activity_at", "-id"]
        indexes = [
            models.Index(
                fields=["owner", "-last_activity_at", "-id"], name="conversation_owner_activity"
            )
        ]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    """A node of the conversation's message tree. Siblings share a parent: branches and retries."""

    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"
        SYSTEM = "system"

    class Status(models.TextChoices):
        QUEUED = "queued"
        STREAMING = "streaming"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"
        BLOCKED = "blocked"

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    parent = models.ForeignKey(
        "self", on_delete=models.CASCADE, null=True, blank=True, related_name="children"
    )
    depth = models.PositiveIntegerField(default=0, help_text="Distance from the root.")
    role = models.CharField(max_length=16, choices=Role.choices)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="messages",
    )
    content = models.TextField(blank=True)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.COMPLETED, db_index=True
    )
    client_id = models.CharField(max_length=64, blank=True, default="")
    model = models.CharField(max_length=200, blank=True, default="")
    finish_reason = models.CharField(max_length=32, blank=True, default="")
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    queued_ms = models.PositiveIntegerField(null=True, blank=True)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    total_ms = models.PositiveIntegerField(null=True, blank=True)
    # The reply's content is exactly the deltas 1..stream_seq of its generation's token log.
    stream_seq = models.PositiveIntegerField(default=0)
    # Names every Redis key of the reply (token log, lease, cancel flag, job). Random, not the
    # id, for the same reason as Conversation.channel_key.
    stream_key = models.UUIDField(default=uuid.uuid4, editable=False)
    safety_flagged = models.BooleanField(default=False)
    safety_categories = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["conversation_id", "depth", "id"]
        indexes = [
            models.Index(fields=["conversation", "created_at", "id"], name="message_conv_keyset"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "client_id"],
                condition=~Q(client_id=""),
                name="message_unique_client_id",
            )
        ]

    def __str__(self) -> str:
        return f"{self.role} #{self.pk}: {self.content[:40]}"

    @property
    def is_terminal(self) -> bool:
        return self.status not in (self.Status.QUEUED, self.Status.STREAMING)


class Feedback(models.Model):
    """A user's rating of an assistant reply; one per user and message, updated in place."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="feedback")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="feedback"
    )
    rating = models.SmallIntegerField(choices=[(1, "Up"), (-1, "Down")])
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["message", "user"], name="feedback_one_per_user"),
            models.CheckConstraint(condition=Q(rating__in=[1, -1]), name="feedback_rating_pm1"),
        ]

    def __str__(self) -> str:
        return f"{self.rating:+d} on #{self.message_id}"


def subject_digest(username: str) -> str:
    """SHA-256 of a username: a tombstone recognises a subject without keeping its name."""
    return hashlib.sha256(username.encode()).hexdigest()


class DeletedAccount(models.Model):
    """A deleted user. Tokens of the external auth service issued up to `deleted_at` do not
    create the account again; a token issued later does (the auth service still vouches for
    the subject). To keep someone out for good, deactivate the user instead of deleting it."""

    subject_sha256 = models.CharField(max_length=64, unique=True)
    deleted_at = models.DateTimeField()

    class Meta:
        ordering = ["-deleted_at"]

    def __str__(self) -> str:
        return f"{self.subject_sha256[:12]}… deleted {self.deleted_at:%Y-%m-%d %H:%M:%S}"
