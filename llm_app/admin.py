"""Admin for generations: the prompt manifest and timings of every LLM call, read-only."""

from __future__ import annotations

import json

from django.contrib import admin
from django.utils.html import format_html

from llm_app.models import Generation


@admin.register(Generation)
class GenerationAdmin(admin.ModelAdmin[Generation]):
    list_display = ["id", "message", "provider", "model", "attempt", "error_code", "enqueued_at"]
    list_filter = ["provider", "model", "error_code"]
    search_fields = ["job_id", "error_message", "message__content"]
    raw_id_fields = ["message"]
    readonly_fields = [
        "message",
        "provider",
        "model",
        "params",
        "attempt",
        "job_id",
        "manifest",
        "error_code",
        "error_message",
        "enqueued_at",
        "started_at",
        "first_token_at",
        "finished_at",
    ]
    exclude = ["prompt_manifest"]

    @admin.display(description="prompt manifest")
    def manifest(self, obj: Generation) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.prompt_manifest, indent=2))

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False
