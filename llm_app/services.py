"""Writes on generations: create one for a queued reply, and put it on the `llm` queue."""

from __future__ import annotations

import django_rq
from django.conf import settings
from rq import Callback

from llm_app.models import Generation
from messages_app.models import Character, Message
from messageservice.redis_clients import sync_redis


def generation_create(*, message: Message, character: Character) -> Generation:
    """The generation for a queued assistant `message`; character settings win over defaults."""
    provider = character.provider or settings.DEFAULT_LLM_PROVIDER
    model = character.model or settings.DEFAULT_MODEL
    params = {
        "temperature": (
            character.temperature
            if character.temperature is not None
            else settings.DEFAULT_TEMPERATURE
        ),
        "max_tokens": min(
            character.max_tokens or settings.MAX_TOKENS_PER_REQUEST,
            settings.MAX_TOKENS_PER_REQUEST,
        ),
    }
    return Generation.objects.create(message=message, provider=provider, model=model, params=params)


def generation_job_id(generation: Generation) -> str:
    """A job id per enqueue, so a dead attempt's job can never settle a later attempt."""
    return f"generation-{generation.pk}-{generation.attempt + 1}"


def generation_enqueue(generation: Generation) -> None:
    """Put the generation on queue `llm`. Call after commit: the job must find the rows."""
    queue = django_rq.get_queue("llm", connection=sync_redis())
    job_id = generation_job_id(generation)
    queue.enqueue(
        "llm_app.jobs.generate_reply",
        generation.pk,
        job_id=job_id,
        job_timeout=int(settings.MESSAGE_PROCESSING_TIMEOUT) + 30,
        result_ttl=600,
        failure_ttl=86400,
        on_failure=Callback("llm_app.jobs.on_generation_job_failure"),
    )
    Generation.objects.filter(pk=generation.pk).update(job_id=job_id)
    generation.job_id = job_id
