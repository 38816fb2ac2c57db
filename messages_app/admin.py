"""Admin: characters, conversations with their messages (read-only), messages, feedback, and
the moderators' workflow: the review queue and its decisions, the audit trail, user standings
and bans, reports, limit overrides and character approval.

Every moderation change goes through messages_app.moderation, which writes the audit trail.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Case, IntegerField, Q, QuerySet, TextField, Value, When
from django.db.models.functions import Cast
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from messages_app import moderation, selectors
from messages_app.models import (
    Character,
    Conversation,
    DeletedAccount,
    Feedback,
    LimitOverride,
    Message,
    ModerationDecision,
    Report,
    ReviewItem,
    UserStanding,
    subject_digest,
)
from messages_app.safety.categories import CATEGORIES

# --- intermediate pages of actions (as Django's delete_selected) ------------------------------


class ReasonForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), max_length=2000, required=False
    )


BAN_DURATIONS = {
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "forever": None,
}


class BanForm(forms.Form):
    duration = forms.ChoiceField(
        choices=[
            ("1h", "1 hour"),
            ("1d", "1 day"),
            ("7d", "7 days"),
            ("30d", "30 days"),
            ("forever", "For good"),
        ],
        initial="1d",
    )
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=2000,
        help_text="Shown to the user in the `banned` error.",
    )

    def ban(self) -> tuple[Any, bool]:
        """(until, permanent) of the chosen duration, from now."""
        duration = BAN_DURATIONS[self.cleaned_data["duration"]]
        if duration is None:
            return None, True
        return timezone.now() + duration, False


def _confirm_page(
    modeladmin: admin.ModelAdmin[Any],
    request: HttpRequest,
    queryset: QuerySet[Any],
    *,
    form_class: type[forms.Form],
    action: str,
    title: str,
    intro: str,
    lines: list[str],
    submit: str,
    apply: Callable[[Any], str],
) -> HttpResponse | None:
    """An action's intermediate page with a form. On its valid POST, `apply(form)` runs and
    its message is shown on the list (None: Django redirects back to the list)."""
    form = form_class(request.POST if "post" in request.POST else None)
    if form.is_valid():
        modeladmin.message_user(request, apply(form), messages.SUCCESS)
        return None
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "intro": intro,
        "lines": lines,
        "form": form,
        "queryset": queryset,
        "action": action,
        "submit": submit,
        "opts": modeladmin.model._meta,
    }
    return TemplateResponse(request, "admin/messages_app/moderation_action.html", context)


# --- characters ------------------------------------------------------------------------------


@admin.register(Character)
class CharacterAdmin(admin.ModelAdmin[Character]):
    list_display = ["name", "owner", "is_public", "approval", "provider", "model", "updated_at"]
    list_filter = ["approval", "is_public", "provider"]
    search_fields = ["name", "description", "persona"]
    raw_id_fields = ["owner"]
    actions = ["approve_characters", "reject_characters"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # Moderators (change permission, for the approval actions) see a character as it is;
        # its prompt and provider are the owner's, or a superuser's, to change.
        if request.user.is_superuser:
            return ["approval"]
        return [f.name for f in Character._meta.fields]

    @admin.action(description="Approve the selected characters", permissions=["change"])
    def approve_characters(self, request: HttpRequest, queryset: QuerySet[Character]) -> None:
        count = moderation.character_approve(queryset, actor=request.user)
        self.message_user(request, f"{count} character(s) approved.", messages.SUCCESS)

    @admin.action(description="Reject the selected characters", permissions=["change"])
    def reject_characters(
        self, request: HttpRequest, queryset: QuerySet[Character]
    ) -> HttpResponse | None:
        def apply(form: Any) -> str:
            count = moderation.character_reject(
                queryset, actor=request.user, reason=form.cleaned_data["reason"]
            )
            return f"{count} character(s) rejected."

        return _confirm_page(
            self,
            request,
            queryset,
            form_class=ReasonForm,
            action="reject_characters",
            title="Reject characters",
            intro="Only their owners will see these characters:",
            lines=[str(c) for c in queryset],
            submit="Reject",
            apply=apply,
        )


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


# --- the review queue ------------------------------------------------------------------------


class CategoryFilter(admin.SimpleListFilter):
    """Items whose categories include one. Portable: the JSON list is matched as text for
    the quoted name (`"hate"` does not match `"hate/threatening"`), which PostgreSQL and
    SQLite both do; JSON `contains` is PostgreSQL's only."""

    title = "category"
    parameter_name = "category"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(c, c) for c in CATEGORIES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value not in CATEGORIES:
            return queryset
        return queryset.annotate(_categories_text=Cast("categories", TextField())).filter(
            _categories_text__contains=json.dumps(value)
        )


class ScoreFilter(admin.SimpleListFilter):
    """Items by their highest category score."""

    title = "max score"
    parameter_name = "score"
    RANGES = {
        "lt0.3": (None, 0.3, "below 0.3"),
        "0.3-0.5": (0.3, 0.5, "0.3 to 0.5"),
        "0.5-0.7": (0.5, 0.7, "0.5 to 0.7"),
        "0.7-0.9": (0.7, 0.9, "0.7 to 0.9"),
        "ge0.9": (0.9, None, "0.9 and over"),
    }

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, label) for key, (_, _, label) in self.RANGES.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        bounds = self.RANGES.get(self.value() or "")
        if bounds is None:
            return queryset
        low, high, _ = bounds
        if low is not None:
            queryset = queryset.filter(max_score__gte=low)
        if high is not None:
            queryset = queryset.filter(max_score__lt=high)
        return queryset


@admin.register(ReviewItem)
class ReviewItemAdmin(admin.ModelAdmin[ReviewItem]):
    list_display = [
        "id",
        "state",
        "source",
        "shown_categories",
        "max_score",
        "user",
        "character",
        "role",
        "blocked",
        "reports",
        "short_content",
        "created_at",
        "in_conversation",
    ]
    list_display_links = ["id", "short_content"]
    list_filter = [
        "state",
        "source",
        CategoryFilter,
        ScoreFilter,
        ("user", admin.RelatedOnlyFieldListFilter),
        ("character", admin.RelatedOnlyFieldListFilter),
        "created_at",
        "blocked",
        "role",
    ]
    search_fields = ["content", "user__username", "character__name", "=message__id"]
    search_help_text = "Content, username, character name, or a message id."
    date_hierarchy = "created_at"
    list_select_related = ["user", "character"]
    readonly_fields = [
        "message",
        "in_conversation",
        "source",
        "state",
        "user",
        "character",
        "role",
        "content",
        "blocked",
        "categories",
        "scores",
        "max_score",
        "reports",
        "created_at",
        "decided_at",
        "decided_by",
    ]
    fields = tuple(readonly_fields)
    actions = ["approve_items", "confirm_items", "warn_items", "ban_users"]

    def get_ordering(self, request: HttpRequest) -> Any:
        # Pending first, newest first.
        pending_first = Case(
            When(state=ReviewItem.State.PENDING, then=Value(0)),
            default=Value(1),
            output_field=IntegerField(),
        )
        return [pending_first.asc(), "-created_at", "-id"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the evidence of the audit trail

    @admin.display(description="categories")
    def shown_categories(self, obj: ReviewItem) -> str:
        return ", ".join(obj.categories)

    @admin.display(description="content")
    def short_content(self, obj: ReviewItem) -> str:
        return obj.content[:80]

    @admin.display(description="in conversation")
    def in_conversation(self, obj: ReviewItem) -> str:
        url = reverse("admin:messages_app_reviewitem_context", args=[obj.pk])
        return format_html('<a href="{}">see it in its conversation</a>', url)

    def get_urls(self) -> list[URLPattern]:
        context = path(
            "<int:pk>/context/",
            self.admin_site.admin_view(self.context_view),
            name="messages_app_reviewitem_context",
        )
        return [context, *super().get_urls()]

    def context_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """The reviewed message in its conversation: its branch up to it, and the replies."""
        item = self.get_object(request, str(pk))
        if item is None:
            raise Http404("No such review item.")
        if not self.has_view_permission(request, item):
            raise PermissionDenied
        message = item.message
        conversation = message.conversation if message is not None else None
        before: list[Message] = []
        after: list[Message] = []
        if message is not None and conversation is not None:
            before = selectors.branch_messages(
                conversation=conversation, leaf_id=message.pk, limit=20
            )
            after = list(message.children.order_by("id")[:10])
        context = {
            **self.admin_site.each_context(request),
            "title": f"Review item {item.pk} in its conversation",
            "opts": self.model._meta,
            "item": item,
            "conversation": conversation,
            "before": before,
            "after": after,
        }
        return TemplateResponse(request, "admin/messages_app/reviewitem/context.html", context)

    def _decide(self, request: HttpRequest, queryset: QuerySet[ReviewItem], action: str) -> None:
        decisions = moderation.decide(queryset, action=action, actor=request.user)
        self.message_user(request, f"{action}: {len(decisions)} item(s).", messages.SUCCESS)

    @admin.action(description="Approve: show the messages (unblock)", permissions=["change"])
    def approve_items(self, request: HttpRequest, queryset: QuerySet[ReviewItem]) -> None:
        self._decide(request, queryset, ModerationDecision.Action.APPROVE)

    @admin.action(description="Confirm: a violation", permissions=["change"])
    def confirm_items(self, request: HttpRequest, queryset: QuerySet[ReviewItem]) -> None:
        self._decide(request, queryset, ModerationDecision.Action.CONFIRM)

    @admin.action(description="Warn: a violation, and a warning", permissions=["change"])
    def warn_items(self, request: HttpRequest, queryset: QuerySet[ReviewItem]) -> None:
        self._decide(request, queryset, ModerationDecision.Action.WARN)

    @admin.action(description="Ban the users of the selected items…", permissions=["change"])
    def ban_users(
        self, request: HttpRequest, queryset: QuerySet[ReviewItem]
    ) -> HttpResponse | None:
        def apply(form: Any) -> str:
            until, permanent = form.ban()
            decisions = moderation.decide(
                queryset,
                action=ModerationDecision.Action.BAN,
                actor=request.user,
                reason=form.cleaned_data["reason"],
                until=until,
                permanent=permanent,
            )
            return f"ban: {len(decisions)} item(s)."

        users = sorted({str(i.user) for i in queryset.select_related("user") if i.user_id})
        return _confirm_page(
            self,
            request,
            queryset,
            form_class=BanForm,
            action="ban_users",
            title="Ban users",
            intro=f"Ban the users of {queryset.count()} item(s), each a confirmed violation:",
            lines=users,
            submit="Ban",
            apply=apply,
        )


# --- the audit trail -------------------------------------------------------------------------


@admin.register(ModerationDecision)
class ModerationDecisionAdmin(admin.ModelAdmin[ModerationDecision]):
    """Readable by moderators; nobody, superusers included, adds, changes or deletes one."""

    list_display = [
        "created_at",
        "action",
        "actor_display",
        "subject_name",
        "message_id_seen",
        "character",
        "shown_categories",
        "violation_score",
        "banned_until",
        "ban_permanent",
        "reason",
    ]
    list_filter = ["action", ("actor", admin.RelatedOnlyFieldListFilter), "created_at"]
    search_fields = ["subject_name", "actor_name", "reason", "=message_id_seen"]
    search_help_text = "Subject or actor username, reason, or a message id."
    date_hierarchy = "created_at"
    list_select_related = ["character"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="actor", ordering="actor_name")
    def actor_display(self, obj: ModerationDecision) -> str:
        return obj.actor_name or "(service)"

    @admin.display(description="categories")
    def shown_categories(self, obj: ModerationDecision) -> str:
        return ", ".join(obj.categories)


# --- standings, reports, limits --------------------------------------------------------------


class BanStateFilter(admin.SimpleListFilter):
    title = "ban"
    parameter_name = "ban"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "banned now"), ("none", "not banned")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        active = Q(ban_permanent=True) | Q(banned_until__gt=timezone.now())
        if self.value() == "active":
            return queryset.filter(active)
        if self.value() == "none":
            return queryset.exclude(active)
        return queryset


@admin.register(UserStanding)
class UserStandingAdmin(admin.ModelAdmin[UserStanding]):
    list_display = [
        "user",
        "violation_score",
        "warnings",
        "banned_now",
        "banned_until",
        "ban_permanent",
        "ban_reason",
        "updated_at",
    ]
    list_filter = [BanStateFilter, "ban_permanent"]
    search_fields = ["user__username"]
    list_select_related = ["user"]
    readonly_fields = [
        "user",
        "violation_score",
        "warnings",
        "banned_until",
        "ban_permanent",
        "ban_reason",
        "updated_at",
    ]
    actions = ["ban_standing_users", "unban_standing_users"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="banned now", boolean=True)
    def banned_now(self, obj: UserStanding) -> bool:
        return obj.ban_permanent or (
            obj.banned_until is not None and obj.banned_until > timezone.now()
        )

    @admin.action(description="Ban the selected users…", permissions=["change"])
    def ban_standing_users(
        self, request: HttpRequest, queryset: QuerySet[UserStanding]
    ) -> HttpResponse | None:
        standings = list(queryset.select_related("user"))

        def apply(form: Any) -> str:
            until, permanent = form.ban()
            for standing in standings:
                moderation.user_ban(
                    standing.user,
                    until=until,
                    permanent=permanent,
                    reason=form.cleaned_data["reason"],
                    actor=request.user,
                )
            return f"{len(standings)} user(s) banned."

        return _confirm_page(
            self,
            request,
            queryset,
            form_class=BanForm,
            action="ban_standing_users",
            title="Ban users",
            intro="Ban these users:",
            lines=[str(s.user) for s in standings],
            submit="Ban",
            apply=apply,
        )

    @admin.action(description="Lift the ban of the selected users…", permissions=["change"])
    def unban_standing_users(
        self, request: HttpRequest, queryset: QuerySet[UserStanding]
    ) -> HttpResponse | None:
        standings = list(queryset.select_related("user"))

        def apply(form: Any) -> str:
            for standing in standings:
                moderation.user_unban(
                    standing.user, actor=request.user, reason=form.cleaned_data["reason"]
                )
            return f"{len(standings)} user(s) unbanned."

        return _confirm_page(
            self,
            request,
            queryset,
            form_class=ReasonForm,
            action="unban_standing_users",
            title="Lift bans",
            intro="Lift the ban of these users (their violation scores stay):",
            lines=[str(s.user) for s in standings],
            submit="Lift the bans",
            apply=apply,
        )


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin[Report]):
    list_display = ["id", "message", "reporter", "reason", "created_at", "review_link"]
    search_fields = ["reason", "reporter__username", "=message__id"]
    list_filter = ["created_at"]
    list_select_related = ["message", "reporter"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="review")
    def review_link(self, obj: Report) -> str:
        url = reverse("admin:messages_app_reviewitem_changelist")
        return format_html('<a href="{}?q={}">in the queue</a>', url, obj.message_id)


@admin.register(LimitOverride)
class LimitOverrideAdmin(admin.ModelAdmin[LimitOverride]):
    list_display = [
        "__str__",
        "user",
        "group",
        "per_minute",
        "per_hour",
        "per_day",
        "in_flight",
        "daily_tokens",
        "note",
        "updated_at",
    ]
    list_select_related = ["user", "group"]
    search_fields = ["user__username", "group__name", "note"]
    raw_id_fields = ["user", "group"]
    fields = [
        "user",
        "group",
        "per_minute",
        "per_hour",
        "per_day",
        "in_flight",
        "daily_tokens",
        "note",
    ]
