"""Admin: tombstones of deleted accounts (read-only; delete one to let its subject back)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts_app.models import DeletedAccount, subject_digest


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
