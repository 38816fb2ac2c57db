"""The message processor's job (queue `messages`): post-process one finished reply.

`post_process_reply` runs in `manage.py rqworker messages` (llm_app.worker.GenerationWorker:
each job in a thread, no process forked per job). Its steps:
1. the content check after the fact, when the reply's `output_review` says it is due
   (messages_app.output_review);
2. the conversation's automatic title after its first completed reply (messages_app.titles);
3. `messages_processed_total{outcome=<the reply's status>}`, once per reply.
Search indexing needs no step: the database indexes every message as it is saved.

A job may run twice (its worker killed after the work, before RQ recorded it; or queued
twice): every step is safe to repeat, a reply whose job finished is marked in Redis so that a
second run does nothing, and a run that finds another one under way leaves it the work.
A job that fails (safety worker, database or Redis unavailable) is tried again after
POSTPROCESS_RETRY_INTERVALS; an LLM that fails costs no retry (the title falls back).
"""

from __future__ import annotations

import logging
from functools import cache

import django_rq
import redis
from django.conf import settings
from django.db import connections
from rq import Queue, Retry

from messages_app import titles
from messages_app.models import Message
from messages_app.output_review import output_review
from messages_app.safety.client import SafetyUnavailable
from messageservice import logs, metrics
from messageservice.redis_clients import sync_redis

logger = logging.getLogger(__name__)

QUEUE = "messages"
# How long a finished job's mark is kept: longer than any job waits for its retries.
DONE_TTL_SECONDS = 7 * 86400


def job_id(stream_key_hex: str) -> str:
    """One job id per reply, named by its random stream key (ids repeat across databases)."""
    return f"postprocess-{stream_key_hex}"


def done_key(stream_key_hex: str) -> str:
    """Set once the reply's post-processing finished (and was counted)."""
    return f"{settings.SERVICE_NAME}:reply:{stream_key_hex}:postprocessed"


def running_key(stream_key_hex: str) -> str:
    """Held while a run of the reply's job is under way."""
    return f"{settings.SERVICE_NAME}:reply:{stream_key_hex}:postprocessing"


def job_timeout() -> int:
    """RQ's timeout of a job: the longest its title and its check may take, and a margin."""
    return int(settings.TITLE_TIMEOUT_SECONDS + settings.SAFETY_TIMEOUT_SECONDS) + 60


@cache
def _queue(connection: redis.Redis) -> Queue:
    # One Queue per connection: a new Queue asks Redis for its version on first enqueue.
    return django_rq.get_queue(QUEUE, connection=connection)


def enqueue_post_process(message: Message) -> None:
    """Queue `post_process_reply` for the ended reply `message`, in one round trip
    (messages_app.postprocess.reply_finished). No SQL."""
    key = message.stream_key.hex
    connection = sync_redis()
    with connection.pipeline(transaction=True) as pipe:
        pipe.multi()  # explicit, as RQ expects of a pipeline it is given
        _queue(connection).enqueue_call(
            "messages_app.jobs.post_process_reply",
            args=(message.pk, key),
            job_id=job_id(key),
            timeout=job_timeout(),
            result_ttl=600,
            failure_ttl=DONE_TTL_SECONDS,
            retry=Retry(max=3, interval=list(settings.POSTPROCESS_RETRY_INTERVALS)),
            # The reply's request and generation ids: the worker binds them for the job's lines.
            meta=logs.carried(),
            pipeline=pipe,
        )
        pipe.execute()


def post_process_reply(message_id: int, stream_key: str | None = None) -> str:
    """Post-process the ended reply `message_id` (see the module docstring); what was done,
    for RQ's result. `stream_key` is the reply's as it was queued: a reply of another
    database (reset, restored) with the same id is left alone, as is a deleted one."""
    try:
        return _post_process(message_id, stream_key)
    finally:
        # This job's thread ends with it: its database connection goes too.
        connections.close_all()


def _post_process(message_id: int, stream_key: str | None) -> str:
    if stream_key is None:
        return _steps(message_id, None)
    with sync_redis().pipeline(transaction=False) as pipe:
        pipe.exists(done_key(stream_key))
        # Two runs at once (the job queued twice) would both ask the LLM: the second waits
        # for nothing and leaves. The lock lapses with the job's timeout, should its run die.
        pipe.set(running_key(stream_key), 1, nx=True, ex=job_timeout())
        done, running_here = pipe.execute()
    if not running_here:
        return "done before" if done else "running elsewhere"
    try:
        if done:
            return "done before"
        return _steps(message_id, stream_key)
    finally:
        sync_redis().delete(running_key(stream_key))


def _steps(message_id: int, stream_key: str | None) -> str:
    reply = (
        Message.objects.select_related("conversation", "conversation__character")
        .filter(pk=message_id, role=Message.Role.ASSISTANT)
        .first()
    )
    if reply is None or (stream_key is not None and reply.stream_key.hex != stream_key):
        return "gone"
    if not reply.is_terminal:
        return "not ended"  # cannot happen for a job queued by reply_finished
    done: list[str] = []
    unchecked: SafetyUnavailable | None = None
    if reply.output_review:
        try:
            done.append("blocked" if output_review(reply) else "reviewed")
        except SafetyUnavailable as exc:
            logger.warning("reply %s: output review failed (%s); tried again later", reply.pk, exc)
            unchecked = exc
        reply.refresh_from_db(fields=["status", "output_review"])
    if titles.title_wanted(reply):
        # A reply still waiting for its check stays out of the prompt.
        title = titles.title_after_reply(reply, with_reply=not reply.output_review)
        if title is not None:
            done.append("titled")
    if unchecked is not None:
        raise unchecked  # RQ tries the job again; the steps above will find their work done
    first = stream_key is None or sync_redis().set(
        done_key(stream_key), 1, nx=True, ex=DONE_TTL_SECONDS
    )
    if first:
        metrics.message_processed(reply.status)
    return ", ".join(done) or "nothing to do"
