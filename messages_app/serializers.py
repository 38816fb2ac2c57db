"""Input and output serializers of the REST and websocket APIs (shapes from API.md)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from messages_app.avatars import avatar_url
from messages_app.models import Character, Conversation, Feedback, Message, Report


class UsageSerializer(serializers.Serializer[Any]):
    prompt_tokens = serializers.IntegerField(allow_null=True)
    completion_tokens = serializers.IntegerField(allow_null=True)


class TimingsSerializer(serializers.Serializer[Any]):
    queued_ms = serializers.IntegerField(allow_null=True)
    ttft_ms = serializers.IntegerField(allow_null=True)
    total_ms = serializers.IntegerField(allow_null=True)


class SafetySerializer(serializers.Serializer[Any]):
    flagged = serializers.BooleanField()
    categories = serializers.ListField(child=serializers.CharField())


class SiblingsSerializer(serializers.Serializer[Any]):
    ids = serializers.ListField(child=serializers.IntegerField())
    position = serializers.IntegerField(help_text="1-based position among the siblings")
    total = serializers.IntegerField()


class MessageSerializer(serializers.ModelSerializer[Message]):
    conversation_id = serializers.IntegerField(read_only=True)
    parent_id = serializers.IntegerField(read_only=True, allow_null=True)
    usage = serializers.SerializerMethodField()
    timings = serializers.SerializerMethodField()
    safety = serializers.SerializerMethodField()
    generation_id = serializers.SerializerMethodField()
    siblings = serializers.SerializerMethodField()
    seq = serializers.IntegerField(
        source="stream_seq",
        read_only=True,
        help_text="The content is the deltas 1..seq of the generation: resume after this.",
    )

    class Meta:
        model = Message
        fields = [
            "id",
            "conversation_id",
            "parent_id",
            "role",
            "content",
            "status",
            "created_at",
            "model",
            "finish_reason",
            "usage",
            "timings",
            "safety",
            "generation_id",
            "client_id",
            "seq",
            "siblings",
        ]
        read_only_fields = fields

    def to_representation(self, instance: Message) -> dict[str, Any]:
        # One payload for REST and the events: the fields above only describe it for OpenAPI.
        known = self.context.get("siblings")
        return message_data(instance, known.get(instance.pk) if known else None)

    @extend_schema_field(UsageSerializer)
    def get_usage(self, obj: Message) -> dict[str, int | None]:  # schema only
        raise NotImplementedError

    @extend_schema_field(TimingsSerializer)
    def get_timings(self, obj: Message) -> dict[str, int | None]:  # schema only
        raise NotImplementedError

    @extend_schema_field(SafetySerializer)
    def get_safety(self, obj: Message) -> dict[str, Any]:  # schema only
        raise NotImplementedError

    @extend_schema_field(SiblingsSerializer)
    def get_siblings(self, obj: Message) -> dict[str, Any]:  # schema only
        raise NotImplementedError

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_generation_id(self, obj: Message) -> int | None:  # schema only
        raise NotImplementedError


_DATETIME = serializers.DateTimeField()


def message_data(message: Message, siblings: list[int] | None = None) -> dict[str, Any]:
    """The message as clients see it, over REST (MessageSerializer) and in every event.

    Built without DRF's field machinery because events are on the hot path; a test holds its
    keys equal to MessageSerializer's declared fields, which document it in OpenAPI.
    `siblings` (the ids of the message and its siblings, oldest first) saves a query."""
    if siblings is None:
        from messages_app.selectors import siblings_of

        siblings = siblings_of([message])[message.pk]
    generation = getattr(message, "generation", None) if message.role == "assistant" else None
    # A reply the content filter blocked is kept for the moderators, never shown to users.
    hidden = message.status == "blocked" and message.role == "assistant"
    return {
        "id": message.pk,
        "conversation_id": message.conversation_id,
        "parent_id": message.parent_id,
        "role": message.role,
        "content": "" if hidden else message.content,
        "status": message.status,
        "created_at": _DATETIME.to_representation(message.created_at),
        "model": message.model,
        "finish_reason": message.finish_reason,
        "usage": {
            "prompt_tokens": message.prompt_tokens,
            "completion_tokens": message.completion_tokens,
        },
        "timings": {
            "queued_ms": message.queued_ms,
            "ttft_ms": message.ttft_ms,
            "total_ms": message.total_ms,
        },
        "safety": {
            "flagged": message.safety_flagged,
            "categories": list(message.safety_categories),
        },
        "generation_id": generation.pk if generation is not None else None,
        "client_id": message.client_id,
        "seq": 0 if hidden else message.stream_seq,
        "siblings": {
            "ids": siblings,
            "position": siblings.index(message.pk) + 1,
            "total": len(siblings),
        },
    }


class MessageSendSerializer(serializers.Serializer[Any]):
    # Length is checked by the service so that oversized content answers 413, not 400.
    content = serializers.CharField(allow_blank=True, trim_whitespace=False)
    client_id = serializers.CharField(required=False, allow_blank=True, max_length=64)
    parent_id = serializers.IntegerField(required=False, allow_null=True)


class SendResultSerializer(serializers.Serializer[Any]):
    user_message = MessageSerializer()
    assistant_message = MessageSerializer()
    generation_id = serializers.IntegerField()


MAX_GREETINGS = 100
MAX_TAGS = 100


class CharacterSerializer(serializers.ModelSerializer[Character]):
    """`approval` (pending, approved, rejected) is set by the service and the moderators: other
    users see a public character only once it is approved. `avatar_url` is set with
    `POST characters/{id}/avatar/`; `is_owner` says whether the caller may change it (its
    owner, or staff)."""

    owner = serializers.CharField(source="owner.username", read_only=True, default=None)
    avatar_url = serializers.SerializerMethodField()
    is_owner = serializers.SerializerMethodField()
    alternate_greetings = serializers.ListField(
        child=serializers.CharField(trim_whitespace=False),
        required=False,
        max_length=MAX_GREETINGS,
        help_text="More first messages: a new conversation offers them as swipes.",
    )
    tags = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, max_length=MAX_TAGS
    )

    class Meta:
        model = Character
        fields = [
            "id",
            "name",
            "description",
            "persona",
            "greeting",
            "alternate_greetings",
            "example_dialogue",
            "system_prompt",
            "personality",
            "scenario",
            "creator_notes",
            "tags",
            "creator",
            "character_version",
            "provider",
            "model",
            "temperature",
            "max_tokens",
            "is_public",
            "approval",
            "owner",
            "is_owner",
            "avatar_url",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "approval", "owner", "created_at", "updated_at"]
        extra_kwargs = {
            "temperature": {"min_value": 0.0, "max_value": 2.0},
            "max_tokens": {"min_value": 1},
        }

    def validate_max_tokens(self, value: int | None) -> int | None:
        if value is not None and value > settings.MAX_TOKENS_PER_REQUEST:
            raise serializers.ValidationError(
                f"At most MAX_TOKENS_PER_REQUEST ({settings.MAX_TOKENS_PER_REQUEST})."
            )
        return value

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_avatar_url(self, obj: Character) -> str | None:
        return avatar_url(obj)

    @extend_schema_field(serializers.BooleanField())
    def get_is_owner(self, obj: Character) -> bool:
        request = self.context.get("request")
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return False
        return bool(obj.owner_id == user.pk or user.is_staff)


class CharacterBriefSerializer(serializers.Serializer[Any]):
    """What a conversation carries of its character, enough for a list."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    avatar_url = serializers.CharField(allow_null=True)


class ConversationSerializer(serializers.ModelSerializer[Conversation]):
    """`title` may be "" until the service made one (clients show the character's name);
    `last_activity_at` is the time of its latest message, for grouping by recency."""

    character_id = serializers.IntegerField()
    active_leaf_id = serializers.IntegerField(read_only=True, allow_null=True)
    character = serializers.SerializerMethodField()

    class Meta:
        model = Conversation
        fields = [
            "id",
            "character_id",
            "character",
            "title",
            "active_leaf_id",
            "created_at",
            "last_activity_at",
        ]
        read_only_fields = ["id", "active_leaf_id", "created_at", "last_activity_at"]

    @extend_schema_field(CharacterBriefSerializer)
    def get_character(self, obj: Conversation) -> dict[str, Any]:
        character = obj.character
        return {"id": character.pk, "name": character.name, "avatar_url": avatar_url(character)}


def conversation_data(conversation: Conversation) -> dict[str, Any]:
    """The conversation of `conversation.updated`: the REST shape without `character` (which
    no event changes; clients have it from the REST list), so no event reads the character."""
    data = {
        "id": conversation.pk,
        "character_id": conversation.character_id,
        "title": conversation.title,
        "active_leaf_id": conversation.active_leaf_id,
        "created_at": conversation.created_at,
        "last_activity_at": conversation.last_activity_at,
    }
    return dict(ConversationEventSerializer(data).data)


class ConversationEventSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    character_id = serializers.IntegerField()
    title = serializers.CharField()
    active_leaf_id = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()
    last_activity_at = serializers.DateTimeField()


class ConversationUpdateSerializer(serializers.Serializer[Any]):
    title = serializers.CharField(max_length=200, allow_blank=True, required=False)
    active_leaf_id = serializers.IntegerField(
        required=False, help_text="Switch branch: show the newest branch through this message."
    )


class MessageEditSerializer(serializers.Serializer[Any]):
    content = serializers.CharField(allow_blank=True, trim_whitespace=False)


class RegenerateResultSerializer(serializers.Serializer[Any]):
    assistant_message = MessageSerializer()
    generation_id = serializers.IntegerField()


class CancelResultSerializer(serializers.Serializer[Any]):
    generation_id = serializers.IntegerField()
    message = MessageSerializer()


class FeedbackSerializer(serializers.ModelSerializer[Feedback]):
    message_id = serializers.IntegerField(read_only=True)

    class Meta:
        model = Feedback
        fields = ["id", "message_id", "rating", "comment", "created_at", "updated_at"]
        read_only_fields = ["id", "message_id", "created_at", "updated_at"]
        extra_kwargs = {"comment": {"required": False, "max_length": 2000}}

    def validate_rating(self, value: int) -> int:
        if value not in (1, -1):
            raise serializers.ValidationError("Rating is 1 or -1.")
        return value


class WsTicketSerializer(serializers.Serializer[Any]):
    ticket = serializers.CharField()
    expires_in = serializers.IntegerField()


class ReportSerializer(serializers.ModelSerializer[Report]):
    message_id = serializers.IntegerField(read_only=True)

    class Meta:
        model = Report
        fields = ["id", "message_id", "reason", "created_at"]
        read_only_fields = ["id", "message_id", "created_at"]
        extra_kwargs = {"reason": {"max_length": 2000, "allow_blank": False}}


class _ProviderChoiceSerializer(serializers.Serializer[Any]):
    value = serializers.CharField(help_text='"" is the service default.')
    # A declared field (DRF's metaclass takes it out of the class): not Field.label.
    label = serializers.CharField()  # type: ignore[assignment]


class _FloatRangeSerializer(serializers.Serializer[Any]):
    min = serializers.FloatField()
    max = serializers.FloatField()
    default = serializers.FloatField()


class _IntRangeSerializer(serializers.Serializer[Any]):
    min = serializers.IntegerField()
    max = serializers.IntegerField()


class CharacterOptionsSerializer(serializers.Serializer[Any]):
    """What the caller may choose for a character's model settings (the editor's choices)."""

    providers = _ProviderChoiceSerializer(many=True)
    models = serializers.ListField(
        child=serializers.CharField(allow_blank=True),
        allow_null=True,
        help_text='The allowed model names ("" = the service default); null: any name (staff).',
    )
    default_provider = serializers.CharField()
    default_model = serializers.CharField()
    temperature = _FloatRangeSerializer()
    max_tokens = _IntRangeSerializer()
