"""Admin: characters, conversations with their messages (read-only), messages, feedback."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from messages_app.models import (
    Character,
    Conversation,
    DeletedAccount,
    Feedback,
    Message,
    subject_digest,
)


@admin.register(Character)
class CharacterAdmin(admin.ModelAdmin[Character]):
    list_display = ["name", "owner", "is_public", "provider", "model", "updated_at"]
    list_filter = ["is_public", "provider"]
    search_fields = ["name", "description", "persona"]
    raw_id_fields = ["owner"]


class MessageInline(admin.TabularInline[Message, Conversation]):
    model = Message
    fields = readonly_fields = (
        "id",
        "parent",
        "role",
        "status",
        "content",
        "model",
        "finish_reason",
        "created_at",
    )
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ["depth", "id"]

    def has_add_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin[Conversation]):
    list_display = ["id", "title", "owner", "character", "last_activity_at"]
    list_filter = ["character"]
    search_fields = ["title", "owner__username", "character__name"]
    raw_id_fields = ["owner", "character", "active_leaf"]
    readonly_fields = ["created_at", "last_activity_at"]
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin[Message]):
    list_display = ["id", "conversation", "role", "status", "short_content", "model", "created_at"]
    list_filter = ["status", "role", "safety_flagged", "model"]
    search_fields = ["content", "client_id", "conversation__title", "author__username"]
    raw_id_fields = ["conversation", "parent", "author"]
    readonly_fields = ["created_at", "updated_at", "depth"]
    date_hierarchy = "created_at"
    list_select_related = ["conversation"]

    @admin.display(description="content")
    def short_content(self, obj: Message) -> str:
        return obj.content[:80]


@admin.register(Feedback)
class FeedbackAdmin(admin.ModelAdmin[Feedback]):
    list_display = ["id", "message", "user", "rating", "created_at"]
    list_filter = ["rating"]
    search_fields = ["comment", "user__username"]
    raw_id_fields = ["message", "user"]


@admin.register(DeletedAccount)
class DeletedAccountAdmin(admin.ModelAdmin[DeletedAccount]):
    list_display = ["subject_sha256", "deleted_at"]
    readonly_fields = ["subject_sha256", "deleted_at"]
    search_fields = ["subject_sha256"]
    search_help_text = "Type a username: it is hashed to find its tombstone."

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[DeletedAccount], search_term: str
    ) -> tuple[QuerySet[DeletedAccount], bool]:
        if not search_term:
            return queryset, False
        return queryset.filter(subject_sha256=subject_digest(search_term)), False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
