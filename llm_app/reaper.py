"""Orphaned generations: their worker died (SIGKILL, OOM, node lost) or Redis lost their job.

Every running generation renews a lease in Redis (llm_app.generation). Any llm worker, as part
of its maintenance, looks for replies still `streaming` whose lease expired, and for `queued`
replies whose job no longer exists. A reply that streamed nothing yet is queued again as a new
attempt; one that already streamed text is marked `failed` (a retry would repeat text the
clients already have). Either way the clients are told.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from rq.job import Job

from llm_app.generation import generation_fail_stale
from llm_app.lease import lease_key
from llm_app.models import Generation
from llm_app.services import generation_requeue
from llm_app.token_log import log_key
from messages_app.events import send_event
from messages_app.models import Message
from messageservice.redis_clients import sync_redis

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


def _requeue(generation: Generation, reason: str) -> None:
    message = generation.message
    updated = Message.objects.filter(
        pk=message.pk, status__in=[Message.Status.STREAMING, Message.Status.QUEUED]
    ).update(status=Message.Status.QUEUED, content="", stream_seq=0, updated_at=timezone.now())
    if not updated:
        return
    generation_requeue(generation)
    send_event(
        message.conversation_id,
        {
            "type": "generation.retrying",
            "generation_id": generation.pk,
            "attempt": generation.attempt + 1,
            "error": {"code": reason, "message": "The reply is being generated again."},
        },
    )


def reap_orphans() -> int:
    """Settle orphaned generations; returns how many were settled. One reaper at a time."""
    client = sync_redis()
    lock = client.lock(f"{settings.SERVICE_NAME}:reaper-lock", timeout=60, blocking=False)
    if not lock.acquire():
        return 0
    try:
        return _reap(client)
    finally:
        lock.release()


def _reap(client: Any) -> int:
    settled = 0
    lease = settings.GENERATION_LEASE_SECONDS
    cutoff = timezone.now() - timedelta(seconds=lease)
    streaming = Generation.objects.select_related("message").filter(
        message__status=Message.Status.STREAMING, started_at__lt=cutoff
    )
    for generation in streaming:
        if client.exists(lease_key(generation.pk)):
            continue
        logged: int = client.xlen(log_key(generation.pk))
        streamed = generation.message.stream_seq > 0 or logged > 0
        if not streamed and generation.attempt < MAX_ATTEMPTS:
            logger.warning("generation %s lost its worker; queued again", generation.pk)
            _requeue(generation, "worker_lost")
        else:
            logger.warning("generation %s lost its worker after streaming; failed", generation.pk)
            generation_fail_stale(
                generation.pk,
                code="worker_lost",
                text="The worker generating this reply stopped; the text so far is kept.",
            )
        settled += 1
    queued = Generation.objects.select_related("message").filter(
        message__status=Message.Status.QUEUED, enqueued_at__lt=cutoff
    )
    for generation in queued:
        if not generation.job_id or not Job.exists(generation.job_id, connection=client):
            logger.warning("generation %s has no job (Redis lost it); queued again", generation.pk)
            _requeue(generation, "job_lost")
            settled += 1
    return settled


__all__ = ["reap_orphans"]
