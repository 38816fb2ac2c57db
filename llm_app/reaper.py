"""Orphaned generations: their worker died (SIGKILL, OOM, node lost) or Redis lost their job.

Every running generation renews a lease in Redis (llm_app.lease). Every worker process of the
service (llm or not) runs `reap_orphans` every REAPER_INTERVAL_SECONDS in a thread of its own
(llm_app.worker), so orphans are settled soon after their lease expires even while a worker
idles or no llm worker runs at all. It looks for replies still `streaming` whose lease expired,
and for `queued` replies whose job is gone or ended. A reply that streamed nothing yet is
queued again as a new attempt; one that already streamed text is `failed` (`worker_lost`): a
retry would repeat text the clients already have. Either way the clients are told.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from llm_app.lease import lease_key
from llm_app.models import Generation
from llm_app.state import generation_fail_stale, generation_requeue_orphan
from messages_app.models import Message
from messages_app.streams import log_length
from messageservice import logs
from messageservice.redis_clients import sync_redis

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
_JOB_OVER = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}


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
    cutoff = timezone.now() - timedelta(seconds=settings.GENERATION_LEASE_SECONDS)
    related = ("message", "message__conversation")
    streaming = Generation.objects.select_related(*related).filter(
        message__status=Message.Status.STREAMING, started_at__lt=cutoff
    )
    for generation in streaming:
        # One bad row (say, text the database refuses) never stops the others being settled.
        with logs.bind(generation_id=generation.pk):
            try:
                settled += _reap_streaming(client, generation)
            except Exception:
                logger.exception("could not settle orphaned generation %s", generation.pk)
    queued = Generation.objects.select_related(*related).filter(
        message__status=Message.Status.QUEUED, enqueued_at__lt=cutoff
    )
    for generation in queued:
        with logs.bind(generation_id=generation.pk):
            try:
                settled += _reap_queued(client, generation)
            except Exception:
                logger.exception("could not settle queued generation %s", generation.pk)
    return settled


def _reap_streaming(client: Any, generation: Generation) -> int:
    stream_key = generation.message.stream_key
    if client.exists(lease_key(stream_key)):
        return 0
    streamed = generation.message.stream_seq > 0 or log_length(stream_key) > 0
    if not streamed and generation.attempt < MAX_ATTEMPTS:
        logger.warning("generation %s lost its worker; queued again", generation.pk)
        return int(generation_requeue_orphan(generation, "worker_lost"))
    logger.warning("generation %s lost its worker after streaming; failed", generation.pk)
    return int(
        generation_fail_stale(
            generation.pk,
            code="worker_lost",
            text="The worker generating this reply stopped; the text so far is kept.",
        )
    )


def _reap_queued(client: Any, generation: Generation) -> int:
    try:
        job = Job.fetch(generation.job_id, connection=client) if generation.job_id else None
    except NoSuchJobError:
        job = None
    if job is not None and job.get_status(refresh=False) not in _JOB_OVER:
        return 0
    # No job (Redis lost it), or a job that ended without starting the reply (another
    # database's worker took it, or it died before the reply started).
    logger.warning("generation %s has no live job; queued again", generation.pk)
    return int(generation_requeue_orphan(generation, "job_lost"))


__all__ = ["reap_orphans"]
