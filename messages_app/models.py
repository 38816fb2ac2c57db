"""Characters, conversations, the message tree, feedback, and tombstones of deleted accounts."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

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
    # Card fields (character card spec V2/V3, as SillyTavern reads and writes them).
    avatar = models.FileField(upload_to="avatars/", blank=True, max_length=255)
    personality = models.TextField(blank=True)
    scenario = models.TextField(blank=True)
    alternate_greetings = models.JSONField(
        default=list, blank=True, help_text="More first messages, offered as swipes."
    )
    creator_notes = models.TextField(blank=True)
    tags = models.JSONField(default=list, blank=True)
    creator = models.CharField(max_length=200, blank=True)
    character_version = models.CharField(max_length=100, blank=True)
    # The `data` of an imported card that this service does not use (extensions,
    # character_book, post_history_instructions...): kept so that an export gives it back.
    card_extras = models.JSONField(default=dict, blank=True)

    class Approval(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"

    # Others see a public character only once a moderator approved it (its owner always does).
    approval = models.CharField(
        max_length=16, choices=Approval.choices, default=Approval.PENDING, db_index=True
    )
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
    # Category -> score (0..1) of the check that flagged or blocked it; {} when none did.
    safety_scores = models.JSONField(default=dict, blank=True)
    # The content check of the reply's text falls to the message processor, after it ended
    # (SAFETY_OUTPUT_MODE=after, or the live check of its end could not run); it clears this
    # once the check is done (messages_app.output_review).
    output_review = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["conversation_id", "depth", "id"]
        indexes = [
            models.Index(fields=["conversation", "created_at", "id"], name="message_conv_keyset"),
            # The analytics fill pass reads whole hours of messages (analytics_app.rollups).
            models.Index(fields=["created_at"], name="message_created_at"),
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


# --- Trust and safety -------------------------------------------------------------------------


class ReviewItem(models.Model):
    """A message in the moderators' queue: flagged or blocked by a safety check, or reported.

    One per message. `content` is a snapshot, so the evidence outlives a deleted conversation.
    """

    class Source(models.TextChoices):
        INPUT = "input", "Input check"
        OUTPUT = "output", "Output check"
        REPORT = "report", "User report"

    class State(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        CONFIRMED = "confirmed"
        WARNED = "warned"
        BANNED = "banned"

    message = models.OneToOneField(
        Message, on_delete=models.SET_NULL, null=True, blank=True, related_name="review"
    )
    source = models.CharField(max_length=16, choices=Source.choices)
    state = models.CharField(
        max_length=16, choices=State.choices, default=State.PENDING, db_index=True
    )
    # Whose content it is: the author of a user message, the conversation's owner for a reply.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="review_items",
    )
    character = models.ForeignKey(
        Character, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    role = models.CharField(max_length=16, choices=Message.Role.choices)
    content = models.TextField(blank=True)
    blocked = models.BooleanField(default=False, help_text="The message was withheld.")
    categories = models.JSONField(default=list, blank=True)
    scores = models.JSONField(default=dict, blank=True)
    max_score = models.FloatField(default=0.0, db_index=True)
    reports = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "-created_at"], name="review_state_created")]

    def __str__(self) -> str:
        return f"{self.source} review of message {self.message_id} ({self.state})"


class Report(models.Model):
    """A user's report of a message they can see: one per user and message."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="reports")
    reporter = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reports"
    )
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["message", "reporter"], name="report_one_per_user")
        ]

    def __str__(self) -> str:
        return f"report of #{self.message_id} by {self.reporter_id}"


class ModerationDecision(models.Model):
    """The audit trail: every moderation decision, by a moderator or by the service itself
    (`actor` empty). Append-only: a saved decision is never changed or deleted."""

    class Action(models.TextChoices):
        APPROVE = "approve"
        CONFIRM = "confirm"
        WARN = "warn"
        BAN = "ban"
        AUTO_BAN = "auto_ban", "Automatic ban"
        UNBAN = "unban"
        APPROVE_CHARACTER = "approve_character"
        REJECT_CHARACTER = "reject_character"

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="Empty: the service decided (an automatic ban).",
    )
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=32, choices=Action.choices)
    subject = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="moderation_decisions",
    )
    subject_name = models.CharField(max_length=150, blank=True)
    review_item = models.ForeignKey(
        ReviewItem, on_delete=models.SET_NULL, null=True, blank=True, related_name="decisions"
    )
    # Plain ids: the record stays readable after the message or character is deleted.
    message_id_seen = models.BigIntegerField(null=True, blank=True)
    character = models.ForeignKey(
        Character, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    reason = models.TextField(blank=True)
    categories = models.JSONField(default=list, blank=True)
    scores = models.JSONField(default=dict, blank=True)
    violation_score = models.FloatField(null=True, blank=True, help_text="After the decision.")
    banned_until = models.DateTimeField(null=True, blank=True)
    ban_permanent = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        who = self.actor_name or "service"
        return f"{self.action} by {who} on {self.subject_name or self.character_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not self._state.adding:
            raise ValueError("Moderation decisions are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("Moderation decisions are append-only.")


class UserStanding(models.Model):
    """A user's record: confirmed violations and the current ban, if any."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="standing",
    )
    violation_score = models.FloatField(default=0.0)
    warnings = models.PositiveIntegerField(default=0)
    banned_until = models.DateTimeField(null=True, blank=True)
    ban_permanent = models.BooleanField(default=False)
    ban_reason = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"standing of {self.user_id}"


class LimitOverride(models.Model):
    """Rate limits and quotas for one user or one group, instead of the settings' defaults.

    Empty fields keep the default; 0 means unlimited. A user's override wins over a group's;
    of several groups, the most generous value of each limit wins.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="limit_override",
    )
    group = models.OneToOneField(
        "auth.Group", on_delete=models.CASCADE, null=True, blank=True, related_name="limit_override"
    )
    per_minute = models.PositiveIntegerField(null=True, blank=True)
    per_hour = models.PositiveIntegerField(null=True, blank=True)
    per_day = models.PositiveIntegerField(null=True, blank=True)
    in_flight = models.PositiveIntegerField(null=True, blank=True)
    daily_tokens = models.PositiveBigIntegerField(null=True, blank=True)
    note = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(Q(user__isnull=False) & Q(group__isnull=True))
                | (Q(user__isnull=True) & Q(group__isnull=False)),
                name="limit_override_user_xor_group",
            )
        ]

    def __str__(self) -> str:
        if self.user_id:
            return f"limits for user {self.user_id}"
        return f"limits for group {self.group_id}"
