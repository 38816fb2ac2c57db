"""Generations: one run of the LLM that fills an assistant message, with its prompt manifest."""

from __future__ import annotations

from django.db import models


class Generation(models.Model):
    """The provider call behind an assistant message. The message carries the visible status."""

    message = models.OneToOneField(
        "messages_app.Message", on_delete=models.CASCADE, related_name="generation"
    )
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=200)
    params = models.JSONField(default=dict, blank=True)
    attempt = models.PositiveSmallIntegerField(default=0)
    job_id = models.CharField(max_length=64, blank=True)
    # Which messages went into the prompt, with token counts; see llm_app.prompts.
    prompt_manifest = models.JSONField(default=dict, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    enqueued_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    first_token_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"Generation {self.pk} for message {self.message_id}"
